"""How long to wait before trying a deployment again: pure, from the failure and the tries so far.

Moving on to another deployment waits for nothing. Trying the same one again (the client asked for
more retries than there are deployments) waits what the upstream asked in `retry-after-ms` or
`retry-after` (seconds or an HTTP date), up to a cap; otherwise an exponential backoff with jitter,
so that many clients retrying together do not come back in step.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

from gateway.errors import GatewayError

MAX_BACKOFF = 2.0


def retry_after(error: GatewayError, now: float | None = None) -> float | None:
    """Seconds the upstream asked to wait before another try, if it said."""
    headers = dict(error.headers)
    millis = headers.get(b"retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get(b"retry-after")
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def pause(error: GatewayError, tries: int, backoff: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before trying again a deployment already tried `tries` times, that failed with `error`."""
    asked = retry_after(error)
    if asked is not None:
        return min(asked, cap)
    ceiling = min(MAX_BACKOFF, backoff * 2 ** (tries - 1))
    return rng.uniform(ceiling / 2, ceiling)
