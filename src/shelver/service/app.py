"""The HTTP service: ``create_app(settings)`` builds a FastAPI app serving one model directory.

```
POST /v1/classify   {"query": "..."} -> one prediction; {"queries": [...]} -> {"predictions": [...]}
GET  /v1/model      taxonomy, version, thresholds, training fingerprint, export figures
GET  /healthz       the process is alive
GET  /readyz        a model is loaded and answering
GET  /metrics       Prometheus
POST /admin/reload  {"model": DIR} or {}: swap in a model directory (admin.py: off without a token)
```
The model is loaded once, in ``lifespan`` (or handed in already loaded); SIGHUP reloads it.
A client's mistake is a 4xx with a message, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel
from starlette.types import ASGIApp

from shelver import __version__
from shelver.service.admin import add_admin, reload_audited
from shelver.service.guard import FastRoute, GuardMiddleware
from shelver.service.metrics import ServiceMetrics
from shelver.service.responses import error, json_response, parse
from shelver.service.schemas import (
    BODY_ERRORS,
    ClassifyAnswer,
    ErrorBody,
    Health,
    InvalidBody,
    ModelInfo,
    Ready,
    classify_request_model,
    documented,
)
from shelver.service.settings import Settings, get_settings
from shelver.service.slot import ModelSlot, ReloadError, Served

log = logging.getLogger("shelver.service")


def create_app(settings: Settings | None = None, served: Served | None = None) -> FastAPI:
    """The app for ``settings`` (default: from ``SHELVER_*``); ``served`` skips loading at start."""
    settings = settings or get_settings()
    metrics = ServiceMetrics()
    slot = ModelSlot(settings, metrics.model_calls.observe)
    slot.current = served
    app = _GuardedAPI(
        title="shelver",
        version=__version__,
        summary="Put every search query on the right shelf of a taxonomy, or abstain.",
        lifespan=_lifespan(slot, metrics),
    )
    app.state.settings, app.state.slot, app.state.metrics = settings, slot, metrics
    schema = classify_request_model(settings.max_query_chars, settings.max_batch)
    answer = _classify_answer(slot, metrics, schema)
    fast = {("POST", "/v1/classify"): answer}  # answered by the guard, past FastAPI's layers
    app.guard = {"settings": settings, "metrics": metrics, "fast_routes": fast}
    _add_classify(app, slot, schema, answer)
    _add_probes(app, slot, metrics)
    add_admin(app, slot, metrics, settings)
    return app


class _GuardedAPI(FastAPI):
    """FastAPI with the guard outside its own middleware, so the fast route skips every layer."""

    guard: dict[str, Any]

    def build_middleware_stack(self) -> ASGIApp:
        return GuardMiddleware(super().build_middleware_stack(), **self.guard)


def _lifespan(slot: ModelSlot, metrics: ServiceMetrics):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if slot.current is None:
            slot.current = slot.load(slot.settings.model)
        metrics.serving(slot.current.version, reference=slot.current.reference)
        slot.announce(slot.current)
        _freeze_heap()
        hup = _on_sighup(slot, metrics)
        yield
        if hup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        slot.close()

    return lifespan


def _on_sighup(slot: ModelSlot, metrics: ServiceMetrics) -> bool:
    """SIGHUP reloads the served directory, like most daemons; False where signals cannot be had."""

    tasks: set[asyncio.Task] = set()  # held so a running reload is not garbage-collected

    async def reload_logged() -> None:
        with contextlib.suppress(ReloadError):  # refused: logged and counted, the old model stays
            await reload_audited(slot, metrics, None, False, "sighup")

    def reload() -> None:
        task = asyncio.ensure_future(reload_logged())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or Windows
        return False
    return True


def _freeze_heap() -> None:
    """Move what start-up allocated out of the garbage collector's sight (as gunicorn users do).

    The app, the model and their imports are hundreds of thousands of long-lived objects that a
    full collection would walk, stalling the requests in flight. A reloaded model is not frozen:
    it will be replaced in turn, and frozen objects in reference cycles are never freed.
    """
    gc.freeze()


# ---- routes -----------------------------------------------------------------------------
def _classify_answer(slot: ModelSlot, metrics: ServiceMetrics, schema: type[BaseModel]) -> FastRoute:
    async def answer(body: bytes) -> Response:
        served = slot.current  # held to the end: a reload never swaps the model mid-request
        parsed = parse(schema, body)
        if isinstance(parsed, Response):
            return parsed
        try:
            predictions, hits = await slot.classify(served, parsed.texts())  # type: ignore[arg-type]
        except TimeoutError:
            return error(
                503,
                f"classification took longer than {slot.settings.request_timeout:g} s; "
                "retry, or send fewer queries per request",
            )
        metrics.observe_predictions(predictions, hits)
        payload = predictions[0] if parsed.query is not None else {"predictions": predictions}  # type: ignore[attr-defined]
        return json_response(payload, headers={"x-shelver-model": served.version})  # type: ignore[union-attr]

    return answer


def _add_classify(app: FastAPI, slot: ModelSlot, schema: type[BaseModel], answer: FastRoute) -> None:
    body_doc = {"content": {"application/json": {"schema": schema.model_json_schema()}}, "required": True}

    errors = {
        **BODY_ERRORS,
        422: (
            InvalidBody,
            "Invalid JSON, or a body the request schema refuses; `detail` names the first problem.",
        ),
        503: (ErrorBody, "Classification took longer than SHELVER_REQUEST_TIMEOUT seconds."),
    }

    @app.post(
        "/v1/classify",
        openapi_extra={"requestBody": body_doc},
        response_class=Response,
        responses=documented(ClassifyAnswer, errors),
    )
    async def classify(request: Request) -> Response:
        """Classify one query or a batch; each answer is what ``shelver predict`` prints."""
        return await answer(await request.body())  # the guard answers first; this documents the route

    @app.get("/v1/model", response_class=Response, responses=documented(ModelInfo, {}))
    async def model_info() -> Response:
        """The served model: taxonomy, version, thresholds, training fingerprint."""
        return json_response(slot.current.info)  # type: ignore[union-attr]


def _add_probes(app: FastAPI, slot: ModelSlot, metrics: ServiceMetrics) -> None:
    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok"}

    not_ready = {503: (ErrorBody, "No model loaded yet.")}

    @app.get("/readyz", response_class=Response, responses=documented(Ready, not_ready))
    async def readyz() -> Response:
        """A model is loaded and answers (readiness)."""
        if slot.current is None:
            return error(503, "no model loaded yet")
        return json_response({"status": "ready", "version": slot.current.version})

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)
