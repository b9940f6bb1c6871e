"""The one protocol every labeling backend implements, and what goes in and out of it.

A backend turns a ``Request`` (chat messages, and optionally the closed set of answers it may
give) into a ``Reply`` (raw text plus token counts). It never validates: the caller checks every
reply against the taxonomy, so a weak or misbehaving model cannot slip an invalid label through.
The same protocol serves labeling (``choices`` set) and free generation (synthesis: no
``choices``), so later stages reuse the backends as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# The answer a backend gives when no candidate fits; a valid, stored outcome.
NONE_ANSWER = "none"


@dataclass(frozen=True)
class Request:
    """One call. With ``choices``, the reply must be ``{"path": <one of choices or "none">}``."""

    messages: tuple[dict[str, str], ...]
    choices: tuple[str, ...] = ()
    # the bare query, for backends that read no prompt (embedding, fake)
    query: str = ""
    # a path is a handful of tokens; the JSON wrapper a few more
    max_tokens: int = 48
    # 0 for the first vote (greedy); > 0 for extra samples that should be able to disagree
    temperature: float = 0.0
    seed: int = 0

    @property
    def answers(self) -> tuple[str, ...]:
        """Every answer a constrained backend may give: the choices, then ``none``."""
        return (*self.choices, NONE_ANSWER) if self.choices else ()


@dataclass(frozen=True)
class Reply:
    """What came back, unvalidated, with its cost in tokens."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # the backend's own probability for its answer, where it has a meaningful one (embedding)
    score: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """``name`` is the registry name; ``model`` identifies the model and is stored with each label."""

    name: str
    model: str

    def generate(self, request: Request) -> Reply: ...

    def close(self) -> None: ...


def answer_json(answer: str) -> str:
    """The reply text a constrained backend produces for ``answer``."""
    return json.dumps({"path": answer}, ensure_ascii=False)


def answer_schema(answers: Sequence[str]) -> dict[str, object]:
    """JSON schema of ``{"path": <one of answers>}``, for servers with structured output."""
    return {
        "type": "object",
        "properties": {"path": {"type": "string", "enum": list(answers)}},
        "required": ["path"],
        "additionalProperties": False,
    }


def answer_grammar(answers: Sequence[str]) -> str:
    """A GBNF grammar admitting exactly ``{"path": "<answer>"}`` for one of ``answers``."""
    alternatives = " | ".join(_gbnf_literal(json.dumps(a, ensure_ascii=False)) for a in answers)
    return f'root ::= "{{\\"path\\": " answer "}}"\nanswer ::= {alternatives}\n'


def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
