"""Decides which requests run in each step and how many prompt tokens each prefills.

Works on lengths only (no tensors), so it is tested without a model. Continuous batching:
requests join between steps while there is room and leave as soon as they finish; long
prompts are prefilled in chunks so running streams keep decoding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SequenceState:
    """What the scheduler knows of a request."""

    request_id: str
    prompt_length: int
    num_computed: int = 0  # tokens whose keys/values are in the cache

    @property
    def prefilling(self) -> bool:
        return self.num_computed < self.prompt_length


@dataclass
class PrefillChunk:
    request_id: str
    start: int
    length: int
    completes_prompt: bool = False


@dataclass
class StepPlan:
    admitted: list[str] = field(default_factory=list)
    decode: list[str] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.decode or self.prefill)


class Scheduler:
    def __init__(self, max_batch: int = 8, prefill_chunk: int = 512):
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be positive")
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[SequenceState] = deque()
        self.running: dict[str, SequenceState] = {}

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def add(self, request_id: str, prompt_length: int) -> None:
        self.waiting.append(SequenceState(request_id, prompt_length))

    def finish(self, request_id: str) -> None:
        """Remove a request, running or waiting."""
        if self.running.pop(request_id, None) is None:
            self.waiting = deque(s for s in self.waiting if s.request_id != request_id)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        while self.waiting and len(self.running) < self.max_batch:
            seq = self.waiting.popleft()
            self.running[seq.request_id] = seq
            plan.admitted.append(seq.request_id)
        budget = self.prefill_chunk
        for seq in self.running.values():
            if not seq.prefilling:
                plan.decode.append(seq.request_id)
            elif budget > 0:
                length = min(budget, seq.prompt_length - seq.num_computed)
                done = seq.num_computed + length == seq.prompt_length
                plan.prefill.append(PrefillChunk(seq.request_id, seq.num_computed, length, done))
                budget -= length
        return plan

    def record(self, plan: StepPlan) -> None:
        """The plan's tokens are now in the cache."""
        for request_id in plan.decode:
            self.running[request_id].num_computed += 1
        for chunk in plan.prefill:
            self.running[chunk.request_id].num_computed += chunk.length
