"""ASGI middleware in front of every route: request-body limits, timing, and the fast route.

The body is read here, at most ``max_body_bytes`` of it (413 past that, before reading on when
``Content-Length`` says so) and within ``body_timeout`` seconds (408), then replayed to the
app. Every answer is counted and timed for ``/metrics``; an unexpected error becomes a 500
with a generic message (and a log line), never a traceback to the client.

``fast_routes`` maps ``(method, path)`` to a handler of the body that is answered here, without
FastAPI's routing, dependency and exception layers: ``POST /v1/classify`` is on the search
request path, and those layers cost more CPU than classifying a query with a static encoder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shelver.service.metrics import ServiceMetrics
from shelver.service.settings import Settings

log = logging.getLogger("shelver.service")
Scope = dict[str, Any]
Message = dict[str, Any]
FastRoute = Callable[[bytes], Awaitable[Any]]  # the body -> a Starlette ``Response``


class _Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class GuardMiddleware:
    def __init__(
        self,
        app: Any,
        settings: Settings,
        metrics: ServiceMetrics,
        fast_routes: dict[tuple[str, str], FastRoute] | None = None,
    ) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.fast_routes = fast_routes or {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, receive)
                fast = self.fast_routes.get((scope["method"], scope["path"]))
                if fast is not None:
                    await (await fast(body))(scope, receive, counted_send)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, counted_send)
        except _Rejected as err:
            await _send_json(counted_send, err.status, err.detail)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if not status[0]:
                await _send_json(counted_send, 500, "internal error; the service logged it")
        finally:
            self.metrics.observe_request(
                scope["path"], scope["method"], status[0], time.perf_counter() - started
            )

    async def _read_body(self, scope: Scope, receive: Any) -> bytes:
        limit = self.settings.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise _Rejected(413, _too_large(limit))
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.settings.body_timeout):  # a timer, not a task per read
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    size += len(message.get("body", b""))
                    if size > limit:
                        raise _Rejected(413, _too_large(limit))
                    chunks.append(message.get("body", b""))
                    more = message.get("more_body", False)
        except TimeoutError:
            waited = self.settings.body_timeout
            raise _Rejected(408, f"the request body did not arrive within {waited:g} s") from None
        return b"".join(chunks)


def _too_large(limit: int) -> str:
    return (
        f"request body is larger than {limit:,} bytes; send fewer or shorter queries per request "
        "(the limit is SHELVER_MAX_BODY_BYTES)"
    )


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the buffered body once, then waits on the real one (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _send_json(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
