"""Real parts for tests: redis-server, fake upstreams on loopback, the gateway in uvicorn, the spec."""
