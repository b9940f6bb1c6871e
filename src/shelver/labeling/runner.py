"""Label a query log into a store: shortlist, prompt, call (bounded, retried), validate, vote, store.

Work is planned per ``(query, voter, sample)``; only calls missing from the store are made, most
frequent queries first. Calls run in a thread pool of ``concurrency`` workers with at most a few
times that many in flight, so a log of millions streams through in constant memory. Each call's
result is stored the moment it returns; a query's label is decided as soon as its last vote is in.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from shelver.errors import BackendError, ConfigError, RequestRefusedError, TransientBackendError
from shelver.labeling.backends import Backend, Reply, Request, make_backend
from shelver.labeling.config import LabelConfig
from shelver.labeling.prompts import Prompt
from shelver.labeling.querylog import count_queries
from shelver.labeling.resolver import PathResolver
from shelver.labeling.retry import with_retries
from shelver.labeling.shortlist import PathIndex
from shelver.labeling.store import LabelStore
from shelver.labeling.validation import Verdict, validate
from shelver.labeling.votes import decide
from shelver.taxonomy import Path_, Taxonomy, format_path

# backends whose answer never changes between samples: one vote each is enough
DETERMINISTIC = ("embedding",)


@dataclass
class RunSummary:
    queries: int = 0
    calls: int = 0
    by_status: Counter = field(default_factory=Counter)
    repairs: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    off_shortlist: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    seconds: float = 0.0
    first_error: str = ""

    def add(
        self, verdict: Verdict, reply: Reply | None, attempts: int, price: tuple[float | None, float | None]
    ) -> None:
        self.calls += 1
        self.by_status[verdict.status] += 1
        self.repairs.update(verdict.repairs)
        self.retries += attempts - 1
        self.off_shortlist += verdict.off_shortlist
        if verdict.reason:
            self.reasons[_reason_kind(verdict.reason)] += 1
        if verdict.status == "error" and not self.first_error:
            self.first_error = verdict.reason
        if reply is not None:
            self.prompt_tokens += reply.prompt_tokens
            self.completion_tokens += reply.completion_tokens
        if price[0] is not None or price[1] is not None:
            self.cost = (
                self.prompt_tokens * (price[0] or 0) + self.completion_tokens * (price[1] or 0)
            ) / 1e6

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(by_status=dict(self.by_status), repairs=dict(self.repairs), reasons=dict(self.reasons))
        out["calls_per_second"] = self.calls / self.seconds if self.seconds else 0.0
        return out


@dataclass(frozen=True)
class _Voter:
    key: str
    backend: Backend
    prompt: Prompt | None
    samples: int


class Labeler:
    """Labels queries into a store with the configured voters; reusable across logs and stores."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        config: LabelConfig | None = None,
        backends: Sequence[Backend] | None = None,
        index: PathIndex | None = None,
    ) -> None:
        self.taxonomy = taxonomy
        self.config = config or LabelConfig()
        self.index = index or PathIndex(taxonomy, self.config.encoder)
        self.resolver = PathResolver(taxonomy, self.config.synonyms)
        self.prompt = Prompt.load(self.config.prompt)  # loaded even if unused: a typo fails now, not later
        built = backends or [
            make_backend(v.backend, v.model, v.options, self.index) for v in self.config.voters
        ]
        self.voters = [self._voter(b) for b in built]
        if len({v.key for v in self.voters}) != len(self.voters):
            raise ConfigError(
                "the same backend and model are given twice; use samples for more votes of one model"
            )

    def _voter(self, backend: Backend) -> _Voter:
        if backend.name in DETERMINISTIC:
            return _Voter(f"{backend.name}:{backend.model}", backend, None, 1)
        prompt = self.prompt
        return _Voter(
            f"{backend.name}:{backend.model}:{prompt.version}", backend, prompt, self.config.samples
        )

    @property
    def plan(self) -> list[tuple[str, int]]:
        return [(v.key, v.samples) for v in self.voters]

    # ---- the run ---------------------------------------------------------------------------
    def run(
        self, store: LabelStore, queries: Sequence[tuple[str, int]] = (), progress: bool = True
    ) -> RunSummary:
        """Label every pending query in ``store`` (after adding ``queries``); returns what this run did."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        store.bind_taxonomy(self.taxonomy)
        store.set_meta("label_config", json.dumps(self.config.to_dict()))
        if queries:
            store.add_queries(count_queries(queries))
        for query in store.undecided(self.plan, self.config.limit):
            self._decide(store, query)  # calls stored by a run killed before it could decide
        pending = [q for q, _ in store.pending(self.plan, self.config.limit)]
        summary = RunSummary(queries=len(pending))
        total = store.missing_calls(self.plan, self.config.limit)
        with tqdm(total=total, unit="call", disable=not progress, desc="labeling", dynamic_ncols=True) as bar:
            self._execute(store, pending, summary, bar)
        summary.seconds = time.perf_counter() - start
        _check_not_all_failed(summary, store)
        return summary

    def _execute(self, store: LabelStore, pending: list[str], summary: RunSummary, bar: Any) -> None:
        outstanding: dict[str, int] = {}
        window = max(1, self.config.concurrency) * 4
        in_flight: dict[Future, tuple[str, _Voter, int, tuple[Path_, ...]]] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            for task in self._tasks(store, pending, outstanding):
                in_flight[pool.submit(self._call, *task)] = task
                if len(in_flight) >= window:
                    self._collect(store, in_flight, outstanding, summary, bar, FIRST_COMPLETED)
            self._collect(store, in_flight, outstanding, summary, bar, ALL_COMPLETED)

    def _tasks(self, store: LabelStore, pending: list[str], outstanding: dict[str, int]) -> Iterator[tuple]:
        """``(query, voter, sample, shortlist)`` for every missing call, shortlists built in batches."""
        keys = [v.key for v in self.voters]
        for start in range(0, len(pending), 256):
            batch = pending[start : start + 256]
            for query, shortlist in zip(
                batch, self.index.shortlist(batch, self.config.shortlist), strict=True
            ):
                done = store.done_calls(query, keys)
                todo = [(v, s) for v in self.voters for s in range(v.samples) if (v.key, s) not in done]
                outstanding[query] = len(todo)
                for voter, sample in todo:
                    yield query, voter, sample, shortlist

    def _collect(
        self,
        store: LabelStore,
        in_flight: dict,
        outstanding: dict[str, int],
        summary: RunSummary,
        bar: Any,
        when: str,
    ) -> None:
        """Store finished calls. A fatal backend error stops the run, but only after every call
        already in flight has come back and been stored: paid work is never thrown away."""
        finished, _ = wait(list(in_flight), return_when=when)
        fatal = None
        for future in finished:
            task = in_flight.pop(future)
            try:
                reply, error, attempts, seconds = future.result()
            except BackendError as err:
                fatal = fatal or err
                continue
            self._store(store, task, reply, error, attempts, seconds, outstanding, summary)
            bar.update(1)
            bar.set_postfix(_postfix(summary), refresh=False)
        if fatal is not None:
            if in_flight:
                self._drain(store, in_flight, outstanding, summary, bar)
            raise fatal

    def _drain(
        self, store: LabelStore, in_flight: dict, outstanding: dict[str, int], summary: RunSummary, bar: Any
    ) -> None:
        for future in list(in_flight):
            future.cancel()  # not started yet: nothing paid, nothing to keep
        live = {f: t for f, t in in_flight.items() if not f.cancelled()}
        with contextlib.suppress(BackendError):  # the first fatal error is the one reported
            self._collect(store, live, outstanding, summary, bar, ALL_COMPLETED)

    def _store(
        self,
        store: LabelStore,
        task: tuple,
        reply: Reply | None,
        error: str | None,
        attempts: int,
        seconds: float,
        outstanding: dict[str, int],
        summary: RunSummary,
    ) -> None:
        query, voter, sample, shortlist = task
        verdict = self._verdict(reply, error, shortlist)
        store.record_call(self._row(query, voter, sample, reply, verdict, attempts, seconds))
        summary.add(verdict, reply, attempts, (self.config.price_prompt, self.config.price_completion))
        outstanding[query] -= 1
        if outstanding[query] == 0:
            del outstanding[query]
            self._decide(store, query)

    def _decide(self, store: LabelStore, query: str) -> None:
        votes = store.votes(query, self.plan)
        store.record_decision(query, decide(votes), votes, self.plan)

    # ---- one call --------------------------------------------------------------------------
    def request(self, query: str, voter: _Voter, sample: int, shortlist: tuple[Path_, ...]) -> Request:
        messages = voter.prompt.messages(query, shortlist) if voter.prompt else ()
        temperature = 0.0 if sample == 0 else self.config.sample_temperature
        return Request(
            messages,
            tuple(format_path(p) for p in shortlist),
            query,
            temperature=temperature,
            seed=self.config.seed + sample,
        )

    def _call(self, query: str, voter: _Voter, sample: int, shortlist: tuple[Path_, ...]) -> tuple:
        request = self.request(query, voter, sample, shortlist)
        start = time.perf_counter()
        reply, error, attempts = call_with_retries(
            voter.backend, request, self.config.max_retries, self.config.backoff
        )
        return reply, error, attempts, time.perf_counter() - start

    def _verdict(self, reply: Reply | None, error: str | None, shortlist: tuple[Path_, ...]) -> Verdict:
        if reply is None:
            return Verdict("error", reason=error or "no reply")
        return validate(reply.text, self.resolver, shortlist)

    def _row(
        self,
        query: str,
        voter: _Voter,
        sample: int,
        reply: Reply | None,
        verdict: Verdict,
        attempts: int,
        seconds: float,
    ) -> dict[str, Any]:
        return {
            "query": query,
            "voter": voter.key,
            "sample": sample,
            "backend": voter.backend.name,
            "model": voter.backend.model,
            "prompt_version": voter.prompt.version if voter.prompt else "",
            "status": verdict.status,
            "path": verdict.path,
            "score": reply.score if reply else None,
            "raw": reply.text if reply else None,
            "repairs": verdict.repairs,
            "reason": verdict.reason or None,
            "off_shortlist": int(verdict.off_shortlist),
            "prompt_tokens": reply.prompt_tokens if reply else 0,
            "completion_tokens": reply.completion_tokens if reply else 0,
            "seconds": seconds,
            "attempts": attempts,
        }

    def close(self) -> None:
        for voter in self.voters:
            voter.backend.close()


def call_with_retries(
    backend: Backend, request: Request, max_retries: int, backoff: float, sleep: Any = time.sleep
) -> tuple[Reply | None, str | None, int]:
    """``(reply, error, attempts)``: transient failures are retried (``retry.with_retries``).

    A refused request gives up at once (its error is stored); a ``BackendError`` that means the
    backend cannot work at all (auth, wrong URL) propagates and stops the run.
    """
    attempts = 0

    def once() -> Reply:
        nonlocal attempts
        attempts += 1
        return backend.generate(request)

    try:
        return with_retries(once, max_retries, backoff, sleep), None, attempts
    except TransientBackendError as err:
        return None, f"gave up after {attempts} attempts: {err}", attempts
    except RequestRefusedError as err:
        return None, str(err), attempts


def _check_not_all_failed(summary: RunSummary, store: LabelStore) -> None:
    """Every call failing means the backend is unreachable or misconfigured, not a bad query."""
    if summary.calls and summary.by_status["error"] == summary.calls:
        raise BackendError(
            f"all {summary.calls:,} calls failed (first: {summary.first_error[:200]}; "
            f"all are in {store.path}); "
            "check the backend (is the server up? --base-url, --model), then re-run: failed calls are retried"
        )


def _reason_kind(reason: str) -> str:
    """A short family name for a rejection reason, for the counts table."""
    text = reason.split(" (answer", 1)[0]
    for kind, marker in (
        ("wrong parent", "is not under"),
        ("not in taxonomy", "is not in the taxonomy"),
        ("wrong depth", "level(s)"),
        ("ambiguous", "ambiguous"),
        ("empty reply", "empty"),
        ("unparseable", "unparseable"),
        ("timeout/5xx/429", "gave up"),
    ):
        if marker in text:
            return kind
    return text[:40]


def _postfix(summary: RunSummary) -> dict[str, str]:
    post = {
        "tok": f"{summary.prompt_tokens + summary.completion_tokens:,}",
        "rej": str(summary.by_status["rejected"]),
        "rep": str(summary.by_status["repaired"]),
    }
    if summary.by_status["error"]:
        post["err"] = str(summary.by_status["error"])
    if summary.cost is not None:
        post["$"] = f"{summary.cost:.4f}"
    return post
