"""The HTTP layer: a thin ASGI hot route for chat completions, FastAPI for everything else."""
