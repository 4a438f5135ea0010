"""Using a trained adapter: `codelora ask` (the HTTP server and web page come later)."""
