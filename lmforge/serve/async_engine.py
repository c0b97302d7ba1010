"""The engine's step loop on its own thread, with asyncio streams for the server.

The event loop never touches tensors: it hands (prompt ids, params) to the engine thread and
awaits RequestOutputs on a per-request asyncio.Queue. The engine thread applies adds and aborts
between steps, so requests join and leave the running batch at step boundaries (continuous
batching) and a client that goes away frees its KV-cache slot at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from lmforge.engine import Engine, RequestOutput
from lmforge.errors import RequestError
from lmforge.memory import MemoryReturner
from lmforge.sampling import SamplingParams

log = logging.getLogger("lmforge.serve")


class EngineOverloaded(Exception):
    """The waiting queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is at capacity ({waiting} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class EngineStopped(Exception):
    """The engine is shutting down and takes no new requests."""


class EngineFailed(Exception):
    """A step of the engine raised: the requests in flight were ended (the server keeps going)."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncEngine:
    def __init__(self, engine: Engine, max_queue: int = 64,
                 on_step: Callable[["AsyncEngine"], None] | None = None):
        self.engine = engine
        self.max_queue = max_queue
        self._on_step = on_step
        self.memory = MemoryReturner()
        self._commands: collections.deque = collections.deque()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._ids = itertools.count()
        self._pending_adds = 0
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self.step_seconds = 0.0  # an exponential average, for Retry-After estimates

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking requests, let running ones finish (up to `timeout`), then stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._commands.append(("abort_all",))
            self._wake.set()
            self._thread.join(5)

    @property
    def stopping(self) -> bool:
        return self._stopping

    # --- load -----------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting + self._pending_adds

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def kv_slots_used(self) -> int:
        return self.engine.cache.used_slots

    @property
    def kv_slots_total(self) -> int:
        return self.engine.cache.num_slots

    @property
    def max_seq_len(self) -> int:
        """Prompt plus answer tokens one sequence may hold."""
        return self.engine.max_seq_len

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Text or token ids -> ids the model takes (RequestError for empty or out-of-vocabulary ones)."""
        return self.engine.encode_prompt(prompt)

    def retry_after(self) -> int:
        """Seconds until a queue place is likely free: one request's worth of steps."""
        return max(1, round(self.step_seconds * 64))

    # --- requests -------------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield this request's outputs; leaving the loop early (or being cancelled) aborts it."""
        if self._stopping:
            raise EngineStopped("the server is shutting down")
        if self.num_waiting >= self.max_queue:
            raise EngineOverloaded(self.num_waiting, self.retry_after())
        self.engine.check_fits(len(prompt_ids), params)
        request_id = request_id or f"srv-{next(self._ids)}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        with self._pending_lock:
            self._pending_adds += 1
        self._commands.append(("add", request_id, prompt_ids, params))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._commands.append(("abort", request_id))
                self._wake.set()

    # --- the engine thread ------------------------------------------------------------------------
    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _apply_commands(self) -> None:
        while self._commands:
            command = self._commands.popleft()
            if command[0] == "add":
                _, request_id, prompt_ids, params = command
                with self._pending_lock:
                    self._pending_adds -= 1
                if request_id not in self._streams:
                    continue  # its client left before it started
                try:
                    self.engine.add_request(prompt_ids, params, request_id)
                except RequestError as e:
                    self._deliver(request_id, e)
            elif command[0] == "abort":
                self.engine.abort(command[1])
            elif command[0] == "abort_all":
                for request_id in list(self._streams):
                    self.engine.abort(request_id)
                    self._deliver(request_id, EngineStopped("the server stopped before this request finished"))

    def _loop(self) -> None:
        import time

        while True:
            self._apply_commands()
            if not self.engine.has_unfinished():
                if self._stopping and not self._commands:
                    return
                self.memory.when_idle()
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            start = time.perf_counter()
            try:
                outputs = self.engine.step()
            except Exception as e:  # a bug must not kill the server: fail the requests in flight
                log.exception("engine step failed")
                for request_id in list(self._streams):
                    self.engine.abort(request_id)
                    self._deliver(request_id, EngineFailed(f"the engine failed: {e}"))
                continue
            self.step_seconds = 0.9 * self.step_seconds + 0.1 * (time.perf_counter() - start)
            for output in outputs:
                self._deliver(output.request_id, output)
            self.memory.after_step()
            if self._on_step is not None:
                self._on_step(self)
