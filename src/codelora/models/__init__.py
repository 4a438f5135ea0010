"""Loading models (embedded, local, Hub), LoRA and the other methods, adapter checks, precision, and the model's loss."""
