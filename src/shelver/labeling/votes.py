"""Several votes (samples of one backend, or several backends) become one label and a confidence.

Each vote carries a score: the backend's own probability where it has one (embedding), else 1.
The winner is the answer (a path, or none) with the largest total score; ties go to the earlier
voter. ``confidence`` is the winner's total score over the number of votes, and ``agreement`` the
share of votes that chose it, so a rejected or failed vote counts against the label. One vote
alone from an LLM carries no confidence signal (confidence 1): ask for ``votes`` or a second
backend when the confidence matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shelver.taxonomy import Path_

NONE_KEY: Path_ = ()


@dataclass(frozen=True)
class Vote:
    voter: str
    status: str
    path: Path_ | None
    score: float | None = None
    backend: str = ""
    model: str = ""
    prompt_version: str = ""
    raw: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    status: str  # labeled | none | rejected | error
    path: Path_ | None
    confidence: float
    agreement: float
    winner: Vote | None


def decide(votes: Sequence[Vote]) -> Decision:
    """One decision from the votes of every voter and sample of a query."""
    answered = [v for v in votes if v.status in ("ok", "repaired", "none")]
    if not answered:
        failed = "error" if any(v.status == "error" for v in votes) else "rejected"
        return Decision(failed, None, 0.0, 0.0, None)
    totals: dict[Path_, float] = {}
    for vote in answered:
        totals[_key(vote)] = totals.get(_key(vote), 0.0) + _score(vote)
    best = max(totals.values())
    key = next(k for k in totals if totals[k] == best)  # dicts keep voter order: ties go to the first
    winner = next(v for v in answered if _key(v) == key)
    agreeing = sum(1 for v in answered if _key(v) == key)
    status = "none" if key == NONE_KEY else "labeled"
    return Decision(status, key or None, best / len(votes), agreeing / len(votes), winner)


def _key(vote: Vote) -> Path_:
    return vote.path if vote.status != "none" and vote.path else NONE_KEY


def _score(vote: Vote) -> float:
    return 1.0 if vote.score is None else max(0.0, min(1.0, float(vote.score)))
