"""lmforge's server in this process: the app on httpx's ASGI transport, its lifespan run, no socket."""

from __future__ import annotations

import asyncio

import httpx

from lmforge.serve.app import create_app
from lmforge.serve.settings import ServerSettings


def run_app(lm, scenario, load=None, **settings):
    """Start an app serving `lm` (or what `load()` returns), wait until it is ready, and return
    `await scenario(client, app)` with an httpx.AsyncClient bound to it."""
    app = create_app(ServerSettings(**settings), load=load or (lambda: lm))
    state = app.state.lmforge

    async def main():
        async with app.router.lifespan_context(app):
            if load is None:
                while not state.ready and not state.failure:
                    await asyncio.sleep(0.005)
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://lmforge", timeout=120) as client:
                return await scenario(client, app)

    return asyncio.run(main())


def sse_payloads(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]
