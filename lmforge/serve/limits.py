"""API keys (compared in constant time), per-key rate limits, and a response cache."""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import OrderedDict


def parse_rate(spec: str | None) -> float | None:
    """'60/min', '5/s', '1000/hour' -> requests per second (None: no limit)."""
    if spec is None:
        return None
    count, _, unit = spec.partition("/")
    seconds = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}.get(unit.strip() or "min")
    try:
        n = float(count)
    except ValueError:
        n = -1
    if seconds is None or n <= 0:
        raise ValueError(f"--rate-limit must look like 60/min, 5/s or 1000/hour, got {spec!r}")
    return n / seconds


def key_matches(given: str | None, keys: list[str]) -> bool:
    """True when `given` is one of `keys`; every key is compared, in constant time."""
    if given is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


class RateLimiter:
    """A token bucket per client: `rate` requests a second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * 60)  # a minute's worth
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


class ResponseCache:
    """Finished answers of deterministic requests (greedy or seeded), least recently used first out."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def cacheable(params) -> bool:
        return params.greedy or params.seed is not None

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
