"""Prometheus metrics of one server, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class ServerMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.running = Gauge("lmforge_requests_running", "Requests in the running batch", registry=r)
        self.waiting = Gauge("lmforge_requests_waiting", "Requests waiting for a KV-cache slot", registry=r)
        self.kv_slots_used = Gauge("lmforge_kv_cache_slots_used", "KV-cache slots in use", registry=r)
        self.kv_slots_total = Gauge("lmforge_kv_cache_slots_total", "KV-cache slots", registry=r)
        self.requests = Counter("lmforge_requests", "Finished requests by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.rejected = Counter("lmforge_requests_rejected", "Requests turned away, by reason", ["reason"], registry=r)
        self.degraded = Counter("lmforge_requests_degraded", "Requests whose max_tokens was capped under load",
                                registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("lmforge_generation_tokens", "Tokens generated", registry=r)
        self.cache_hits = Counter("lmforge_response_cache_hits", "Requests answered from the response cache",
                                  registry=r)
        self.cache_misses = Counter("lmforge_response_cache_misses", "Cacheable requests computed", registry=r)
        self.ttft = Histogram("lmforge_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.tpot = Histogram("lmforge_time_per_output_token_seconds", "Time per output token after the first",
                              buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("lmforge_e2e_request_latency_seconds", "End-to-end request latency",
                             buckets=LATENCY_BUCKETS, registry=r)

    def observe_engine(self, engine) -> None:
        """Called by the engine thread after each step."""
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        self.kv_slots_used.set(engine.kv_slots_used)
        self.kv_slots_total.set(engine.kv_slots_total)

    def observe_completion(self, completion) -> None:
        self.prompt_tokens.inc(completion.prompt_tokens)
        self.generated_tokens.inc(completion.completion_tokens)
        self.ttft.observe(completion.ttft_s)
        if completion.completion_tokens > 1:
            self.tpot.observe(completion.tpot_s)
        self.e2e.observe(completion.elapsed_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
