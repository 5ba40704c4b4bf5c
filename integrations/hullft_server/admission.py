"""A bounded FIFO queue in front of the model: one request runs, at most `max_waiting` wait, others get 429.

Waiting happens on the event loop (no thread is parked per waiting request), so health checks,
metrics and memory endpoints stay responsive however long the queue is, and a client that goes
away while waiting simply leaves the queue.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


class QueueFullError(Exception):
    """The queue already holds `max_waiting` requests; `retry_after` is a hint in whole seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {waiting} request(s) already wait for the model; retry later")
        self.retry_after = retry_after


@dataclass
class Slot:
    """A held turn on the model; `release()` may be called more than once."""

    queue: ModelQueue
    waited: float
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.queue._release(self)


class ModelQueue:
    def __init__(self, max_waiting: int) -> None:
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.max_waiting = max_waiting
        self.waiting = 0
        self.running = 0
        self._lock = asyncio.Lock()
        self._recent: list[float] = []  # seconds the last requests held the model (for Retry-After)
        self._started: dict[int, float] = {}

    async def acquire(self) -> Slot:
        """Wait for the model; `QueueFullError` at once when the queue is full."""
        if self._lock.locked() and self.waiting >= self.max_waiting:
            raise QueueFullError(self.waiting, self.retry_after())
        t0 = time.perf_counter()
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        slot = Slot(self, time.perf_counter() - t0)
        self._started[id(slot)] = time.perf_counter()
        return slot

    def _release(self, slot: Slot) -> None:
        held = time.perf_counter() - self._started.pop(id(slot), time.perf_counter())
        self._recent = (self._recent + [held])[-20:]
        self.running -= 1
        self._lock.release()

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on: the waiting requests times a recent hold time."""
        typical = sorted(self._recent)[len(self._recent) // 2] if self._recent else 1.0
        return max(1, round(typical * (self.waiting + 1)))
