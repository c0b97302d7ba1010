"""The HTTP server: the seed's POST /generate and the OpenAI API over one AsyncEngine.

Routes only translate: request bodies -> token ids + SamplingParams -> engine streams -> response
bodies (routes/). Errors use OpenAI's format; nothing a client sends yields a 500 (errors.py).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI

from lmforge.serve.errors import install_error_handlers
from lmforge.serve.gate import Gate
from lmforge.serve.routes import generate, health, openai, tokens
from lmforge.serve.settings import ServerSettings
from lmforge.serve.state import ServerState

__all__ = ["ServerSettings", "create_app"]


def create_app(settings: ServerSettings, load: Callable | None = None) -> FastAPI:
    """The app for `settings`; `load()` returns the LoadedModel to serve (default: load
    settings.model), called on a thread once the app starts."""
    if load is None:
        def load():
            from lmforge.api import load as load_model

            return load_model(settings.model, settings.dtype, backend=settings.backend)
    state = ServerState(settings, load)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading()
        yield
        await asyncio.to_thread(state.shutdown)

    app = FastAPI(title="lmforge", version="1", lifespan=lifespan)
    app.state.lmforge = state
    install_error_handlers(app)
    for module in (health, openai, tokens, generate):
        app.include_router(module.router)
    app.add_middleware(Gate, admission=state.admission, max_body_bytes=settings.max_body_bytes)
    return app
