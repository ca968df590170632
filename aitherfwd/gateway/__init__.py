"""The tool-call gateway (seed 003): a default-deny policy for agents' tool calls.

A pure core — `model`, `parse`, `globs`, `paths`, `params`, `ratelimit`, `network`, `mcp`,
`evaluate` (no I/O; time, the path resolver and the policy are passed in) — and thin
adapters around it: `files` (reading policies and agent tokens, resolving paths on disk),
`service` (the decisions, audit, counters and network grants behind small Protocols),
`app` (the HTTP API, Starlette), `metrics` (Prometheus), `serve` (uvicorn, socket
activation, hot reload) and `cli` (`aitherfwd gateway`). See docs/gateway.md.
"""
