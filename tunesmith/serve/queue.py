"""The queue of jobs waiting for a worker: bounded, first in first out, with batch look-ups.

It holds job ids only (the store holds the jobs), so a queue shared by several server
processes (a Redis list per batch key, say) implements the same few methods.  The bound
is what turns overload into a prompt 429 instead of an ever longer wait.

``take_matching`` is what dynamic batching needs: after a worker takes the oldest job, it
asks for more jobs with the same batch key (same model, duration and controls), waiting a
short window for them to arrive.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


class QueueFull(Exception):
    """The queue holds ``capacity`` jobs already."""


class QueueClosed(Exception):
    """The server is stopping: no more work is handed out."""


@dataclass(frozen=True)
class QueueItem:
    job_id: str
    batch_key: str
    enqueued_at: float = field(default_factory=time.monotonic)


class JobQueue(Protocol):
    capacity: int

    def put(self, item: QueueItem, *, force: bool = False) -> int:
        """Append; returns the 1-based position.  Raises QueueFull (unless ``force``: a restart
        re-queues what it had even beyond the bound)."""
        ...

    def take(self, timeout: float) -> QueueItem | None:
        """The oldest item, waiting up to ``timeout`` s; None on time-out.  Raises QueueClosed."""
        ...

    def take_matching(self, batch_key: str, limit: int, timeout: float) -> list[QueueItem]:
        """Up to ``limit`` of the oldest items with ``batch_key``, waiting up to ``timeout`` s for
        at least one; [] on time-out or when closed."""
        ...

    def remove(self, job_id: str) -> bool: ...

    def position(self, job_id: str) -> int | None:
        """1 = next to run; None = not queued."""
        ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class MemoryQueue:
    """:class:`JobQueue` in this process's memory (the store re-fills it after a restart)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[QueueItem] = deque()
        self._changed = threading.Condition()
        self._closed = False

    def put(self, item: QueueItem, *, force: bool = False) -> int:
        with self._changed:
            if self._closed:
                raise QueueClosed()
            if not force and len(self._items) >= self.capacity:
                raise QueueFull()
            self._items.append(item)
            self._changed.notify_all()
            return len(self._items)

    def take(self, timeout: float) -> QueueItem | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._items:
                if self._closed:
                    raise QueueClosed()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            if self._closed:
                raise QueueClosed()
            return self._items.popleft()

    def take_matching(self, batch_key: str, limit: int, timeout: float) -> list[QueueItem]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self._closed:
                    return []
                found = [item for item in self._items if item.batch_key == batch_key][:limit]
                if found:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._changed.wait(left)
            for item in found:
                self._items.remove(item)
            return found

    def remove(self, job_id: str) -> bool:
        with self._changed:
            for item in self._items:
                if item.job_id == job_id:
                    self._items.remove(item)
                    return True
            return False

    def position(self, job_id: str) -> int | None:
        with self._changed:
            for i, item in enumerate(self._items):
                if item.job_id == job_id:
                    return i + 1
            return None

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
