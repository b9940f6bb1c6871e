"""A deterministic backend for tests: scripted replies and failures, no model.

``FakeBackend(model="first")`` answers the first candidate, ``"none"`` always answers none, and
``script={query: [outcome, ...]}`` plays outcomes in order per query: a string is returned as the
raw reply, an exception is raised (``TransientBackendError`` for a 429/5xx/timeout, say). From
the CLI: ``--backend fake --option delay=0.05 --option call_log=calls.txt`` (the log gets one line
per call, so a test can count calls across processes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from shelver.errors import ConfigError
from shelver.labeling.backends.base import NONE_ANSWER, Reply, Request, answer_json

Outcome = str | BaseException
MODES = ("first", "last", "none")


class FakeBackend:
    name = "fake"

    def __init__(
        self,
        model: str = "first",
        script: Mapping[str, Sequence[Outcome]] | Callable[[Request], Outcome] | None = None,
        delay: float = 0.0,
        call_log: str | Path | None = None,
    ) -> None:
        if model not in MODES:
            raise ConfigError(f"fake backend model must be one of {', '.join(MODES)}, got {model!r}")
        self.mode = model
        self.model = f"fake-{model}"
        self.script = script
        self.delay = float(delay)
        self.call_log = Path(call_log) if call_log else None
        self.calls: list[Request] = []
        self._played: dict[str, int] = {}
        self._lock = threading.Lock()

    def generate(self, request: Request) -> Reply:
        with self._lock:
            self.calls.append(request)
            outcome = self._next(request)
            if self.call_log is not None:
                with self.call_log.open("a", encoding="utf-8") as log:
                    log.write(request.query + "\n")
        if self.delay:
            time.sleep(self.delay)
        if isinstance(outcome, BaseException):
            raise outcome
        return Reply(
            outcome,
            prompt_tokens=sum(len(m["content"].split()) for m in request.messages),
            completion_tokens=len(outcome.split()),
        )

    def _next(self, request: Request) -> Outcome:
        if callable(self.script):
            return self.script(request)
        if self.script is not None and request.query in self.script:
            played = self._played.get(request.query, 0)
            self._played[request.query] = played + 1
            outcomes = self.script[request.query]
            return outcomes[min(played, len(outcomes) - 1)]
        return answer_json(self._default(request))

    def _default(self, request: Request) -> str:
        if self.mode == "none" or not request.choices:
            return NONE_ANSWER
        return request.choices[0] if self.mode == "first" else request.choices[-1]

    def close(self) -> None:
        pass
