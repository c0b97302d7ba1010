"""What every request meets before the app reads its body: the API key (for every route but
/health, so /metrics, /docs and /openapi.json are closed too), then the body size limit.

A pure ASGI middleware: a refused request is answered in OpenAI's error shape without its body
being read or parsed.
"""

from __future__ import annotations

import json

from lmforge.serve.admission import Admission
from lmforge.serve.errors import ApiError
from lmforge.serve.openai_shapes import error_body

OPEN_PATHS = ("/health",)  # load balancers probe it without a key


class Gate:
    def __init__(self, app, admission: Admission, max_body_bytes: int):
        self.app = app
        self.admission = admission
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if scope["path"] not in OPEN_PATHS:
                self.admission.api_key(headers)
            self._check_declared_length(headers)
        except ApiError as e:
            return await _reply(send, e)
        await self._run_with_limit(scope, receive, send)

    def _check_declared_length(self, headers: dict) -> None:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()

    def _too_large(self) -> ApiError:
        self.admission.metrics.rejected.labels("too_large").inc()
        return ApiError(413, f"the request body is larger than {self.max_body_bytes} bytes (--max-body-bytes)",
                        "invalid_request_error", code="request_too_large")

    async def _run_with_limit(self, scope, receive, send):
        """A body without Content-Length (chunked) is counted as it arrives: past the limit the
        client gets the 413, the app a disconnect, and nothing the app sends after it goes out."""
        received = 0
        refused = False

        async def counting_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    await _reply(send, self._too_large())
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


async def _reply(send, e: ApiError) -> None:
    body = json.dumps(error_body(str(e), e.error_type, e.param, e.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in (e.headers or {}).items()]
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
