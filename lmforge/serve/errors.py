"""Errors in OpenAI's JSON shape, and the handlers that make every failure one of them."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import LmforgeError, RequestError
from lmforge.serve.openai_shapes import error_body

log = logging.getLogger("lmforge.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error_type, self.param, self.code, self.headers = status, error_type, param, code, headers


def bad_request(e: RequestError | LmforgeError) -> ApiError:
    return ApiError(400, str(e), "invalid_request_error", getattr(e, "param", None))


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(str(e), e.error_type, e.param, e.code), status_code=e.status, headers=e.headers)


def validation_error(e: RequestValidationError) -> ApiError:
    """pydantic's first complaint, as a 400 that names the field."""
    first = e.errors()[0] if e.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or (first.get("ctx") or {}).get("param")
    message = first.get("msg", "invalid request")
    if first.get("type") == "invalid_unicode":  # the message names the field itself
        return ApiError(400, message, "invalid_request_error", param)
    if first.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    elif not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        message = "the request body must be a JSON object (send it with Content-Type: application/json)"
    return ApiError(400, f"{param + ': ' if param else ''}{message}", "invalid_request_error", param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        return error_response(validation_error(e))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return error_response(ApiError(e.status_code, str(e.detail), kind))

    @app.exception_handler(LmforgeError)
    async def on_lmforge_error(request: Request, e: LmforgeError):
        return error_response(bad_request(e))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, e: Exception):
        log.exception("unexpected error")
        return error_response(ApiError(500, "internal error (see the server log)", "server_error"))
