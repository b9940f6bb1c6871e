"""JSON answers and request parsing shared by the service's routes."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response
from pydantic import BaseModel, ValidationError


def parse(schema: type[BaseModel], body: bytes) -> BaseModel | Response:
    """Validate a JSON body; any mistake is a 422 naming the first problem."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_context=False, include_input=False)
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        return error(422, f"{where}: {message}", errors=errors)


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error(status: int, detail: str, **extra: Any) -> Response:
    return json_response({"detail": detail, **extra}, status=status)
