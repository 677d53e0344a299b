"""CLI commands grouped by job; `imgrec.cli` registers them."""
