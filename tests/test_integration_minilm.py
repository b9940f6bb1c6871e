"""One real end-to-end path: the default MiniLM encoder on a slice of the bundled fashion data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import FASHION

from shelver import HierarchicalClassifier, Taxonomy, load_model
from shelver.metrics import classification_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fashion_slice() -> dict[str, pd.DataFrame]:
    read = lambda split: pd.read_csv(FASHION / f"{split}.csv", dtype=str, keep_default_na=False)  # noqa: E731
    return {
        "train": read("train").sample(2500, random_state=0),
        "test": read("test").sample(400, random_state=0),
    }


def test_minilm_per_group_on_real_titles(fashion_slice, tmp_path):
    taxonomy = Taxonomy.load(FASHION / "taxonomy.json")
    train, test = fashion_slice["train"], fashion_slice["test"]
    y = train[["category", "subcategory"]].to_numpy()
    model = HierarchicalClassifier(taxonomy=taxonomy).fit(train["text"].tolist(), y)
    predicted = model.predict(test["text"].tolist())
    truth = test[["category", "subcategory"]].to_numpy().astype(str)
    counts = {" > ".join(p): int(n) for p, n in zip(taxonomy.paths, model.train_counts_, strict=True)}
    metrics = classification_metrics(truth, predicted, counts)
    # 2,500 rows of real titles are enough for a clearly useful model; a broken encoder scores ~0
    assert metrics["level1"]["accuracy"] > 0.9 and metrics["level2"]["accuracy"] > 0.8
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    np.testing.assert_array_equal(again.predict(test["text"].tolist()), predicted)
