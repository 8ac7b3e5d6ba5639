"""Client-side request bodies of the APIs other than chat completions (chat's is `gateway/request.py`):
checked, pure, no I/O."""
