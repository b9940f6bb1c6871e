"""Cross-fitting: the human labels train the model and fit its thresholds, never both on one row."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from shelver import HierarchicalClassifier
from shelver.crossfit import cross_fit
from shelver.errors import DataError

LEVELS = ["category", "subcategory"]


class Recording(HierarchicalClassifier):
    """A real classifier that notes what each fitted copy trained on and what it scored."""

    log: ClassVar[list[tuple[set[str], list[str]]]] = []

    def fit(self, X, y, source=None):
        self.seen_ = set(X)
        return super().fit(X, y, source=source)

    def features(self, X):
        Recording.log.append((self.seen_, list(X)))
        return super().features(X)


@pytest.fixture
def rows(tiny_frames):
    machine, human = tiny_frames["train"], tiny_frames["valid"]
    texts = machine["text"].tolist() + human["text"].tolist()
    y = np.vstack([machine[LEVELS].to_numpy(), human[LEVELS].to_numpy()]).astype(str)
    source = ["llm:test"] * len(machine) + ["human"] * len(human)
    return texts, y, source, set(human["text"])


def test_cross_fitting_never_scores_a_row_with_a_model_that_trained_on_it(taxonomy, rows):
    texts, y, source, human = rows
    Recording.log = []
    model = Recording(taxonomy=taxonomy, encoder="hashing", C=0.3, target_precision=0.9)
    cross_fit(model, texts, y, source, folds=4)
    fold_scores = [(seen, scored) for seen, scored in Recording.log if set(scored) <= human]
    assert len(fold_scores) == 4
    assert set().union(*(set(scored) for _, scored in fold_scores)) == human  # every human row scored
    for seen, scored in fold_scores:
        assert not seen & set(scored)
    assert human <= model.seen_  # the final model trains on every human row too
    fitted_on = model.calibrated_on_
    assert fitted_on["human"] and fitted_on["rows"] == source.count("human")
    assert fitted_on["cross_fitted_folds"] == 4


def test_cross_fitting_needs_human_rows(taxonomy, rows):
    texts, y, _, _ = rows
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", target_precision=0.9)
    with pytest.raises(DataError, match="cross-fitting needs at least 5 human-labeled rows, got 0"):
        cross_fit(model, texts, y, ["llm:test"] * len(texts))
