"""The generation engine: request records, a tensor-free scheduler and the step loop."""

from lmforge.engine.engine import Completion, Engine, RequestOutput
from lmforge.engine.scheduler import Scheduler, StepPlan

__all__ = ["Completion", "Engine", "RequestOutput", "Scheduler", "StepPlan"]
