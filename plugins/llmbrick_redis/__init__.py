"""A Redis stream store for llmbrick (work in progress)."""
