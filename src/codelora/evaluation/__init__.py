"""Generation for evaluation, text metrics, and the base-vs-adapter report."""
