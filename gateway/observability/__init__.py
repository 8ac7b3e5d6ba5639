"""Watching the gateway: Prometheus metrics and the structured logs, both fed by finished exchanges."""
