"""One APIRouter per concern; `app.py` includes them all."""

from fastapi import Request

from lmforge.serve.state import ServerState


def server_state(request: Request) -> ServerState:
    return request.app.state.lmforge


def admit(request: Request, model: str | None) -> ServerState:
    """The server's state, once the request passed the admission checks (ApiError otherwise)."""
    state = server_state(request)
    state.admission.check(request.headers, request.client.host if request.client else None, state.readiness(),
                          model)
    return state
