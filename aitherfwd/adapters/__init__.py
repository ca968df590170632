"""Thin adapters (layer L2): each is the only importer of its library, or of its kind of I/O."""
