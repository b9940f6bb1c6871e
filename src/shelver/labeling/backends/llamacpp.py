"""A GGUF model in-process through llama.cpp's Python bindings, constrained by a grammar.

With ``choices``, every reply is forced by a GBNF grammar to be ``{"path": "<choice>"}`` for one
of the shortlisted paths or ``none``: the model cannot produce anything else. The bindings are
``xllamacpp`` (prebuilt wheels, llama.cpp's own server engine: thread-safe, continuous batching),
so installing needs no compiler. Its engine also opens an HTTP listener on a random loopback port;
nothing uses it here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from shelver.errors import BackendError, ConfigError
from shelver.labeling.backends.base import Reply, Request, answer_grammar
from shelver.labeling.models import ALIASES


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(
        self,
        model: str = "smollm2",
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_parallel: int = 1,
        grammar: bool = True,
    ) -> None:
        self.model_path = model
        # stored with every label: the built-in name, or the GGUF file's name without its folder
        self.model = model if model in ALIASES else Path(model).stem
        self.n_ctx = int(n_ctx)
        self.n_threads = n_threads
        self.n_parallel = int(n_parallel)
        self.grammar = grammar if isinstance(grammar, bool) else str(grammar).lower() == "true"
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def server(self) -> Any:
        with self._lock:
            if self._server is None:
                self._server = start_engine(self.model_path, self.n_ctx, self.n_threads, self.n_parallel)
            return self._server

    def generate(self, request: Request) -> Reply:
        body: dict[str, Any] = {
            "messages": list(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        }
        if request.choices and self.grammar:
            body["grammar"] = answer_grammar(request.answers)
        result = self.server.handle_chat_completions(body)
        return _reply(result, self.model)

    def close(self) -> None:
        self._server = None  # the engine frees the model when collected


def start_engine(
    model: str,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    n_parallel: int = 1,
    port: int = 0,
    host: str = "127.0.0.1",
) -> Any:
    """Load ``model`` (a GGUF path or built-in name) into llama.cpp's server engine."""
    try:
        import xllamacpp
    except ImportError:
        raise ConfigError("the llamacpp backend needs xllamacpp: pip install 'shelver[llm]'") from None
    from shelver.labeling.models import resolve_gguf

    params = xllamacpp.CommonParams()
    params.model.path = str(resolve_gguf(model))
    params.n_ctx = n_ctx
    params.n_parallel = n_parallel
    params.hostnames = [host]
    params.port = port
    # half the cores: llama.cpp threads spin while waiting, and on a busy machine oversubscribing
    # them is ruinous (measured: 0.16 s a call with 1 thread, 9.5 s with 2, on 2 shared cores)
    threads = int(n_threads) if n_threads else max(1, (os.cpu_count() or 2) // 2)
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    try:
        return xllamacpp.Server(params)
    except Exception as err:  # the engine reports load failures as plain exceptions
        raise BackendError(f"llama.cpp could not load {params.model.path}: {err}") from None


def _reply(result: Any, model: str) -> Reply:
    if isinstance(result, dict) and "error" in result:
        raise BackendError(f"llama.cpp ({model}) refused the request: {str(result['error'])[:300]}")
    try:
        message = result["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"llama.cpp ({model}) gave no completion: {str(result)[:200]}") from None
    usage = result.get("usage") or {}
    return Reply(
        text=message.get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )
