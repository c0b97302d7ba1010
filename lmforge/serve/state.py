"""One server's state: the model loading in the background, then the engine it serves."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from lmforge.engine import Engine
from lmforge.models.layers import warm_up_products
from lmforge.serve.admission import Admission, Readiness
from lmforge.serve.async_engine import AsyncEngine
from lmforge.serve.limits import ResponseCache
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.settings import ServerSettings

log = logging.getLogger("lmforge.serve")


class ServerState:
    def __init__(self, settings: ServerSettings, load: Callable):
        self.settings = settings
        self.load = load
        self.metrics = ServerMetrics()
        self.cache = ResponseCache(settings.cache_size)
        self.admission = Admission(settings, self.metrics)
        self.lm = None
        self.engine: AsyncEngine | None = None
        self.model_name = settings.served_model_name
        self.failure: str | None = None
        self.draining = False
        self._shutdown_lock = threading.Lock()
        self.created = int(time.time())

    def start_loading(self) -> None:
        """Load the model on a thread of its own (/health says 503 meanwhile)."""
        def work():
            try:
                lm = self.load()
                engine = Engine(lm.model, lm.tokenizer, max_batch=self.settings.max_batch,
                                max_seq_len=self.settings.max_seq_len, prefill_chunk=self.settings.prefill_chunk)
                # per-shape kernel state is built now, not while serving: RSS stays flat afterwards
                warm_up_products(lm.model, max(self.settings.prefill_chunk, self.settings.max_batch))
                self.metrics.kv_slots_total.set(self.settings.max_batch)
                async_engine = AsyncEngine(engine, self.settings.max_queue, self.metrics.observe_engine)
                async_engine.start()
                self.model_name = self.model_name or lm.name
                self.lm, self.engine = lm, async_engine
            except Exception as e:  # shown by /health and every request
                log.exception("loading the model failed")
                self.failure = f"the model failed to load: {e}"

        threading.Thread(target=work, name="lmforge-load", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.draining

    def readiness(self) -> Readiness:
        return Readiness(self.ready, self.model_name, self.failure, self.draining)

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def shutdown(self) -> None:
        """Take no new requests; let running ones finish for up to drain_timeout, then end them
        (each gets an error). Safe to call again: a stopped engine returns at once."""
        self.draining = True
        with self._shutdown_lock:
            if self.engine is not None:
                self.engine.shutdown(self.settings.drain_timeout)
