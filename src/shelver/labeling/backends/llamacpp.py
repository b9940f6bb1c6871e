"""A GGUF model in-process through llama.cpp's Python bindings, constrained by a grammar.

With ``choices``, every reply is forced by a GBNF grammar to be ``{"path": "<choice>"}`` for one
of the shortlisted paths or ``none``: the model cannot produce anything else. The bindings are
``xllamacpp`` (prebuilt wheels, llama.cpp's own server engine: thread-safe, continuous batching),
so installing needs no compiler. Its engine also opens an HTTP listener on a random loopback port;
nothing uses it here.

llama.cpp logs from its own C++ thread straight to file descriptor 2 (hundreds of
``slot print_timing`` lines a run), and xllamacpp offers no log file. ``native_log_to(path)``
points descriptor 2 at a file for as long as it is open, while Python's ``sys.stderr`` (the
progress bar, the summary, errors) keeps the terminal.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TextIO

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


LOG_NAME = "llamacpp.log"
# llama.cpp writes its log from its own thread: the lines the engine's destructor queued reach the
# file within microseconds; this wait keeps them off the terminal when the descriptor is restored
DRAIN_SECONDS = 0.2


def llama_log(folder: Path, backends: Iterable[str], verbose: bool) -> AbstractContextManager[Path | None]:
    """``folder/llamacpp.log`` takes llama.cpp's log when a ``backends`` name (``NAME[=MODEL]``) is
    llamacpp; ``verbose`` leaves it on the terminal. Yields the log's path, or None."""
    names = {name.partition("=")[0].strip() for name in backends}
    if verbose or "llamacpp" not in names:
        return nullcontext()
    return native_log_to(folder.resolve() / LOG_NAME)


@contextmanager
def native_log_to(path: Path) -> Iterator[Path]:
    """Native writes to descriptor 2 (llama.cpp's log) are appended to ``path`` inside the block;
    Python's ``sys.stderr`` still reaches the terminal. Process-wide: not for concurrent use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    python_stderr = sys.stderr
    sys.stderr = stream = _terminal_stream(python_stderr, terminal)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield path
    finally:
        time.sleep(DRAIN_SECONDS)
        stream.flush()
        sys.stderr = python_stderr
        if stream is not python_stderr:
            stream.close()  # closefd=False: the saved descriptor is closed below, once
        os.dup2(terminal, 2)
        os.close(terminal)


def _terminal_stream(stream: TextIO, terminal: int) -> TextIO:
    """A stream on the saved terminal descriptor, when ``stream`` writes to descriptor 2; a stream
    that does not (pytest's or click's capture) is kept: it never reaches descriptor 2 anyway."""
    try:
        writes_fd2 = stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        writes_fd2 = False
    if not writes_fd2:
        return stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return open(terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False)
