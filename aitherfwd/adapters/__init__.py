"""Thin adapters (layer L2): each is the only importer of its library or the only one doing its I/O."""
