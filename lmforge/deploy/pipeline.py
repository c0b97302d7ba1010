"""The deploy stages, in order, over one output folder.

OUT/results/*.json   what each stage measured (the report reads these)
OUT/quantized/       the quantized checkpoint (int8/int4 only)
OUT/model/           the ONNX export that is served
OUT/report/          report.html, report.md and figures
OUT/stages/, OUT/settings.json, OUT/logs/   resumption state and the server's log
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmforge import isolated
from lmforge.atomic import write_json
from lmforge.bench.slo import SEED_DEFAULTS, parse_slo
from lmforge.deploy.stages import Stage, StageRunner
from lmforge.errors import LmforgeError
from lmforge.precision import ONNX_PRECISIONS
from lmforge.precision import precision as precision_named

CANDIDATES = ONNX_PRECISIONS  # deploy serves its choice with ONNX Runtime


@dataclass
class DeploySettings:
    model: str | None = None
    out: str = "deploy"
    device: str | None = None           # profile file or shipped name; None: probe this machine
    slo: str = SEED_DEFAULTS
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4])
    precisions: list[str] = field(default_factory=lambda: list(CANDIDATES))
    precision: str | None = None        # force one instead of choosing
    method: str = "rtn"                 # int4: rtn, gptq or awq
    context: int = 2048                 # context the memory plan reserves per sequence
    prompt_tokens: int = 128
    max_tokens: int = 64
    eval_text: str | None = None        # default: the text lmforge ships for calibration
    eval_tokens: int = 4096
    offline_tokens: tuple[int, int] = (256, 64)  # prefill and decode tokens of the offline bench

    def check(self) -> None:
        parse_slo(self.slo)
        bad = [p for p in self.precisions + ([self.precision] if self.precision else []) if p not in CANDIDATES]
        if bad:
            raise LmforgeError(f"precision {bad[0]!r} cannot be deployed; choose from {', '.join(CANDIDATES)}")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise LmforgeError("--concurrency: give positive levels, e.g. 1,2,4")
        if self.method not in ("rtn", "gptq", "awq"):
            raise LmforgeError(f"unknown method {self.method!r}; choose rtn, gptq or awq")
        if self.eval_tokens < 64 or self.prompt_tokens < 1 or self.max_tokens < 2:
            raise LmforgeError("--eval-tokens >= 64, --prompt-tokens >= 1 and --max-tokens >= 2")
        if self.eval_text is not None and not Path(self.eval_text).is_file():
            raise LmforgeError(f"{self.eval_text}: no such text file")

    def fingerprint(self) -> dict:
        data = asdict(self)
        data.pop("out")
        data["offline_tokens"] = list(self.offline_tokens)
        if self.model and Path(self.model).exists():
            data["model"] = str(Path(self.model).resolve())
        return data


class Deploy:
    def __init__(self, settings: DeploySettings, console=None):
        settings.check()
        self.s = settings
        self.out = Path(settings.out)
        self.results = self.out / "results"
        self.slo = parse_slo(settings.slo)
        self.console = console
        self.runner = StageRunner(self.out, settings.fingerprint(), console)

    # --- helpers ---------------------------------------------------------------------------
    def _profile(self):
        from lmforge.device.profile import load_profile

        return load_profile(self.results / "device.json")

    def _config(self):
        from lmforge.loading import load_config

        return load_config(self.s.model)[0]

    def _fresh(self, folder: Path) -> Path:
        """A stage's own output folder, cleared if an interrupted run left it behind."""
        if folder.exists():
            shutil.rmtree(folder)
        return folder

    # --- stages ----------------------------------------------------------------------------
    def inspect(self) -> dict:
        from lmforge.inspection import inspect_model

        report = inspect_model(self.s.model)
        data = report.to_dict()
        write_json(self.results / "inspect.json", {"kind": "inspect", **data})
        return {"summary": f"{report.name}: {report.parameters / 1e6:.1f} M parameters, "
                           f"{report.config.num_layers} layers, fp32 weights {data['memory_bytes']['fp32'] / 1e6:.0f} MB",
                "name": report.name}

    def device(self) -> dict:
        from lmforge.device.profile import load_profile, save_profile

        if self.s.device:
            profile = load_profile(self.s.device)
            how = "loaded"
        else:
            from lmforge.device.probe import probe

            profile = probe()
            how = "probed this machine"
        save_profile(profile, self.results / "device.json")
        return {"summary": f"{how}: {profile.name}, memory {profile.memory_bytes / 1e9:.1f} GB, "
                           f"bandwidth {profile.memory_bandwidth / 1e9:.1f} GB/s"}

    def plan(self) -> dict:
        from lmforge.deploy.choose import choose, evaluate_candidates

        candidates = evaluate_candidates(self._config(), self._profile(), self.slo, self.s.precisions,
                                         context=self.s.context, max_concurrency=max(self.s.concurrency),
                                         prompt_tokens=self.s.prompt_tokens, max_tokens=self.s.max_tokens)
        if self.s.precision:
            chosen = next((c for c in candidates if c.precision == self.s.precision), None)
            if chosen is None:
                candidates += evaluate_candidates(self._config(), self._profile(), self.slo, [self.s.precision],
                                                  context=self.s.context, max_concurrency=max(self.s.concurrency),
                                                  prompt_tokens=self.s.prompt_tokens, max_tokens=self.s.max_tokens)
                chosen = candidates[-1]
            why = f"{chosen.precision}: asked for with --precision"
        else:
            chosen, why = choose(candidates)
        return {"summary": why, "chosen": chosen.precision, "why": why,
                "candidates": [c.to_dict() for c in candidates]}

    def quantize(self) -> dict:
        precision = self.runner.data("plan")["chosen"]
        if precision == "fp32":
            return {"summary": "fp32 chosen: nothing to quantize", "folder": None}
        from lmforge.quant.workflow import quantize_to_folder

        named = precision if precision == "int8" or self.s.method == "rtn" else f"{precision}-{self.s.method}"
        recipe = precision_named(named).recipe
        folder = self._fresh(self.out / "quantized")
        _, report, _ = quantize_to_folder(self.s.model, recipe, folder, show_progress=self.console is not None)
        worst = min(report.layers, key=lambda layer: layer.sqnr_db) if report.layers else None
        note = f"; lowest SQNR {worst.sqnr_db:.1f} dB ({worst.name})" if worst else ""
        return {"summary": f"{precision} ({recipe.method}{f', groups of {recipe.group_size}' if precision == 'int4' else ', per channel'})"
                           f" -> {folder}{note}", "folder": str(folder)}

    def export(self) -> dict:
        from lmforge.onnx.export import export_bytes, export_onnx

        precision = self.runner.data("plan")["chosen"]
        source = self.runner.data("quantize")["folder"] or self.s.model
        folder = export_onnx(source, self._fresh(self.out / "model"), precision,
                             show_progress=self.console is not None)
        size = export_bytes(folder)
        return {"summary": f"{precision} ONNX model, {size / 1e6:.0f} MB -> {folder}", "weight_bytes": size}

    def _offline(self, model: str | None, backend: str, precision: str, label: str, out: Path) -> dict:
        window = self._config().max_position_embeddings  # a small model's window bounds the prompt
        prefill, decode = min(self.s.offline_tokens[0], window // 2), min(self.s.offline_tokens[1], window // 4)
        # in a process of its own: the peak memory measured is this variant's alone
        return isolated.call("lmforge.bench.offline:bench_variant", model=model, backend=backend,
                             precision=precision, prompt_tokens=prefill, decode_tokens=decode,
                             device=str(self.results / "device.json"), label=label, out=str(out),
                             show_progress=False)

    def bench_offline(self) -> dict:
        precision = self.runner.data("plan")["chosen"]
        original = self._offline(self.s.model, "torch", "fp32", "original fp32 (torch)",
                                 self.results / "offline-original.json")
        deployed = self._offline(str(self.out / "model"), "onnxruntime", precision, f"deployed {precision} (onnxruntime)",
                                 self.results / "offline-deployed.json")
        p = deployed.get("prediction") or {}
        return {"summary": f"decode {deployed['decode_tokens_per_s']:.1f} tok/s "
                           f"({deployed['decode_tokens_per_s'] / original['decode_tokens_per_s']:.2f}x the original), "
                           f"TTFT {deployed['ttft_s'] * 1e3:.0f} ms; predicted decode {p.get('decode_tokens_per_s', 0):.1f} "
                           f"({p.get('decode_error', 0):+.0%}), prefill ({p.get('prefill_error', 0):+.0%})",
                "decode_speedup": deployed["decode_tokens_per_s"] / original["decode_tokens_per_s"]}

    def quality(self) -> dict:
        import lmforge
        from lmforge.evaluate import evaluate
        from lmforge.quant.calibration import read_calibration_text

        precision = self.runner.data("plan")["chosen"]
        reference = lmforge.load(self.s.model, "float32")
        deployed = lmforge.load(self.out / "model")
        ids = reference.tokenizer.encode(read_calibration_text(self.s.eval_text))[: self.s.eval_tokens]
        ctx = min(512, max(16, len(ids) // 2))
        scored = evaluate(deployed.model, ids, ctx, ctx // 2, reference=reference.model,
                          show_progress=self.console is not None)
        offline = {name: json.loads((self.results / f"offline-{name}.json").read_text())
                   for name in ("original", "deployed")}
        delta = 100 * (scored.perplexity / scored.reference_perplexity - 1)
        fp32_bytes = self._config().num_parameters * 4
        write_json(self.results / "quality.json", {
            "kind": "quality", "reference": "the original model in float32 (torch)",
            "text": f"{self.s.eval_text or 'the text lmforge ships'}, {scored.tokens_scored} tokens scored",
            "variants": [
                {"label": "original fp32", "perplexity": scored.reference_perplexity, "delta_perplexity_pct": 0.0,
                 "kl_divergence": 0.0, "top1_agreement": 1.0, "weight_bytes": fp32_bytes,
                 "decode_tokens_per_s": offline["original"]["decode_tokens_per_s"]},
                {"label": f"deployed {precision}", "perplexity": scored.perplexity, "delta_perplexity_pct": delta,
                 "kl_divergence": scored.kl_divergence, "top1_agreement": scored.top1_agreement,
                 "weight_bytes": self.runner.data("export")["weight_bytes"],
                 "decode_tokens_per_s": offline["deployed"]["decode_tokens_per_s"]}]})
        return {"summary": f"perplexity {scored.perplexity:.3f} vs {scored.reference_perplexity:.3f} ({delta:+.2f} %), "
                           f"KL {scored.kl_divergence:.4f}, top-1 agreement {scored.top1_agreement:.1%}",
                "delta_perplexity_pct": delta}

    def bench_serve(self) -> dict:
        from lmforge.api import load_tokenizer
        from lmforge.bench.loadgen import LoadSpec, random_prompts
        from lmforge.bench.serve_bench import level_requests, run_serve_bench
        from lmforge.serve.process import ServerProcess

        model = self.out / "model"
        top = max(self.s.concurrency)
        requests = sum(level_requests("concurrency", self.s.concurrency, None))
        prompts = random_prompts(load_tokenizer(model), requests + 1, self.s.prompt_tokens)
        (self.out / "logs").mkdir(exist_ok=True)
        with ServerProcess(model, ["--max-batch", str(top), "--max-queue", str(4 * top), "--cache-size", "0"],
                           self.out / "logs" / "serve.log") as server:
            from lmforge.bench.loadgen import check_reachable

            spec = LoadSpec(server.url, check_reachable(server.url)[0], prompts, self.s.max_tokens, ignore_eos=True)
            result = run_serve_bench(spec, concurrencies=self.s.concurrency, slo=self.slo, server_pid=server.pid,
                                     out=self.results / "serve.json", label="deployed model",
                                     prompt_source=f"random, {self.s.prompt_tokens} tokens",
                                     show_progress=self.console is not None)
        failed = sum(level["summary"]["failed"] for level in result["levels"])
        if failed:
            raise LmforgeError(f"{failed} requests failed while benchmarking the server; see {self.results / 'serve.json'}"
                               f" and {self.out / 'logs' / 'serve.log'}")
        last = result["levels"][-1]["summary"]
        return {"summary": f"{top} clients: {last['output_token_throughput']:.1f} tok/s, TTFT p50 "
                           f"{last['ttft_s']['p50'] * 1e3:.0f} ms, TPOT p50 {last['tpot_s']['p50'] * 1e3:.0f} ms, "
                           f"goodput {last['goodput']:.2f} req/s"}

    def report(self) -> dict:
        from lmforge.report.render import checklist_rows, write_report
        from lmforge.report.results import load_results

        self._write_summary()
        results = load_results([self.results])
        memory = self._profile().memory_bytes
        folder = write_report(results, self._fresh(self.out / "report"),
                              f"lmforge deploy: {self.runner.data('inspect')['name']}", self.slo, memory)
        checks = checklist_rows(results, self.slo, memory)
        lines = checks[-1][1] if checks else []
        passed = sum(1 for line in lines if line.passed)
        return {"summary": f"{folder / 'report.html'}; checklist at the highest load: {passed}/{len(lines)} pass",
                "checklist": [line.to_dict() for line in lines]}

    def _write_summary(self) -> None:
        write_json(self.results / "deploy.json", {
            "kind": "deploy", "model": self.s.model or "smollm2-135m", "settings": self.s.fingerprint(),
            "stages": [o.to_dict() for o in self.runner.outcomes]})

    # --- the whole thing -------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        return [
            Stage("inspect", "architecture, parameters, memory per precision", self.inspect),
            Stage("device", "device profile" + ("" if self.s.device else " (probing this machine, ~1-2 min)"),
                  self.device),
            Stage("plan", "fit in memory and predicted speed per precision; choose one", self.plan),
            Stage("quantize", "quantize the weights (int8/int4)", self.quantize),
            Stage("export", "export to ONNX", self.export),
            Stage("bench-offline", "offline speed: original and deployed, against the prediction", self.bench_offline),
            Stage("quality", "perplexity, KL and top-1 agreement against the original", self.quality),
            Stage("bench-serve", f"serve it and load it at {','.join(map(str, self.s.concurrency))} clients",
                  self.bench_serve),
            Stage("report", "HTML and Markdown report with the SLO checklist", self.report),
        ]

    def run(self):
        try:
            return self.runner.run(self.stages())
        finally:
            if self.results.is_dir():
                self._write_summary()
