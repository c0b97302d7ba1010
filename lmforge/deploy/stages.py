"""A resumable list of stages: each one's result is saved when it finishes, and a rerun skips it.

State lives in OUT/stages/NAME.json (written atomically). The settings a deploy started with are
kept in OUT/settings.json; a rerun with other settings is refused rather than mixed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmforge.atomic import write_json
from lmforge.errors import LmforgeError


@dataclass
class Stage:
    name: str
    description: str
    run: Callable[[], dict]  # returns {"summary": one line, ...data}; raises to fail


@dataclass
class StageOutcome:
    name: str
    status: str        # "done", "resumed", "failed"
    seconds: float
    summary: str
    data: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": self.seconds, "summary": self.summary}


class StageRunner:
    def __init__(self, out: Path, settings: dict, console=None):
        self.out = Path(out)
        self.state = self.out / "stages"
        self.console = console
        self.outcomes: list[StageOutcome] = []
        self._check_settings(settings)

    def _check_settings(self, settings: dict) -> None:
        path = self.out / "settings.json"
        if path.is_file():
            before = json.loads(path.read_text())
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            if changed:
                raise LmforgeError(f"{self.out} holds a deploy made with other settings ({', '.join(changed)} differ); "
                                   "give a new --out, or the same settings to resume it")
        elif self.out.exists() and any(self.out.iterdir()):
            raise LmforgeError(f"{self.out}: exists, is not empty and is not a deploy folder; choose a new --out")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)

    def saved(self, name: str) -> dict | None:
        path = self.state / f"{name}.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return data if data.get("status") == "done" else None

    def run(self, stages: list[Stage]) -> list[StageOutcome]:
        total = len(stages)
        for i, stage in enumerate(stages, 1):
            previous = self.saved(stage.name)
            if previous is not None:
                outcome = StageOutcome(stage.name, "resumed", previous["seconds"], previous["summary"], previous["data"])
                self._say(f"[{i}/{total}] {stage.name}: already done ({outcome.summary})")
            else:
                self._say(f"[{i}/{total}] {stage.name}: {stage.description} ...")
                start = time.perf_counter()
                try:
                    data = stage.run()
                except BaseException:
                    self.outcomes.append(StageOutcome(stage.name, "failed", time.perf_counter() - start, "", {}))
                    raise
                seconds = time.perf_counter() - start
                summary = str(data.pop("summary", ""))
                write_json(self.state / f"{stage.name}.json",
                           {"status": "done", "seconds": seconds, "summary": summary, "data": data})
                outcome = StageOutcome(stage.name, "done", seconds, summary, data)
                self._say(f"      {summary} ({seconds:.0f} s)")
            self.outcomes.append(outcome)
        return self.outcomes

    def data(self, name: str) -> dict:
        for outcome in self.outcomes:
            if outcome.name == name:
                return outcome.data
        raise KeyError(name)

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)
