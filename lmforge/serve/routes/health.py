"""GET /health (200 once the model serves, 503 while loading, failed or draining) and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lmforge.serve.routes import server_state

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = server_state(request)
    if state.ready:
        return {"status": "ok", "model": state.model_name, "running": state.engine.num_running,
                "waiting": state.engine.num_waiting}
    status = "failed" if state.failure else ("draining" if state.draining else "loading")
    return JSONResponse({"status": status, "detail": state.failure}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request):
    state = server_state(request)
    if state.engine is not None:
        state.metrics.observe_engine(state.engine)  # gauges as of now, not as of the last step
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
