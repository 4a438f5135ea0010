"""Model sources (embedded, local, Hub), LoRA and the other methods, adapter checks, generation, merging."""
