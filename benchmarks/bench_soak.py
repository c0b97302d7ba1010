"""A soak of `lmforge serve`: minutes of mixed traffic, then the counts, the errors by kind and the
server's resident memory at the start and the end.

Closed-loop workers pick, from a seeded random mix: completions, chat, streamed chat, streamed
completions the client abandons after a few tokens, `/generate`, `/tokenize`, and malformed bodies;
every `--burst-every` seconds a burst of requests well past `--max-queue` arrives at once. With
`--api-key` the server also checks keys and a rate limit (requests without a key are in the mix).
Targets: no 5xx and no broken connection at any point, the server healthy afterwards, resident
memory at the end within 5 % of the start (taken after the warm-up, when the allocator has settled).

When a llama.cpp build is present (scripts/build_llama_cpp.sh), the same mix (OpenAI routes only)
runs against llama-server on the same model for `--reference-minutes`, and its RSS is reported
beside lmforge's; without one that row is skipped with a message.

    .venv/bin/python benchmarks/bench_soak.py [--minutes 30] [--workers 4] [--seed 0]

Prints a table, writes benchmarks/out/bench_soak.json and its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llama_cpp import DEFAULT_BIN, LlamaServer  # noqa: E402
from results_md import replace_section  # noqa: E402

MODEL_ID = "smollm2-135m"
WORDS = ("the cat river stone light market winter song letter road garden ship mountain "
         "window story bread city morning field tower").split()
# kind -> weight in the mix; "generate" is lmforge's own route, skipped against llama-server
MIX = {"completion": 3, "chat": 3, "chat_stream": 3, "abandoned_stream": 2, "generate": 2,
       "tokenize": 1, "malformed": 1, "no_key": 1}
EXPECTED = {"malformed": {400, 413, 422}, "no_key": {401}}  # every other kind: 200, or 429/503 when full


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def request_for(kind: str, rng: random.Random) -> tuple[str, dict, bool]:
    """(path, JSON body, stream) of one request of this kind."""
    tokens = rng.randint(4, 32)
    if kind in ("completion", "abandoned_stream"):
        return "/v1/completions", {"model": MODEL_ID, "prompt": text(rng, rng.randint(5, 200)), "max_tokens": tokens,
                                   "temperature": rng.choice([0, 0.7, 1.0]),
                                   "stream": kind == "abandoned_stream"}, kind == "abandoned_stream"
    if kind in ("chat", "chat_stream", "no_key"):
        messages = [{"role": "system", "content": "You are brief."}] if rng.random() < 0.5 else []
        messages.append({"role": "user", "content": text(rng, rng.randint(3, 80))})
        return "/v1/chat/completions", {"model": MODEL_ID, "messages": messages, "max_tokens": tokens,
                                        "top_p": rng.choice([1.0, 0.9]), "stream": kind == "chat_stream"}, \
            kind == "chat_stream"
    if kind == "generate":
        return "/generate", {"prompt": text(rng, rng.randint(5, 60)), "max_tokens": tokens}, False
    if kind == "tokenize":
        return "/tokenize", {"model": MODEL_ID, "prompt": text(rng, rng.randint(1, 300))}, False
    broken = rng.choice([{"prompt": 5}, {"model": MODEL_ID, "messages": "hi"}, {"max_tokens": -3, "prompt": "x"},
                         {"model": MODEL_ID, "prompt": "x", "temperature": "hot"}, {"model": MODEL_ID}])
    return rng.choice(["/v1/completions", "/v1/chat/completions"]), broken, False


class Tally:
    """Counts by kind and outcome; outcomes are status codes or named failures."""

    def __init__(self):
        self.by_kind: dict[str, Counter] = defaultdict(Counter)
        self.unexpected: list[str] = []

    def add(self, kind: str, outcome: str | int, detail: str = "") -> None:
        self.by_kind[kind][str(outcome)] += 1
        if outcome not in EXPECTED.get(kind, {200, 429, 503}):  # 429/503: full, what a bounded server says
            self.unexpected.append(f"{kind}: {outcome} {detail[:200]}")

    def totals(self) -> Counter:
        total = Counter()
        for counts in self.by_kind.values():
            total.update(counts)
        return total


async def one_request(client, kind: str, rng: random.Random, tally: Tally, headers: dict) -> None:
    import httpx

    path, body, stream = request_for(kind, rng)
    use_headers = {} if kind == "no_key" else headers
    try:
        if not stream:
            response = await client.post(path, json=body, headers=use_headers)
            tally.add(kind, response.status_code, response.text)
            return
        async with client.stream("POST", path, json=body, headers=use_headers) as response:
            if response.status_code != 200:
                await response.aread()
                tally.add(kind, response.status_code, response.text)
                return
            events, stop_after = 0, rng.randint(1, 3) if kind == "abandoned_stream" else None
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    events += 1
                    if '"error"' in line:
                        tally.add(kind, "error_event", line)
                        return
                    if stop_after and events >= stop_after:
                        break  # the client goes away mid-stream
                    if line.strip() == "data: [DONE]":
                        break
            tally.add(kind, 200)
    except httpx.TimeoutException as exc:
        tally.add(kind, "timeout", repr(exc))
    except httpx.HTTPError as exc:
        tally.add(kind, "connection_error", repr(exc))


async def soak(url: str, seconds: float, workers: int, seed: int, burst_every: float, burst_size: int,
               kinds: dict[str, int], headers: dict, on_tick) -> Tally:
    import httpx

    tally = Tally()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=workers + burst_size + 4)
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as client:
        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            names, weights = list(kinds), list(kinds.values())
            while time.monotonic() < deadline:
                await one_request(client, rng.choices(names, weights)[0], rng, tally, headers)

        async def bursts() -> None:
            rng = random.Random(seed * 1000 + 999)
            while time.monotonic() + burst_every < deadline:
                await asyncio.sleep(burst_every)
                await asyncio.gather(*(one_request(client, "completion", rng, tally, headers)
                                       for _ in range(burst_size)))

        async def ticks() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(min(10.0, max(deadline - time.monotonic(), 0)))
                on_tick(tally)

        await asyncio.gather(*(worker(i) for i in range(workers)), bursts(), ticks())
    return tally


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def run_phase(name: str, url: str, pid: int, args, kinds: dict, headers: dict, minutes: float) -> dict:
    import httpx

    seconds = minutes * 60
    warmup = min(60.0, seconds * 0.1)
    samples: list[tuple[float, float]] = []
    start = time.monotonic()

    def on_tick(tally: Tally) -> None:
        elapsed = time.monotonic() - start
        samples.append((elapsed, rss_mb(pid)))
        total = tally.totals()
        print(f"[{name}] {elapsed / 60:5.1f} min  {sum(total.values())} requests  RSS {samples[-1][1]:.0f} MB  "
              f"unexpected {len(tally.unexpected)}", file=sys.stderr, flush=True)

    rss_before = rss_mb(pid)
    tally = asyncio.run(soak(url, seconds, args.workers, args.seed, args.burst_every, args.burst_size, kinds,
                             headers, on_tick))
    rss_end = rss_mb(pid)
    settled = [rss for t, rss in samples if t >= warmup] or [rss_end]
    health = httpx.get(url + "/health", timeout=10).status_code
    total = tally.totals()
    return {"name": name, "minutes": minutes, "requests": sum(total.values()),
            "outcomes": dict(total), "by_kind": {k: dict(v) for k, v in tally.by_kind.items()},
            "unexpected": tally.unexpected[:50], "unexpected_count": len(tally.unexpected),
            "five_xx": sum(v for k, v in total.items() if k.isdigit() and int(k) >= 500 and int(k) != 503),
            "rss_before_mb": rss_before, "rss_start_mb": settled[0], "rss_end_mb": rss_end,
            "rss_peak_mb": max([rss for _, rss in samples] + [rss_end]),
            "rss_growth": rss_end / settled[0] - 1, "healthy_after": health == 200, "rss_samples": samples}


def main() -> None:
    from lmforge.serve.process import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--reference-minutes", type=float, default=5.0,
                        help="minutes of the same mix against llama-server, when present (5; 0 skips)")
    parser.add_argument("--workers", type=int, default=4, help="closed-loop clients (4)")
    parser.add_argument("--max-queue", type=int, default=8, help="the server's queue limit (8): bursts pass it")
    parser.add_argument("--burst-every", type=float, default=60.0, help="seconds between bursts (60)")
    parser.add_argument("--burst-size", type=int, default=24, help="requests per burst (24)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llama-cpp", default=str(DEFAULT_BIN),
                        help="folder with llama-server (scripts/build_llama_cpp.sh)")
    parser.add_argument("--out", default=str(HERE / "out" / "bench_soak.json"))
    args = parser.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = "soak-key"
    server_args = ["--max-batch", "4", "--max-queue", str(args.max_queue), "--api-key", key,
                   "--rate-limit", "6000/min", "--request-timeout", "120"]
    phases = []
    with ServerProcess(None, server_args, out.with_suffix(".server.log")) as server:
        phases.append(run_phase("lmforge serve", server.url, server.pid, args, MIX,
                                {"Authorization": f"Bearer {key}"}, args.minutes))

    bin_dir = Path(args.llama_cpp)
    if args.reference_minutes <= 0:
        print("llama-server row skipped (--reference-minutes 0)")
    elif not (bin_dir / "llama-server").is_file():
        print(f"llama-server row skipped: no llama-server in {bin_dir} (build it with scripts/build_llama_cpp.sh)")
    else:
        from lmforge.loading import embedded_model_path

        with LlamaServer(bin_dir, embedded_model_path(), parallel=4, context=4096,
                         log=out.with_suffix(".llama-server.log"), alias=MODEL_ID) as reference:
            kinds = {k: w for k, w in MIX.items() if k not in ("generate", "tokenize", "no_key")}
            phases.append(run_phase("llama-server -np 4" + (" --no-repack" if reference.note else ""),
                                    reference.url, reference.pid, args, kinds, {}, args.reference_minutes))
            if reference.note:
                print(f"llama-server: {reference.note}")

    results = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "workers": args.workers, "max_queue": args.max_queue, "burst_every_s": args.burst_every,
               "burst_size": args.burst_size, "seed": args.seed, "phases": phases}
    out.write_text(json.dumps(results, indent=2))

    header = ("server", "minutes", "requests", "200", "4xx expected", "429/503 full", "5xx", "broken",
              "unexpected", "RSS start MB", "RSS end MB", "RSS peak MB", "growth")
    rows = []
    for p in phases:
        o = Counter(p["outcomes"])
        four = sum(v for k, v in o.items() if k.isdigit() and 400 <= int(k) < 500 and k != "429")
        broken = sum(v for k, v in o.items() if not k.isdigit())
        rows.append([p["name"], f"{p['minutes']:g}", str(p["requests"]), str(o["200"]), str(four),
                     str(o["429"] + o["503"]), str(p["five_xx"]), str(broken), str(p["unexpected_count"]),
                     f"{p['rss_start_mb']:.0f}", f"{p['rss_end_mb']:.0f}", f"{p['rss_peak_mb']:.0f}",
                     f"{p['rss_growth']:+.1%}"])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    main_phase = phases[0]
    targets = [("no 5xx", str(main_phase["five_xx"]), main_phase["five_xx"] == 0),
               ("no unexpected answer or broken connection", str(main_phase["unexpected_count"]),
                main_phase["unexpected_count"] == 0),
               ("healthy afterwards", str(main_phase["healthy_after"]), main_phase["healthy_after"]),
               ("RSS growth <= 5 % (end vs after warm-up)", f"{main_phase['rss_growth']:+.1%}",
                main_phase["rss_growth"] <= 0.05)]
    for t, m, ok in targets:
        print(f"{'yes' if ok else 'NO '}  {t}: {m}")
    for line in main_phase["unexpected"][:10]:
        print("  " + line)
    kinds_line = ", ".join(f"{k} {sum(v.values())}" for k, v in main_phase["by_kind"].items())
    lines = [f"Measured {results['date']} on {results['machine']}; {args.workers} closed-loop clients, seed "
             f"{args.seed}, a burst of {args.burst_size} requests every {args.burst_every:g} s against "
             f"--max-queue {args.max_queue}; lmforge with --api-key and --rate-limit. Mix (lmforge): {kinds_line}.", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| target (lmforge) | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets]
    replace_section("bench_soak", lines, "## Soak (`benchmarks/bench_soak.py`)\n\n"
                    "Mixed traffic for a long run: errors by kind and the server's resident memory.")
    sys.exit(0 if all(ok for _, _, ok in targets) else 1)


if __name__ == "__main__":
    main()
