"""The server's settings, as one plain record (the `lmforge serve` flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.errors import LmforgeError


@dataclass
class ServerSettings:
    model: str | None = None
    backend: str | None = None
    dtype: str | None = None
    served_model_name: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_seq_len: int | None = None
    prefill_chunk: int = 256
    api_keys: list[str] = field(default_factory=list)
    rate_limit: float | None = None  # requests per second per key (or per client address)
    request_timeout: float = 600.0
    degrade_at: float = 0.5  # share of the queue that turns on degradation
    degrade_max_tokens: int = 256
    cache_size: int = 256
    drain_timeout: float = 30.0
    max_body_bytes: int = 4 * 2**20  # a request body larger than this is a 413, unread

    def check(self) -> None:
        """A LmforgeError naming the first setting out of range (as its `lmforge serve` flag)."""
        for name in ("max_batch", "max_queue", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"--{name.replace('_', '-')} must be positive")
        if self.max_body_bytes < 1024:
            raise LmforgeError("--max-body-bytes must be at least 1024")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise LmforgeError("--max-seq-len must be at least 2")
