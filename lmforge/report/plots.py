"""The report's figures, each a PNG (bytes) from matplotlib, or None when the results lack its data."""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmforge.report.results import Results  # noqa: E402


@dataclass
class Figure:
    name: str      # file name stem
    title: str
    caption: str
    png: bytes


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _levels(run: dict) -> list[dict]:
    return [level for level in run["levels"] if level["summary"]["completed"]]


def throughput(results: Results) -> Figure | None:
    runs = [r for r in results.serve if _levels(r)]
    if not runs:
        return None
    fig, (tok_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        x = [level["value"] for level in _levels(run)]
        s = [level["summary"] for level in _levels(run)]
        tok_ax.plot(x, [v["output_token_throughput"] for v in s], "o-", label=f"{run['label']} output tok/s")
        if any("goodput" in v for v in s):
            tok_ax.plot(x, [v.get("goodput", 0) * run["max_tokens"] for v in s], "s--",
                        label=f"{run['label']} goodput x max_tokens")
        lat_ax.plot(x, [v["ttft_s"]["p50"] * 1e3 for v in s], "o-", label=f"{run['label']} TTFT p50")
        lat_ax.plot(x, [v["tpot_s"]["p50"] * 1e3 if v["tpot_s"] else float("nan") for v in s], "s-",
                    label=f"{run['label']} TPOT p50")
    mode = runs[0]["mode"]
    for ax in (tok_ax, lat_ax):
        ax.set_xlabel("concurrent clients" if mode == "concurrency" else "arrival rate, requests/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    tok_ax.set_ylabel("tokens/s")
    lat_ax.set_ylabel("ms")
    tok_ax.set_title("Throughput")
    lat_ax.set_title("Latency (median)")
    return Figure("throughput", "Throughput and latency against load",
                  "Output tokens/s of the whole server and median TTFT/TPOT at each load level.", _png(fig))


def latency_distributions(results: Results) -> Figure | None:
    runs = [r for r in results.serve if _levels(r)]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    labels, ttft, tpot, e2e = [], [], [], []
    for run in runs:
        for level in _levels(run):
            ok = [r for r in level["records"] if r["ok"]]
            labels.append(f"{run['label'][:14]}\n{level['value']:g}" if len(runs) > 1 else f"{level['value']:g}")
            ttft.append([r["ttft_s"] * 1e3 for r in ok])
            tpot.append([r["tpot_s"] * 1e3 for r in ok if r["tpot_s"] is not None] or [float("nan")])
            e2e.append([r["e2e_s"] for r in ok])
    for ax, data, title, unit in ((axes[0], ttft, "TTFT", "ms"), (axes[1], tpot, "TPOT", "ms"),
                                  (axes[2], e2e, "End-to-end latency", "s")):
        ax.boxplot(data, tick_labels=labels, whis=(1, 99), showfliers=True)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_xlabel("load level")
        ax.grid(alpha=0.3, axis="y")
    return Figure("latency", "Latency distributions",
                  "Per-request TTFT, TPOT and end-to-end latency at each load level (whiskers: p1 to p99).",
                  _png(fig))


def resources_over_time(results: Results) -> Figure | None:
    runs = [r for r in results.serve if any(level.get("resource_samples") for level in r["levels"])]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(11, 3.6))
    for run in runs:
        offset = 0.0
        for level in run["levels"]:
            samples = level.get("resource_samples") or []
            if not samples:
                continue
            t = [offset + s["t_s"] for s in samples]
            ax.plot(t, [100 * s["cpu_utilization"] for s in samples], color="tab:blue", lw=1)
            ax.plot(t, [100 * s["memory_fraction"] for s in samples], color="tab:orange", lw=1)
            ax.axvline(offset, color="grey", lw=0.5)
            ax.text(offset, 102, f"{level['value']:g}", fontsize=7)
            offset = t[-1]
    ax.plot([], [], color="tab:blue", label="CPU utilisation %")
    ax.plot([], [], color="tab:orange", label="memory used %")
    ax.set_ylim(0, 108)
    ax.set_xlabel("seconds (levels one after another)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return Figure("resources", "CPU and memory during the load",
                  "Sampled every half second while each load level ran (vertical lines: level starts).", _png(fig))


def variants(results: Results) -> Figure | None:
    runs = results.offline
    if not runs:
        return None
    fig, (ttft_ax, tpot_ax) = plt.subplots(1, 2, figsize=(11, 3.2 + 0.3 * len(runs)))
    names = [r["label"] for r in runs]
    ttft_ax.barh(names, [r["ttft_s"] * 1e3 for r in runs], color="tab:blue")
    tpot_ax.barh(names, [r["tpot_s"] * 1e3 for r in runs], color="tab:green")
    ttft_ax.set_xlabel(f"TTFT, ms ({runs[0]['prompt_tokens']}-token prompt)")
    tpot_ax.set_xlabel("TPOT, ms")
    tpot_ax.set_yticks([])
    for ax in (ttft_ax, tpot_ax):
        ax.grid(alpha=0.3, axis="x")
    return Figure("variants", "TTFT and TPOT by variant", "One process per variant, no server, median of repeats.",
                  _png(fig))


def quantization_tradeoff(results: Results) -> Figure | None:
    points = []  # (label, decode tok/s, delta ppl %, weight MB)
    for c in results.compare:
        for v in c["variants"]:
            if v.get("delta_perplexity_pct") is not None:
                points.append((v["variant"], v["decode_tokens_per_s"], v["delta_perplexity_pct"], v["weight_bytes"] / 1e6))
    for q in results.quality:
        for v in q["variants"]:
            if v.get("decode_tokens_per_s") and v.get("delta_perplexity_pct") is not None:
                points.append((v["label"], v["decode_tokens_per_s"], v["delta_perplexity_pct"], v["weight_bytes"] / 1e6))
    if not points:
        return None
    fig, (speed_ax, size_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, speed, delta, mb in points:
        speed_ax.scatter(speed, delta, s=50)
        speed_ax.annotate(label, (speed, delta), textcoords="offset points", xytext=(4, 4), fontsize=8)
        size_ax.scatter(mb, delta, s=50)
        size_ax.annotate(label, (mb, delta), textcoords="offset points", xytext=(4, 4), fontsize=8)
    speed_ax.set_xlabel("decode tokens/s (higher is better)")
    size_ax.set_xlabel("weights, MB (lower is better)")
    for ax in (speed_ax, size_ax):
        ax.set_ylabel("perplexity increase, % (lower is better)")
        ax.grid(alpha=0.3)
    return Figure("quantization", "Quantization: quality against speed and size",
                  "Each precision's perplexity increase over the original model against its decode speed and size.",
                  _png(fig))


def predicted_vs_measured(results: Results) -> Figure | None:
    runs = [r for r in results.offline if r.get("prediction")]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, pkey, title in ((axes[0], "decode_tokens_per_s", "decode_tokens_per_s", "Decode tokens/s"),
                                 (axes[1], "prefill_tokens_per_s", "prefill_tokens_per_s", "Prefill tokens/s")):
        measured = [r[key] for r in runs]
        predicted = [r["prediction"][pkey] for r in runs]
        top = max(measured + predicted) * 1.15
        ax.fill_between([0, top], [0, 0.65 * top], [0, 1.35 * top], color="tab:green", alpha=0.12,
                        label="within 35 %")
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        for r, m, p in zip(runs, measured, predicted):
            ax.scatter(m, p, s=50)
            ax.annotate(r["label"], (m, p), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("measured")
        ax.set_ylabel("predicted")
        ax.set_title(title)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    return Figure("prediction", "Predicted against measured",
                  "What the device profile predicts (weight bytes over kernel bandwidth; FLOPs over compute) "
                  "against what was measured; the band is ±35 %.", _png(fig))


ALL = (throughput, latency_distributions, resources_over_time, variants, quantization_tradeoff, predicted_vs_measured)


def make_figures(results: Results) -> list[Figure]:
    return [fig for make in ALL if (fig := make(results)) is not None]
