"""Base vs tuned model: loss and text metrics on the test split, pass@k by running generated code in a sandbox."""
