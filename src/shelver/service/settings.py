"""The service's settings, read from ``SHELVER_*`` environment variables.

``get_settings()`` reads the process environment; tests pass their own mapping, or build
``Settings(...)`` directly and hand it to ``create_app``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from shelver.errors import ConfigError

PREFIX = "SHELVER_"
ZERO_ALLOWED = {"inline_ms", "cache_size", "microbatch_window_ms"}  # settings where 0 means "never"


@dataclass(frozen=True)
class Settings:
    # the model directory served (`shelver serve --model` sets it); it needs an ONNX export or a
    # torch-free encoder
    model: Path
    # queries are a few words; anything longer is a document pasted by mistake (422)
    max_query_chars: int = 512
    # one request classifies at most this many queries (422), bounding its CPU time
    max_batch: int = 256
    # bytes per request body (413): max_batch queries of max_query_chars fit comfortably
    max_body_bytes: int = 1_000_000
    # seconds a classification may take before the client gets 503 instead of waiting on
    request_timeout: float = 5.0
    # seconds to receive a request body (408): a stalled client cannot hold a connection
    body_timeout: float = 10.0
    # onnxruntime and BLAS threads per call: one query is fastest on one thread, and calls run side
    # by side (idle BLAS threads busy-wait, taking a core from the other call)
    threads: int = 1
    # model calls running at once in this process (a thread each)
    concurrency: int = 2
    # a request whose queries should classify within this many ms (one query's time, measured at
    # load, times their number) runs inline on the event loop: no thread hand-off, but no timeout
    # either. 0 sends every request to the threads.
    inline_ms: float = 2.0
    # answers kept for repeated queries (search logs repeat their head queries), per model: the
    # least recently used go first, a reload starts empty; 0 = none. Hit rate:
    # shelver_cache_hits_total / shelver_queries_total
    cache_size: int = 10_000
    # /admin/* is off (403) until this is set; then it needs 'Authorization: Bearer <token>'
    admin_token: str | None = None
    # POST /admin/reload loads only directories under this one (no '..', no symlink out of it);
    # unset: the served model's parent directory, where its sibling versions usually live
    models_root: Path | None = None
    # micro-batching (service/batcher.py): a request queued while a model call runs waits at most
    # this long (ms) for company; one that finds the model idle never waits. 0: no waiting (what
    # queued while a call ran is still classified together)
    microbatch_window_ms: float = 1.0
    # at most this many queries per model call, summed over the batched requests (histogram:
    # shelver_model_call_queries); 1 turns micro-batching off
    microbatch_queries: int = 64
    # batch even a model whose answers a batch changes: speed over reproducibility. Each model is
    # checked at load on its taxonomy's paths, alone and in one batch; /v1/model says
    # "batch_invariant", and the log warns when a model is left unbatched. An encoder exported with
    # --int8 dynamic scales its activations once per call, so its confidences move with their
    # neighbours' (by up to 0.1 on the tests' tiny model)
    microbatch_any_model: bool = False

    def reload_root(self) -> Path:
        """The resolved directory that reloads must stay under."""
        return (self.models_root or self.model.resolve().parent).resolve()


def get_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """``Settings`` from ``SHELVER_<NAME>`` variables (``SHELVER_MODEL``, ``SHELVER_MAX_BATCH``...)."""
    env = os.environ if environ is None else environ
    if not env.get(f"{PREFIX}MODEL"):
        raise ConfigError(
            "the service needs a model directory: set SHELVER_MODEL=DIR (or run 'shelver serve --model DIR')"
        )
    values: dict[str, object] = {}
    for spec in fields(Settings):
        raw = env.get(PREFIX + spec.name.upper())
        if raw is not None and raw != "":
            values[spec.name] = _parse(spec.name, str(spec.type), raw)
    return Settings(**values)  # type: ignore[arg-type]


def _parse(name: str, kind: str, raw: str) -> object:
    variable = PREFIX + name.upper()
    if kind.startswith("Path"):
        return Path(raw)
    if kind.startswith("str"):
        return raw
    if kind == "bool":
        return _flag(variable, raw)
    try:
        value = float(raw) if kind == "float" else int(raw)
    except ValueError:
        raise ConfigError(f"{variable} must be a {kind} number, got {raw!r}") from None
    if value < 0 or (value == 0 and name not in ZERO_ALLOWED):
        least = "0 or more" if name in ZERO_ALLOWED else "positive"
        raise ConfigError(f"{variable} must be {least}, got {raw!r}")
    return value


def _flag(variable: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(f"{variable} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")
    return value in ("1", "true", "yes", "on")
