"""A small thread-safe TTL cache for hot reads: API key checks (a revoked key stops working within `ttl_s`)
and, through `PollCache` (api/status_cache.py), whole status-poll responses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, loader: Callable[[Hashable], V | None]) -> V | None:
        """The cached value, or `loader(key)`; None results are not cached (a new key works at once)."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = loader(key)
        if value is not None:
            self.put(key, value)
        return value

    def put(self, key: Hashable, value: V) -> None:
        """Keep `value` for `ttl_s`. When full, the expired entries go first; if all are live, all of them."""
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: entry for k, entry in self._entries.items() if entry[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (now + self.ttl_s, value)

    def peek(self, key: Hashable) -> V | None:
        """The cached value if fresh, without loading (safe to call on the event loop)."""
        with self._lock:
            hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def discard(self, predicate: Callable[[V], bool]) -> None:
        """Drop every entry whose value satisfies `predicate`."""
        with self._lock:
            self._entries = {k: entry for k, entry in self._entries.items() if not predicate(entry[1])}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
