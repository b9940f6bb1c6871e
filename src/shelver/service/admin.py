"""``POST /admin/reload``: swap the served model, secure by default.

- Off (403) unless ``SHELVER_ADMIN_TOKEN`` is set; then ``Authorization: Bearer <token>``,
  compared in constant time (401 otherwise).
- ``{"model": DIR}`` loads only from under the models root (``SHELVER_MODELS_ROOT``, default the
  served model's parent): ``DIR`` is relative to it, or absolute inside it; ``..`` is refused,
  and so is a symlink that resolves out of it.
- A model trained on another taxonomy is refused (409) unless the request says
  ``"allow_taxonomy_change": true``: clients would get other categories without warning.
- What clients are told never names a server path; the log line says everything.
- Every attempt, over HTTP or SIGHUP, accepted or refused, is one JSON log line
  (``"event": "reload"``) with its time, the versions from and to, and the reason.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from fastapi import FastAPI, Request, Response

from shelver.service.metrics import ServiceMetrics
from shelver.service.responses import error, json_response, parse
from shelver.service.schemas import BODY_ERRORS, ErrorBody, InvalidBody, Reloaded, ReloadRequest, documented
from shelver.service.settings import Settings
from shelver.service.slot import ModelSlot, ReloadError, Served

log = logging.getLogger("shelver.service")
OFF = "admin endpoints are off; start the service with SHELVER_ADMIN_TOKEN set to turn them on"
UNAUTHORISED = "admin endpoints need 'Authorization: Bearer <SHELVER_ADMIN_TOKEN>'"


def add_admin(app: FastAPI, slot: ModelSlot, metrics: ServiceMetrics, settings: Settings) -> None:
    body_doc = {"content": {"application/json": {"schema": ReloadRequest.model_json_schema()}}}

    errors = {
        **BODY_ERRORS,
        401: (ErrorBody, "The Authorization header is not 'Bearer <SHELVER_ADMIN_TOKEN>'."),
        403: (ErrorBody, "Admin endpoints are off: SHELVER_ADMIN_TOKEN is not set."),
        409: (ErrorBody, "The model was trained on another taxonomy; allow_taxonomy_change is not true."),
        422: (
            InvalidBody | ErrorBody,
            "An invalid body (with `errors`), or a refused directory: outside the models root, "
            "or it does not load.",
        ),
    }

    @app.post(
        "/admin/reload",
        openapi_extra={"requestBody": body_doc},
        response_class=Response,
        responses=documented(Reloaded, errors),
    )
    async def reload(request: Request) -> Response:
        """Swap in a model directory atomically; a refused one leaves the old one serving."""
        client = request.client.host if request.client else None
        denied = check_token(settings.admin_token, request.headers.get("authorization"))
        if denied is not None:
            audit(slot.current, None, "refused", denied[1], "http", client)
            return error(*denied)
        parsed = parse(ReloadRequest, await request.body() or b"{}")
        if isinstance(parsed, Response):
            audit(slot.current, None, "refused", "invalid request body", "http", client)
            return parsed
        return await _reload_answer(slot, metrics, parsed, client)  # type: ignore[arg-type]


def check_token(expected: str | None, header: str | None) -> tuple[int, str] | None:
    """None when the request may use /admin/*, else the status and message that refuse it."""
    if not expected:
        return 403, OFF
    given = (header or "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, f"Bearer {expected}".encode()):
        return 401, UNAUTHORISED
    return None


async def _reload_answer(
    slot: ModelSlot, metrics: ServiceMetrics, request: ReloadRequest, client: Any
) -> Response:
    previous = slot.current.version if slot.current else None
    try:
        new = await reload_audited(
            slot, metrics, request.model, request.allow_taxonomy_change, "http", client
        )
    except ReloadError as err:
        return error(err.status, f"reload refused, still serving version {previous}: {err.public}")
    return json_response({"reloaded": True, "version": new.version, "previous": previous})


def resolve_under(root: Path, requested: str) -> Path:
    """The directory ``requested`` names under ``root``: relative to it, or absolute inside it."""
    if ".." in PurePath(requested).parts:
        raise ReloadError(f"'..' in the requested model {requested!r}", _outside("may not contain '..'"))
    try:
        target = (root / requested).resolve()  # an absolute ``requested`` replaces ``root``
    except (OSError, ValueError) as err:  # a NUL byte, a name too long, a symlink loop
        raise ReloadError(f"cannot resolve {requested!r}: {err}", _outside("is not a usable path")) from None
    if not target.is_relative_to(root):
        message = f"{requested!r} resolves to {target}, outside {root}"
        raise ReloadError(message, _outside("resolves outside it"))
    return target


def _outside(problem: str) -> str:
    return (
        f"'model' {problem}; name a model directory under the models root (SHELVER_MODELS_ROOT), "
        "relative to it, without symlinks that lead out of it"
    )


async def reload_audited(
    slot: ModelSlot,
    metrics: ServiceMetrics,
    requested: str | None,
    allow_taxonomy_change: bool,
    source: str,
    client: Any = None,
) -> Served:
    """Reload ``requested`` (under the models root; ``None``: the served directory, read again),
    count it and log it, accepted or refused."""
    old = slot.current
    try:
        target = resolve_under(slot.settings.reload_root(), requested) if requested else None
        new, _ = await slot.reload(target, allow_taxonomy_change)
    except ReloadError as err:
        metrics.reloads.labels("refused").inc()
        audit(old, err.version, "refused", str(err), source, client)
        raise
    metrics.reloads.labels("ok").inc()
    metrics.serving(new.version, old.version if old else None, new.reference)
    audit(old, new.version, "accepted", "", source, client)
    return new


def audit(old: Served | None, to: str | None, result: str, reason: str, source: str, client: Any) -> None:
    """One JSON line per reload attempt: easy to grep, and safe from newlines in the reason."""
    record = {
        "event": "reload",
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "result": result,
        "from_version": old.version if old else None,
        "to_version": to,
        "reason": reason,
        "source": source,
        "client": client,
    }
    log.log(logging.INFO if result == "accepted" else logging.WARNING, json.dumps(record))
