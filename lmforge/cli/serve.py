"""`lmforge serve`: the HTTP server (POST /generate and the OpenAI API)."""

from __future__ import annotations

from lmforge.cli.common import add_backend_arg, err
from lmforge.errors import LmforgeError


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP server: POST /generate and the OpenAI API, with continuous batching")
    p.add_argument("model", nargs="?", default=None, help="model to serve (default: the embedded one)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: float32 or a quantized model's own); bfloat16 batches far better "
                        "on CPUs with AMX/AVX-512 BF16")
    add_backend_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="model id clients use (default: the model's name)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (KV-cache slots, 8)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429 (64)")
    p.add_argument("--max-seq-len", type=int, default=None, help="context per sequence (default: the model's)")
    p.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens prefilled per step, in total (256): bounds the stall of running streams")
    p.add_argument("--api-key", action="extend", nargs="+", default=[], metavar="KEY",
                   help="accepted API keys (--api-key K1 K2, or repeated; none: open)")
    p.add_argument("--rate-limit", default=None, help="requests per API key (or client), e.g. 60/min")
    p.add_argument("--request-timeout", type=float, default=600, help="seconds before a request is aborted (600)")
    p.add_argument("--degrade-max-tokens", type=int, default=256,
                   help="when the queue is half full, cap new requests' max_tokens at this (256)")
    p.add_argument("--cache-size", type=int, default=256, help="deterministic answers kept for reuse (256; 0 off)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 2**20,
                   help="larger request bodies get 413 without being read (4 MiB)")
    p.add_argument("--drain-timeout", type=float, default=30, help="seconds to finish requests on SIGTERM (30)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    from lmforge.serve.server import run_server
    from lmforge.loading import check_model
    from lmforge.onnx.export import is_onnx_export, is_onnx_file
    from lmforge.serve.limits import parse_rate
    from lmforge.serve.settings import ServerSettings

    try:
        rate = parse_rate(args.rate_limit)
    except ValueError as e:
        raise LmforgeError(str(e)) from None
    if args.port < 0:
        raise LmforgeError("--port must be positive")
    settings = ServerSettings(model=args.model, backend=args.backend, dtype=args.dtype,
                              served_model_name=args.served_model_name,
                              max_batch=args.max_batch, max_queue=args.max_queue, max_seq_len=args.max_seq_len,
                              prefill_chunk=args.prefill_chunk,
                              api_keys=list(args.api_key), rate_limit=rate, request_timeout=args.request_timeout,
                              degrade_max_tokens=args.degrade_max_tokens, cache_size=args.cache_size,
                              drain_timeout=args.drain_timeout, max_body_bytes=args.max_body_bytes)
    settings.check()
    if args.backend != "onnxruntime" and not is_onnx_export(args.model) and not is_onnx_file(args.model):
        check_model(args.model)  # a broken file is refused here, not after the server is up
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    err.print(f"lmforge serve: loading {args.model or 'smollm2-135m'}; listening on http://{args.host}:{args.port} "
              f"(GET /health is 200 once the model is ready)")
    run_server(settings, args.host, args.port, args.log_level)
    return 0
