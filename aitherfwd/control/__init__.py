"""The control protocol: request schemas and error shapes (layer L1, pure)."""
