"""The train stage: the step loop (train), its inputs, model, step, preemption and step log (step_log), SFT data
and packing (sft_data), the tokenized-set cache (sft_cache), FSDP2 helpers (fsdp), rank hand-offs (rank_files)."""
