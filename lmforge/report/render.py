"""The report as a self-contained HTML page (figures inlined) and as Markdown (figures beside it)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

from lmforge.atomic import new_folder
from lmforge.bench.slo import SEED_DEFAULTS, SLO, checklist, parse_slo
from lmforge.report.plots import Figure, make_figures
from lmforge.report.results import Results

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.pass{color:#137333;font-weight:600}
.fail{color:#b3261e;font-weight:600}.na{color:#777}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}.meta{color:#666;font-size:.9em}
"""


def _memory_fraction(level: dict, device_memory: int | None) -> float | None:
    r = level.get("resources") or {}
    if device_memory and r.get("process_rss_bytes_max"):
        return r["process_rss_bytes_max"] / device_memory
    return r.get("memory_fraction_max")


def checklist_rows(results: Results, slo: SLO, device_memory: int | None = None) -> list[tuple[str, list]]:
    """For each load level of each serve run: (its name, its checklist lines)."""
    rows = []
    for run in results.serve:
        for level in run["levels"]:
            s = level["summary"]
            if not s["completed"]:
                continue
            r = level.get("resources") or {}
            lines = checklist(slo, tps=s["stream_tps"]["p50"] if s["stream_tps"] else None,
                              ttft_s=s["ttft_s"]["p50"], tpot_s=s["tpot_s"]["p50"] if s["tpot_s"] else None,
                              e2e_s=s["e2e_s"]["p50"], utilization=r.get("cpu_utilization_mean"),
                              memory_fraction=_memory_fraction(level, device_memory))
            load = (f"{level['value']:g} concurrent clients" if run["mode"] == "concurrency"
                    else f"{level['value']:g} requests/s")
            rows.append((f"{run['label']}, {load}", lines))
    return rows


def _verdict(passed: bool | None) -> tuple[str, str]:
    return ("pass", "pass") if passed else ("na", "not measured") if passed is None else ("fail", "FAIL")


def _tables(results: Results) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the report's tables."""
    tables = []
    for run in results.serve:
        rows = []
        for level in run["levels"]:
            s = level["summary"]
            ms = lambda d, k="p50": "-" if not d else f"{d[k] * 1e3:.0f}"  # noqa: E731
            rows.append([f"{level['value']:g}", f"{s['completed']}/{s['requests']}", f"{s['output_token_throughput']:.1f}",
                         f"{s['request_throughput']:.2f}", ms(s["ttft_s"]), ms(s["ttft_s"], "p99"), ms(s["tpot_s"]),
                         ms(s["itl_s"]), ms(s["e2e_s"]), f"{s['goodput']:.2f}" if "goodput" in s else "-",
                         ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none"])
        tables.append((f"Load: {run['label']} ({run['url']}, {run['mode']}, max_tokens {run['max_tokens']})",
                       [run["mode"], "ok/sent", "out tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
                        "ITL p50 ms", "E2E p50 ms", "goodput req/s", "errors"], rows))
    if results.offline:
        rows = []
        for r in results.offline:
            p = r.get("prediction") or {}
            rows.append([r["label"], f"{r['prefill_tokens_per_s']:.0f}", f"{r['decode_tokens_per_s']:.1f}",
                         f"{r['ttft_s'] * 1e3:.0f}", f"{r['tpot_s'] * 1e3:.1f}", f"{r['peak_memory_bytes'] / 1e6:.0f}",
                         f"{p['decode_tokens_per_s']:.1f} ({p['decode_error']:+.0%})" if p else "-",
                         f"{p['prefill_tokens_per_s']:.0f} ({p['prefill_error']:+.0%})" if p else "-"])
        tables.append(("Offline speed by variant", ["variant", "prefill tok/s", "decode tok/s", "TTFT ms", "TPOT ms",
                                                    "peak MB", "predicted decode (error)", "predicted prefill (error)"],
                       rows))
    for q in results.quality:
        tables.append((f"Quality against {q.get('reference', 'the original')} ({q.get('text', '')})",
                       ["variant", "perplexity", "increase", "KL", "top-1 agreement", "weights MB"],
                       [[v["label"], f"{v['perplexity']:.3f}", f"{v['delta_perplexity_pct']:+.2f} %",
                         "-" if v.get("kl_divergence") is None else f"{v['kl_divergence']:.4f}",
                         "-" if v.get("top1_agreement") is None else f"{v['top1_agreement']:.1%}",
                         f"{v['weight_bytes'] / 1e6:.0f}"] for v in q["variants"]]))
    for c in results.compare:
        tables.append((f"Quantization comparison: {c.get('title', '')}",
                       ["variant", "decode tok/s", "perplexity increase", "weights MB"],
                       [[v["variant"], f"{v['decode_tokens_per_s']:.1f}",
                         "-" if v.get("delta_perplexity_pct") is None else f"{v['delta_perplexity_pct']:+.2f} %",
                         f"{v['weight_bytes'] / 1e6:.0f}"] for v in c["variants"]]))
    for d in results.deploys:
        tables.append((f"Deploy: {d.get('model', '')}", ["stage", "status", "seconds", "result"],
                       [[s["name"], s["status"], f"{s.get('seconds', 0):.0f}", s.get("summary", "")]
                        for s in d.get("stages", [])]))
    return tables


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, results: Results, figures: list[Figure], checks, slo: SLO) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='meta'>Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by lmforge from "
             f"{len(results.sources)} result file(s). Objectives: {html.escape(slo.to_text())}.</p>"]
    if checks:
        parts.append("<h2>SLO checklist</h2>")
        for name, lines in checks:
            rows = []
            for line in lines:
                css, word = _verdict(line.passed)
                rows.append(f"<tr><td>{html.escape(line.objective)}</td><td>{html.escape(line.measured)}</td>"
                            f"<td class='{css}'>{word}</td></tr>")
            parts.append(f"<h3>{html.escape(name)}</h3><table><thead><tr><th>objective</th><th>measured</th>"
                         f"<th>verdict</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    for fig in figures:
        data = base64.b64encode(fig.png).decode("ascii")
        parts.append(f"<h2>{html.escape(fig.title)}</h2><figure><img src='data:image/png;base64,{data}' "
                     f"alt='{html.escape(fig.title)}'><figcaption>{html.escape(fig.caption)}</figcaption></figure>")
    for table_title, header, rows in _tables(results):
        parts.append(f"<h2>{html.escape(table_title)}</h2>{_html_table(header, rows)}")
    parts.append("<h2>Sources</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in results.sources) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(map(clean, header)) + " |", "|" + " --- |" * len(header),
            *["| " + " | ".join(map(clean, row)) + " |" for row in rows], ""]


def render_markdown(title: str, results: Results, figures: list[Figure], checks, slo: SLO) -> str:
    lines = [f"# {title}", "", f"Objectives: {slo.to_text()}. Sources: {', '.join(results.sources)}.", ""]
    if checks:
        lines += ["## SLO checklist", ""]
        for name, check in checks:
            lines += [f"### {name}", ""]
            lines += _md_table(["objective", "measured", "verdict"],
                               [[c.objective, c.measured, _verdict(c.passed)[1]] for c in check])
    for fig in figures:
        lines += [f"## {fig.title}", "", f"![{fig.title}]({fig.name}.png)", "", fig.caption, ""]
    for table_title, header, rows in _tables(results):
        lines += [f"## {table_title}", "", *_md_table(header, rows)]
    return "\n".join(lines)


def write_report(results: Results, out: str | Path, title: str = "lmforge deployment report",
                 slo: SLO | None = None, device_memory: int | None = None) -> Path:
    """report.html (self-contained), report.md and its PNG figures, written as a new folder."""
    slo = slo or parse_slo(SEED_DEFAULTS)
    figures = make_figures(results)
    checks = checklist_rows(results, slo, device_memory)
    with new_folder(out) as work:
        for fig in figures:
            (work / f"{fig.name}.png").write_bytes(fig.png)
        (work / "report.html").write_text(render_html(title, results, figures, checks, slo), encoding="utf-8")
        (work / "report.md").write_text(render_markdown(title, results, figures, checks, slo), encoding="utf-8")
    return Path(out)
