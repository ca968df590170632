"""Outbound control (layer L1, pure): the output chain, outbound verdicts, DNS refresh
scheduling and sandbox grants. No I/O: the daemon resolves names and writes the kernel."""
