"""The policy language: YAML source with positions, the typed model, parsing and validation.

Pure (layer L1): no file or network I/O; callers hand in text and a reader for includes.
"""
