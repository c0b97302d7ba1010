"""llama.cpp's llama-server as a benchmark reference: started from a build made by
scripts/build_llama_cpp.sh, waited for (/health), stopped on exit."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

DEFAULT_BIN = Path.home() / ".cache/lmforge/llama.cpp/bin"


class CrashedAtStart(RuntimeError):
    pass


class LlamaServer:
    """with LlamaServer(bin_dir, model, parallel=4, context=4096) as server: ... server.url, server.pid"""

    def __init__(self, bin_dir: Path, model: Path, parallel: int, context: int, log: Path | None = None,
                 alias: str | None = None, start_timeout_s: float = 120):
        from lmforge.serve.process import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [str(Path(bin_dir) / "llama-server"), "-m", str(model), "--host", "127.0.0.1",
                        "--port", str(self.port), "-np", str(parallel), "-c", str(context),
                        "-t", str(os.cpu_count() or 2), *(["--alias", alias] if alias else [])]
        self.env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))  # its shared libraries lie beside it
        self.log = log
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.note = ""  # how the start differed from the plain command, for the benchmark's report

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> "LlamaServer":
        try:
            return self._start()
        except CrashedAtStart as crash:
            # Seen on an AMX host (2026-12-04): the native build's AMX repacking dies with SIGILL or
            # SIGSEGV when the model loads; without repacked weights the same build runs.
            self.command.append("--no-repack")
            self.note = f"{crash}; restarted with --no-repack"
            return self._start()

    def _start(self) -> "LlamaServer":
        import httpx

        output = open(self.log, "wb") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            status = self.proc.poll()
            if status is not None and status < 0 and "--no-repack" not in self.command:
                raise CrashedAtStart(f"llama-server died by signal {-status} while starting")
            if status is not None:
                raise RuntimeError(f"llama-server exited with status {status}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("llama-server did not become healthy")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)
