"""Training's library (the train stage's body is stages/train.py): SFT data and packing (sft_data), the tokenized-set
cache (sft_cache), the model and optimiser (model), the step (step), preemption, the step log, FSDP2 helpers (fsdp)
and rank hand-offs (rank_files)."""
