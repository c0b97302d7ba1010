"""`lmforge serve` as a child process: started, waited for (/health), stopped with SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lmforge.errors import LmforgeError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """with ServerProcess(model, ["--max-batch", "4"], log) as server: ... server.url, server.pid"""

    def __init__(self, model: str | Path | None, args: list[str] = (), log_file: Path | None = None,
                 start_timeout_s: float = 600.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "lmforge.cli", "serve", *([str(model)] if model else []),
                        "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log_file = log_file
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _log_tail(self) -> str:
        if self.log_file and self.log_file.is_file():
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
        return ""

    def __enter__(self) -> "ServerProcess":
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        finally:
            if self.log_file:
                log.close()
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise LmforgeError(f"the server exited while starting (status {self.proc.returncode}):\n"
                                   + self._log_tail())
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise LmforgeError(f"the server did not become healthy within {self.start_timeout_s:g} s:\n" + self._log_tail())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
