"""Benchmarks of aitherfwd against the kernel (`python -m benchmarks.run`, `make bench`).

Owns: timing policy parse/compile/apply and re-apply under live set elements, each in its
own network namespace `afwb-<pid>-<n>`, with baselines (the `nft` CLI, raw libnftables)
measured in the same run, and the report in docs/benchmarks.md. Never touches the root
namespace's firewall and sends no traffic. Not imported by the aitherfwd package.
"""
