"""Judges for the consistency filter: a scorer of every leaf for each synthetic text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shelver.encoders import Encoder
from shelver.taxonomy import Taxonomy


class Judge(Protocol):
    """Scores every leaf for each text: ``(n, n_leaves)``, columns in taxonomy order."""

    def leaf_scores(self, texts: Sequence[str]) -> np.ndarray: ...


class ClassifierJudge:
    """A trained shelver model as the judge (its calibrated leaf probabilities)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def load(cls, model_dir: str | Path, taxonomy: Taxonomy) -> ClassifierJudge:
        from shelver.model_dir import load_model

        return cls(load_model(model_dir, taxonomy))

    def leaf_scores(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(list(texts))[1]


class EmbeddingJudge:
    """The embedding labeler as the judge: cosine similarity of the text to each leaf description."""

    def __init__(self, taxonomy: Taxonomy, encoder: str | Encoder = "minilm") -> None:
        from shelver.labeling.shortlist import PathIndex

        self.index = PathIndex(taxonomy, encoder)

    def leaf_scores(self, texts: Sequence[str]) -> np.ndarray:
        return self.index.similarities(list(texts))
