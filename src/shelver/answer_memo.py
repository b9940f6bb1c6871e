"""The answers to recently seen texts: the service's answer cache and ``classify-batch``'s memo.

Search traffic repeats its head queries, so both paths classify each distinct text once and reuse
the answer. Standard library only: the serving path imports it and must stay free of heavy imports.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any


class AnswerMemo:
    """The answers to the last ``size`` distinct texts; the least recently used go first.

    ``size`` 0 keeps nothing. Not thread-safe: each owner touches it from one thread (the service's
    event loop, a batch actor).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, text: str) -> dict[str, Any] | None:
        """The answer to ``text`` (now the most recently used), or ``None``."""
        answer = self.entries.get(text)
        if answer is not None:
            self.entries.move_to_end(text)
        return answer

    def get_many(self, texts: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The answers known for ``texts``, by distinct text."""
        found = {t: self.get(t) for t in dict.fromkeys(texts)}
        return {t: a for t, a in found.items() if a is not None}

    def put(self, answers: Mapping[str, dict[str, Any]]) -> None:
        """Remember ``answers`` as the most recently used, in their order; the oldest go past ``size``."""
        if not self.size:
            return
        for text, answer in answers.items():
            self.entries[text] = answer
            self.entries.move_to_end(text)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()
