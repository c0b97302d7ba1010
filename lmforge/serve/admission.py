"""Who may send a request now, and how much it may ask for: API keys, per-key rate limits,
readiness, the model's name, and the overload policy. Plain: tested without a server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lmforge.serve.errors import ApiError
from lmforge.serve.limits import RateLimiter, key_matches, retry_after_header
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.settings import ServerSettings


@dataclass(frozen=True)
class Readiness:
    """What the server can do right now."""

    ready: bool
    model_name: str | None
    failure: str | None = None
    draining: bool = False


class Admission:
    def __init__(self, settings: ServerSettings, metrics: ServerMetrics):
        self.settings = settings
        self.metrics = metrics
        self.limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """The caller's key (Authorization: Bearer KEY, or X-API-Key); ApiError 401 when keys are
        required and it is not one of them."""
        if not self.settings.api_keys:
            return None
        header = headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else headers.get("x-api-key")
        if not key_matches(given, self.settings.api_keys):
            self.metrics.rejected.labels("unauthorized").inc()
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                           code="invalid_api_key")
        return given

    def check(self, headers: Mapping[str, str], client_host: str | None, status: Readiness,
              model: str | None) -> None:
        """Auth, rate limit, readiness and model name, in that order; raises ApiError."""
        key = self.api_key(headers)
        if self.limiter is not None:
            wait = self.limiter.acquire(key or client_host or "unknown")
            if wait > 0:
                self.metrics.rejected.labels("rate_limited").inc()
                raise ApiError(429, f"rate limit exceeded; retry in {wait:.1f} s", "rate_limit_error",
                               code="rate_limit_exceeded", headers=retry_after_header(wait))
        if not status.ready:
            if status.failure:
                raise ApiError(503, status.failure, "server_error", code="model_failed")
            reason = "shutting down" if status.draining else "loading the model"
            raise ApiError(503, f"the server is {reason}", "server_error", code="unavailable",
                           headers=retry_after_header(5))
        if model is not None and model != status.model_name:
            raise ApiError(404, f"the model {model!r} does not exist; this server serves {status.model_name!r}",
                           "not_found_error", "model", "model_not_found")

    def budget(self, requested: int | None, prompt_length: int, max_seq_len: int, waiting: int) -> tuple[int, bool]:
        """max_tokens after the overload policy: (tokens, degraded). With the queue at least
        `degrade_at` full (but not full: that is a 429), long requests are capped."""
        tokens = requested if requested is not None else max(1, max_seq_len - prompt_length)
        s = self.settings
        overloaded = s.degrade_at * s.max_queue <= waiting < s.max_queue
        if overloaded and tokens > s.degrade_max_tokens:
            self.metrics.degraded.inc()
            return s.degrade_max_tokens, True
        return tokens, False

    def degraded_headers(self, degraded: bool) -> dict:
        return {"X-Lmforge-Degraded": f"max_tokens capped at {self.settings.degrade_max_tokens} under load"} \
            if degraded else {}
