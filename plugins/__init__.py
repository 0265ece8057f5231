"""vsand plugins: backends and other parts the core finds through entry points."""
