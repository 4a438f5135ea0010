"""Loading rows, formatting them as prompts, and splitting them."""
