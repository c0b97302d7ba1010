"""`lmforge serve` as a process: uvicorn, with a shutdown that keeps its word.

On SIGTERM (or Ctrl-C) the server stops taking requests (503, /health "draining") and lets the
running ones finish for up to `drain_timeout` seconds; those still running then end with an
OpenAI-style error (an SSE error event and [DONE], or a JSON 503), and the process exits with
status 0. A second Ctrl-C quits at once.
"""

from __future__ import annotations

import signal
import threading

import uvicorn

from lmforge.serve.app import create_app
from lmforge.serve.settings import ServerSettings
from lmforge.serve.state import ServerState

# uvicorn's own deadline for open connections, past the drain: by then every request has ended.
CONNECTION_GRACE_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:  # a second signal: stop now
            self.force_exit = sig == signal.SIGINT or self.force_exit
            self.should_exit = True
            return
        # Not recorded in _captured_signals: uvicorn would raise it again on the way out, and the
        # process would end "killed by SIGTERM" after a clean drain.
        threading.Thread(target=self.state.shutdown, name="lmforge-drain", daemon=True).start()
        self.should_exit = True


def run_server(settings: ServerSettings, host: str, port: int, log_level: str = "warning") -> None:
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=settings.drain_timeout + CONNECTION_GRACE_S)
    DrainingServer(config, app.state.lmforge).run()
