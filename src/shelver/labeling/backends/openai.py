"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server, Ollama) over HTTP.

Structured output where the server has it: ``structured="json_schema"`` sends the allowed answers
as a JSON-schema enum (``response_format``), ``"grammar"`` sends a GBNF grammar (llama.cpp's
``grammar`` field), ``"none"`` asks for JSON in the prompt and parses whatever comes back.
``"auto"`` (default) tries the JSON schema and falls back to plain parsing for good if the server
rejects it. 429 and 5xx, timeouts and dropped connections raise ``TransientBackendError`` (the
runner retries them with backoff); other failures raise ``BackendError`` with the fix.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from shelver.errors import BackendError, ConfigError, RequestRefusedError, TransientBackendError
from shelver.labeling.backends.base import Reply, Request, answer_grammar, answer_schema

STRUCTURED_MODES = ("auto", "json_schema", "grammar", "none")


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        structured: str = "auto",
        timeout: float = 60.0,
    ) -> None:
        if structured not in STRUCTURED_MODES:
            raise ConfigError(f"structured must be one of {', '.join(STRUCTURED_MODES)}, got {structured!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.structured = structured
        self.timeout = float(timeout)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                key = os.environ.get(self.api_key_env, "")
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)
            return self._client

    def generate(self, request: Request) -> Reply:
        mode = self._mode(request)
        try:
            payload = self._post(self._body(request, mode))
        except _StructuredUnsupported:
            self.structured = "none"  # this server has no structured output: parse plain JSON from now on
            payload = self._post(self._body(request, "none"))
        return _reply(payload)

    def _mode(self, request: Request) -> str:
        if not request.choices or self.structured == "none":
            return "none"
        return "json_schema" if self.structured == "auto" else self.structured

    def _body(self, request: Request, mode: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        }
        if mode == "json_schema":
            schema = {"name": "label", "strict": True, "schema": answer_schema(request.answers)}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif mode == "grammar":
            body["grammar"] = answer_grammar(request.answers)
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = self.client.post("/chat/completions", json=body)
        except httpx.TimeoutException:
            raise TransientBackendError(f"{self.base_url}: no answer within {self.timeout:g}s") from None
        except httpx.TransportError as err:
            raise TransientBackendError(f"{self.base_url}: connection failed ({err})") from None
        _raise_for_status(response, self, structured="response_format" in body or "grammar" in body)
        try:
            return response.json()
        except ValueError:
            raise TransientBackendError(f"{self.base_url}: the answer was not JSON") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _StructuredUnsupported(Exception):
    """The server rejected the structured-output field (not an error: we fall back)."""


def _raise_for_status(response: Any, backend: OpenAIBackend, structured: bool) -> None:
    status = response.status_code
    if status < 400:
        return
    detail = response.text[:300].replace("\n", " ")
    if status == 429 or status >= 500:
        raise TransientBackendError(
            f"HTTP {status} from {backend.base_url}: {detail}", _retry_after(response)
        )
    if structured and backend.structured == "auto" and status in (400, 422):
        raise _StructuredUnsupported(detail)
    error = RequestRefusedError if status in (400, 413, 422) else BackendError
    raise error(f"HTTP {status} from {backend.base_url}: {detail}; {_fix(status, backend)}")


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _fix(status: int, backend: OpenAIBackend) -> str:
    if status in (401, 403):
        return f"set the API key in ${backend.api_key_env} (or --option api_key_env=NAME)"
    if status == 404:
        return f"check --base-url (usually ends in /v1) and --model {backend.model!r}"
    return "check the request options (--model, --option structured=none for servers without JSON schema)"


def _reply(payload: dict[str, Any]) -> Reply:
    try:
        message = payload["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise TransientBackendError(
            f"malformed completion (no choices[0].message): {str(payload)[:200]}"
        ) from None
    usage = payload.get("usage") or {}
    return Reply(
        text=message.get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )
