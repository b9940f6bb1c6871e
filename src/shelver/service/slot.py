"""The model being served, and how it is swapped for another without failing a request.

A request reads ``slot.current`` once and keeps that ``Served`` object until it answers, so a
reload that replaces ``current`` (one reference assignment) never changes a model under a
running request. A new model is loaded and tried on a query before it replaces the old one; if
anything fails the old model stays.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelver.answer_memo import AnswerMemo
from shelver.errors import ShelverError
from shelver.service.batcher import INVARIANT_GAP, MicroBatcher, Observe, batch_gap
from shelver.service.settings import Settings

log = logging.getLogger("shelver.service")
SMOKE_QUERY = "shelver readiness check"


class ReloadError(ShelverError, ValueError):
    """A reload was refused: the directory is not allowed, does not load, or changes the taxonomy.

    ``str(err)`` is for the server's log; ``public`` is what the client is told, without server
    paths; ``status`` is the HTTP status; ``version`` the refused model's version, when it loaded.
    """

    def __init__(
        self, message: str, public: str | None = None, status: int = 422, version: str | None = None
    ) -> None:
        super().__init__(message)
        self.public, self.status, self.version = public or message, status, version


@dataclass(frozen=True)
class Served:
    """A loaded model with what ``/v1/model`` tells about it."""

    model: Any
    path: Path
    version: str
    info: dict[str, Any] = field(default_factory=dict)
    query_seconds: float = 1.0  # one query's classify time, measured at load
    # the answers to the last cache_size distinct queries; each model has its own, so a reload starts empty
    answers: AnswerMemo = field(default_factory=lambda: AnswerMemo(0))
    batch_gap: float = 0.0  # how far a batch moves its confidences (batcher.batch_gap), at load

    @property
    def reference(self) -> dict[str, Any] | None:
        """The calibration rows' confidences and decisions, which live traffic is compared with."""
        return (getattr(self.model, "calibrated_on_", None) or {}).get("reference")


class ModelSlot:
    def __init__(self, settings: Settings, observe_call: Observe | None = None) -> None:
        self.settings = settings
        self.current: Served | None = None
        limit_blas_threads(settings.threads)
        self.executor = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="classify")
        self.batcher = _batcher(settings, self._run, observe_call)
        self._reloading: asyncio.Lock | None = None

    def load(self, path: str | Path) -> Served:
        return load_served(path, self.settings.threads, self.settings.cache_size)

    async def classify(self, served: Served, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        """The answers in order, and how many of them the cache gave; each new text is classified once."""
        cached = [served.answers.get(t) for t in texts]
        todo = list(dict.fromkeys(t for t, a in zip(texts, cached, strict=True) if a is None))
        fresh = dict(zip(todo, await self._classify(served, todo), strict=True)) if todo else {}
        served.answers.put(fresh)
        answers = [a if a is not None else fresh[t] for t, a in zip(texts, cached, strict=True)]
        return answers, len(texts) - sum(a is None for a in cached)

    async def _classify(self, served: Served, texts: list[str]) -> list[dict[str, Any]]:
        """Through the micro-batcher (with whatever else is queued), or alone when it is off."""
        if self.batcher is not None and self.batches(served):
            return await self.batcher.classify(served, texts, self.settings.request_timeout)
        return await self._run(served, texts, self.settings.request_timeout)

    def batches(self, served: Served) -> bool:
        """Whether micro-batching may group ``served``'s queries: a batch leaves its answers as
        they are alone, or the settings batch any model."""
        return served.batch_gap <= INVARIANT_GAP or self.settings.microbatch_any_model

    def announce(self, served: Served) -> None:
        """Say in the log when micro-batching is on but this model will not be batched."""
        if self.batcher is not None and not self.batches(served):
            log.warning(
                "micro-batching is off for %s: a batch moves its answers (confidence gap %.2g). "
                "An int8 encoder quantized per call (--int8 dynamic, or exported before per-token "
                "int8 was the default) does; export it again ('shelver export --model DIR') for the "
                "per-token graph, or set SHELVER_MICROBATCH_ANY_MODEL=1 to batch it anyway",
                served.path.name,
                served.batch_gap,
            )

    async def _run(
        self, served: Served, texts: list[str], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Short work runs inline on the event loop (no thread hand-off); the rest on the pool."""
        if len(texts) * served.query_seconds * 1e3 <= self.settings.inline_ms:
            return _classify(served.model, texts)
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.executor, _classify, served.model, texts)
        return await asyncio.wait_for(work, timeout)

    async def reload(
        self, path: str | Path | None = None, allow_taxonomy_change: bool = False
    ) -> tuple[Served, Served | None]:
        """Swap in ``path`` (default: the served directory, read again); return (new, old).

        A model trained on another taxonomy would change the categories clients get: it is
        refused unless ``allow_taxonomy_change``.
        """
        self._reloading = self._reloading or asyncio.Lock()
        async with self._reloading:  # two reloads at once would race on which one wins
            old = self.current
            target = Path(path) if path else (old.path if old else self.settings.model)
            try:
                new = await asyncio.to_thread(self.load, target)
            except Exception as err:  # any failure keeps the old model: a broken one is refused
                reason = str(err) if isinstance(err, ShelverError) else f"{type(err).__name__}: {err}"
                message = f"cannot load {target}: {reason}"
                raise ReloadError(message, redact(message, self.settings.reload_root())) from None
            if old is not None and not allow_taxonomy_change:
                check_taxonomy_kept(old, new)
            self.current = new
            log.info("serving %s (version %s)", new.path, new.version)
            self.announce(new)
            return new, old

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def limit_blas_threads(threads: int) -> None:
    """Give numpy's BLAS (the heads' products) the threads a call has, as onnxruntime gets them.

    OpenBLAS splits a batch's product over every core, and its idle threads then busy-wait: while
    one worker of the demo model served 64 connections on 2 cores, one spun at 64% of a core, and
    limiting it raised that worker's peak from 850 to 1,136 requests/s. Process-wide, like BLAS.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def _batcher(settings: Settings, run: Any, observe: Observe | None) -> MicroBatcher | None:
    """One batcher per process, with a batch in flight per classify thread; None when off."""
    if settings.microbatch_queries <= 1:
        return None
    window = settings.microbatch_window_ms / 1e3
    return MicroBatcher(run, window, settings.microbatch_queries, settings.concurrency, observe)


def check_taxonomy_kept(old: Served, new: Served) -> None:
    before, after = old.info["taxonomy"]["hash"], new.info["taxonomy"]["hash"]
    if before != after:
        message = (
            f"the new model was trained on another taxonomy (hash {after[:12]}, served {before[:12]}): "
            'clients would get other categories; send "allow_taxonomy_change": true to swap it in anyway'
        )
        raise ReloadError(message, status=409, version=new.version)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.>])/[^\s'\",;:()]+")


def redact(message: str, root: Path) -> str:
    """``message`` without server paths: the models root becomes ``<models root>``, any other
    absolute path ``<path>`` (load errors name files; clients must not learn the layout)."""
    message = message.replace(str(root), "<models root>")
    return _ABSOLUTE_PATH.sub("<path>", message)


def load_served(path: str | Path, threads: int | None = 1, cache_size: int = 0) -> Served:
    """Load, check on one query, and describe a model directory (not yet served)."""
    from shelver.model_dir import load_model, model_version

    root = Path(path)
    model = load_model(root, encoder="serving", threads=threads)
    seconds = _query_seconds(model)  # a model that cannot answer is not swapped in
    gap = batch_gap(model)
    info = describe(model, root) | {"batch_invariant": gap <= INVARIANT_GAP}
    return Served(model, root, model_version(root), info, seconds, AnswerMemo(cache_size), gap)


def _query_seconds(model: Any, runs: int = 5) -> float:
    """The median time of one query, after a first (smoke) query has warmed the model up."""
    _classify(model, [SMOKE_QUERY])
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        _classify(model, [SMOKE_QUERY])
        times.append(time.perf_counter() - started)
    return sorted(times)[runs // 2]


def _classify(model: Any, texts: list[str]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in model.classify(texts)]


def describe(model: Any, root: Path) -> dict[str, Any]:
    from shelver.model_dir import describe_model_dir

    saved = describe_model_dir(root)
    taxonomy = model.taxonomy_
    return {
        "version": saved["version"],
        "model_dir": root.name,  # the name only: a public route does not show the server's layout
        "created": saved["created"],
        "shelver_version": saved["shelver_version"],
        "taxonomy": {"name": taxonomy.name, "hash": taxonomy.hash, **taxonomy.to_dict()},
        "training": saved["training"],
        "head": saved["head"],
        "encoder": {"trained_with": saved["trained_with"], "serving": model.encoder_.spec.split(":")[0]},
        "export": saved["export"],
        "thresholds": saved["thresholds"],
        "thresholds_fitted_on": _fitted_on(model),
    }


def _fitted_on(model: Any) -> dict[str, Any]:
    """What the thresholds promise, in one line and in full (less the drift reference histograms)."""
    from shelver.calibration import describe_fitted_on

    fitted_on = getattr(model, "calibrated_on_", None)
    detail = {k: v for k, v in (fitted_on or {}).items() if k != "reference"}
    return {"summary": describe_fitted_on(fitted_on), **detail}
