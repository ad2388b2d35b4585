"""The `squeeze` command line."""
