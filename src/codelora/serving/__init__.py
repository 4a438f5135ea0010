"""Using a trained model: `codelora ask`, and `codelora serve` (HTTP API and web page, adapters per request)."""
