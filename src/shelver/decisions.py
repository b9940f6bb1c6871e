"""What the model answers for one query, as a small dataclass the CLI and service share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """The predicted path of one text and the confidence at each level.

    ``confidence[1]`` is the joint probability of the whole path, so it never exceeds
    ``confidence[0]``.
    """

    text: str
    path: tuple[str, ...]
    confidence: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "path": list(self.path),
            "confidence": [round(c, 6) for c in self.confidence],
        }
