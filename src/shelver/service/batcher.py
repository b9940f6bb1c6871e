"""Micro-batching: the queries of requests that arrive together are classified in one model call.

An encoder runs a batch of 64 queries in far less than 64 times one query's time, yet every
HTTP request carries one query. Requests therefore queue here, and a batch is cut from the
queue ("drain the queue", as Triton's dynamic batcher and Ray Serve's ``@serve.batch`` do):

- A request that finds no batch running starts one at once: under light load nothing waits.
- While ``slots`` batches run, new requests queue; when one finishes, the queue goes next.
- A request queued beside a running batch waits at most ``window`` seconds (from its arrival)
  for company, when a slot is free but the batch is not yet full.
- A batch holds at most ``max_queries`` queries (one larger request runs alone, never split),
  and only requests for the same served model: a reload never mixes two models in a call.

Each request gets exactly its own answers, in order; a request that times out is dropped from
the queue, or its answers discarded, without touching the others. Only the event loop touches
this object.

A batch must not change an answer, and for some models it does: an int8 ONNX encoder quantizes
its activations with one scale per batch, so a query's confidence moves with its neighbours'
(by up to 0.1 on the tests' tiny model). ``batch_gap`` measures this at load; the service batches
only a model whose answers agree (float32 products still round a row alone and in a batch
differently, in the 6th decimal: ``INVARIANT_GAP``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Answers = list[dict[str, Any]]
# confidences are rounded to 6 decimals: a float32 rounding difference may flip the last one
INVARIANT_GAP = 1.5e-6
Run = Callable[[Any, list[str]], Awaitable[Answers]]  # (served model, texts) -> answers
Observe = Callable[[int], None]  # told the number of distinct queries of every model call


@dataclass
class _Pending:
    """A request waiting for its answers: the model it read, its texts, when it arrived."""

    served: Any
    texts: list[str]
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Queues requests and runs them in shared model calls (see the module docstring)."""

    def __init__(
        self, run: Run, window: float, max_queries: int, slots: int = 1, observe: Observe | None = None
    ) -> None:
        self.run, self.window, self.max_queries, self.slots = run, window, max_queries, slots
        self.observe = observe or (lambda size: None)
        self.queue: deque[_Pending] = deque()
        self.running = 0
        self._tasks: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks
        self._timer: asyncio.TimerHandle | None = None

    async def classify(self, served: Any, texts: list[str], timeout: float | None = None) -> Answers:
        """``texts``' answers from ``served``, classified with whatever else is queued."""
        loop = asyncio.get_running_loop()
        pending = _Pending(served, texts, loop.create_future(), loop.time())
        self.queue.append(pending)
        self._dispatch()
        return await asyncio.wait_for(pending.future, timeout)

    def _dispatch(self) -> None:
        """Start batches while a slot is free, unless the next one should wait for company."""
        while self.running < self.slots and self._drop_abandoned():
            wait = self._wait_for_company()
            if wait > 0:
                self._arm(wait)
                return
            self.running += 1
            task = asyncio.ensure_future(self._run_batch(self._cut()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _drop_abandoned(self) -> bool:
        """Forget queued requests that timed out; True while any remain."""
        while self.queue and self.queue[0].future.done():
            self.queue.popleft()
        return bool(self.queue)

    def _wait_for_company(self) -> float:
        """Seconds the head of the queue should still wait: 0 when idle, full, or waited enough."""
        if self.running == 0 or self._queued_queries() >= self.max_queries:
            return 0.0
        return self.queue[0].arrived + self.window - asyncio.get_running_loop().time()

    def _queued_queries(self) -> int:
        served = self.queue[0].served
        return sum(len(p.texts) for p in self.queue if p.served is served and not p.future.done())

    def _arm(self, delay: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _cut(self) -> list[_Pending]:
        """The head request and the queued ones after it for the same model, up to the limit."""
        head, rest = self.queue.popleft(), self.queue
        batch, size, self.queue = [head], len(head.texts), deque()
        for pending in rest:
            if pending.future.done():
                continue
            if pending.served is head.served and size + len(pending.texts) <= self.max_queries:
                batch.append(pending)
                size += len(pending.texts)
            else:
                self.queue.append(pending)
        return batch

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            texts = list(dict.fromkeys(t for p in batch for t in p.texts))  # a text once per call
            self.observe(len(texts))
            answers = dict(zip(texts, await self.run(batch[0].served, texts), strict=True))
        except Exception as err:  # every request of the batch gets the error, none a wrong answer
            _settle(batch, error=err)
        else:
            _settle(batch, answers=answers)
        finally:
            self.running -= 1
            self._dispatch()


def _settle(
    batch: list[_Pending], answers: dict[str, Any] | None = None, error: Exception | None = None
) -> None:
    for pending in batch:
        if pending.future.done():  # timed out meanwhile: its client already has a 503
            continue
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result([answers[t] for t in pending.texts])  # type: ignore[index]


def batch_gap(model: Any, probes: int = 32) -> float:
    """How much batching moves this model's answers: the largest confidence gap between the
    taxonomy's paths classified one at a time and in one batch; infinite if a path or decision
    changes."""
    paths = list(model.taxonomy_.paths)[:probes]
    texts = [" ".join(p).lower() for p in paths] + [f"{p[-1]} " * 12 for p in paths[:4]]
    alone = [p.to_dict() for text in texts for p in model.classify([text])]
    together = [p.to_dict() for p in model.classify(texts)]
    gap = 0.0
    for a, b in zip(alone, together, strict=True):
        if (a["path"], a["decision"]) != (b["path"], b["decision"]):
            return float("inf")
        gap = max([gap, *(abs(x - y) for x, y in zip(a["confidence"], b["confidence"], strict=True))])
    return gap
