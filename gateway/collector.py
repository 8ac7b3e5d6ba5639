"""CPython's cyclic garbage collector, set for a long-running server instead of a short script."""

from __future__ import annotations

import gc

# Net allocations of tracked objects between young collections (CPython's default is 700). Each
# request in flight holds a hundred or so; with the default, a worker at 32 connections ran a young
# collection every dozen requests, though nearly everything a request makes is freed by its
# reference count, not by the collector.
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Freeze what start-up built, and collect the young generation less often.

    Start-up leaves some 90,000 tracked objects that live as long as the process (modules, the
    config, routes, the app, pools). Unfrozen, every full collection walks them all: under load a
    worker ran one every couple of seconds, each holding the event loop for 30 to 60 ms, and the
    collector as a whole took about a tenth of the worker's CPU (`bench/suite.py`; figures in the
    README). Frozen objects are never collected, which is what they would be anyway; what is
    created later, a reloaded key or a new connection, is collected as usual.

    Called once by a serving process when its start-up is complete, not by tests that build apps in
    their own process (each freeze would keep that test's garbage for good)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
