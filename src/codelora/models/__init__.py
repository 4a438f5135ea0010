"""Model sources (embedded, local, Hub) and LoRA wrapping."""
