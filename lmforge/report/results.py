"""Reading result files: which kind each is, judged by its content."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError

KINDS = ("serve-bench", "offline-bench", "compare", "profile", "deploy", "quality")


@dataclass
class Results:
    serve: list[dict]
    offline: list[dict]
    compare: list[dict]
    profiles: list[dict]
    deploys: list[dict]
    quality: list[dict]
    sources: list[str]


def kind_of(data) -> str | None:
    if not isinstance(data, dict):
        return None
    if data.get("kind") in KINDS:
        return data["kind"]
    if isinstance(data.get("variants"), list):  # `lmforge compare` writes compare.json
        return "compare"
    if "memory_bandwidth" in data and "compute" in data:  # a device profile
        return "profile"
    return None


def load_results(paths: list[str | Path]) -> Results:
    if not paths:
        raise LmforgeError("give at least one result file (bench serve/offline --out, compare.json, a profile, "
                           "a deploy folder's results)")
    found = Results([], [], [], [], [], [], [])
    by_kind = {"serve-bench": found.serve, "offline-bench": found.offline, "compare": found.compare,
               "profile": found.profiles, "deploy": found.deploys, "quality": found.quality}
    for path in map(Path, paths):
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise LmforgeError(f"{path}: no result files (*.json) in this folder")
        for file in files:
            if not file.is_file():
                raise LmforgeError(f"{file}: no such result file")
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise LmforgeError(f"{file}: not a JSON result file ({e})") from None
            kind = kind_of(data)
            if kind is None:
                if path.is_dir():
                    continue  # a folder may hold other JSON too
                raise LmforgeError(f"{file}: not an lmforge result (expected bench serve/offline output, "
                                   "compare.json, a device profile or deploy results)")
            by_kind[kind].append(data)
            found.sources.append(str(file))
    if not found.sources:
        raise LmforgeError("no lmforge results among the given files")
    return found
