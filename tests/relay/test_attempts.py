"""Pauses before trying a deployment again: what the upstream asked, else a jittered backoff."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from gateway.errors import UpstreamStatusError
from gateway.relay.attempts import pause, retry_after


def _error(*headers: tuple[bytes, bytes]) -> UpstreamStatusError:
    return UpstreamStatusError("busy", status=429, headers=list(headers))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([(b"retry-after", b"3")], 3.0),
        ([(b"retry-after", b"1.5")], 1.5),
        ([(b"retry-after-ms", b"250"), (b"retry-after", b"9")], 0.25),
        ([(b"retry-after", formatdate(1_000_007, usegmt=True).encode())], 7.0),
        ([(b"retry-after", b"soon")], None),
        ([(b"retry-after", b"-4")], 0.0),
        ([], None),
    ],
)
def test_retry_after_in_every_form(headers: list[tuple[bytes, bytes]], seconds: float | None) -> None:
    assert retry_after(_error(*headers), now=1_000_000) == seconds


def test_the_pause_is_what_the_upstream_asked_up_to_the_cap() -> None:
    rng = random.Random(1)
    assert pause(_error((b"retry-after", b"3")), 1, 0.25, 10, rng) == 3
    assert pause(_error((b"retry-after", b"300")), 1, 0.25, 10, rng) == 10


def test_otherwise_an_exponential_backoff_with_jitter() -> None:
    rng = random.Random(1)
    first = [pause(_error(), 1, 0.25, 10, rng) for _ in range(50)]
    third = [pause(_error(), 3, 0.25, 10, rng) for _ in range(50)]
    capped = [pause(_error(), 10, 0.25, 10, rng) for _ in range(50)]
    assert all(0.125 <= p <= 0.25 for p in first) and len(set(first)) > 40  # spread, never zero
    assert all(0.5 <= p <= 1.0 for p in third)
    assert all(1.0 <= p <= 2.0 for p in capped)
