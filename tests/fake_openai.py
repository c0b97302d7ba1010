"""A stand-in OpenAI-compatible server with known delays, for testing the load generator.

First content chunk after `ttft_s`, then one token every `itl_s`; usage in the last chunk.
Model names pick a failure: "fail-500", "fail-429", "cut" (stream ends without [DONE])."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def make_app(ttft_s: float, itl_s: float) -> FastAPI:
    app = FastAPI()
    app.state.active = 0
    app.state.peak_active = 0

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    async def stream(body: dict, chat: bool):
        app.state.active += 1
        app.state.peak_active = max(app.state.peak_active, app.state.active)
        try:
            n = body["max_tokens"]
            await asyncio.sleep(ttft_s)
            for i in range(n):
                if i:
                    await asyncio.sleep(itl_s)
                if body["model"] == "cut" and i == n // 2:
                    return
                choice = {"index": 0, "delta": {"content": f" t{i}"}} if chat else {"index": 0, "text": f" t{i}"}
                yield f"data: {json.dumps({'choices': [choice]})}\n\n"
            usage = {"prompt_tokens": len(str(body.get("prompt", body.get("messages"))).split()),
                     "completion_tokens": n}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            app.state.active -= 1

    async def handle(request: Request, chat: bool):
        body = await request.json()
        if body["model"] == "fail-500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if body["model"] == "fail-429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429)
        return StreamingResponse(stream(body, chat), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handle(request, chat=True)

    return app


class FakeServer:
    def __init__(self, ttft_s: float = 0.2, itl_s: float = 0.05):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = make_app(ttft_s, itl_s)
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
