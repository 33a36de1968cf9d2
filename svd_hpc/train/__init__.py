"""The train stage: the SFT loop (train), SFT data and packing (sft_data), FSDP2 helpers (fsdp), rank hand-offs."""
