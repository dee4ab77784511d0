"""Latency-bound reads before bulk writes: when this process last served one.

RevenueService calls (Pedkai) have a latency budget of a few milliseconds. A large
accounting batch written by several transactions at once keeps every core busy, and those
calls then queue for CPU. While they keep arriving, ingest writes each batch with one
transaction and leaves a core to them (docs/decisions.md).
"""

from __future__ import annotations

import time


class _Clock:
    last_interactive = float("-inf")


def note_interactive() -> None:
    """A latency-bound call is being served now."""
    _Clock.last_interactive = time.monotonic()


def interactive_within(seconds: float) -> bool:
    """Whether a latency-bound call was served in the last `seconds`."""
    return time.monotonic() - _Clock.last_interactive < seconds
