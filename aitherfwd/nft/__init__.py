"""Typed builders for libnftables JSON and the names of everything in our table (layer L1)."""
