"""codelora: fine-tune language models with LoRA into Python code question-answering assistants."""

__version__ = "0.1.0"
