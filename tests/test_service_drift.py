"""Shift in production: the service counts every decision's confidence and compares live traffic
with the calibration sample (a real ``shelver serve`` process)."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
from conftest import ServerProcess

from shelver import HierarchicalClassifier
from shelver.drift import EDGES, bin_counts, psi, reference


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory, taxonomy, tiny_xy, tiny_frames):
    texts, y = tiny_xy
    valid = tiny_frames["valid"]
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", C=0.3, target_precision=0.8)
    model.fit(texts, y).calibrate(valid["text"].tolist(), valid[["category", "subcategory"]].to_numpy())
    return model.save(tmp_path_factory.mktemp("models") / "calibrated"), model


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + selector + '}') if labels else ''} (\S+)$"
    return float(re.search(pattern, text, re.MULTILINE).group(1))


def test_the_service_histograms_count_every_decision_and_compare_with_calibration(calibrated_dir):
    path, model = calibrated_dir
    server = ServerProcess(path, env={"SHELVER_CACHE_SIZE": "0"}).wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            queries = [f"red boots {i}" for i in range(23)] + ["zzz", "tote", "linen shirt"] * 3
            answers = [http.post("/v1/classify", json={"query": q}).json() for q in queries[:10]]
            answers += http.post("/v1/classify", json={"queries": queries[10:]}).json()["predictions"]
            text = http.get("/metrics").text
            info = http.get("/v1/model").json()
    finally:
        server.stop()
    for level in ("level1", "level2"):
        assert metric(text, "shelver_confidence_count", level=level) == len(queries)
    decisions = {d: sum(a["decision"] == d for a in answers) for d in ("full", "category", "abstain")}
    counted = {d: metric(text, "shelver_decisions_total", decision=d) for d, n in decisions.items() if n}
    assert sum(counted.values()) == len(queries) and counted == {d: n for d, n in decisions.items() if n}
    ref = model.calibrated_on_["reference"]
    expected = ref["decisions"]["full"] + ref["decisions"]["category"]
    assert metric(text, "shelver_answered_share_expected", level="level1") == pytest.approx(expected)
    live = (decisions["full"] + decisions["category"]) / len(queries)
    assert metric(text, "shelver_answered_share_live", level="level1") == pytest.approx(live)
    live_counts = bin_counts([a["confidence"][1] for a in answers])
    assert metric(text, "shelver_confidence_psi", level="level2") == pytest.approx(
        psi(ref["level2"], live_counts)
    )
    assert info["thresholds_fitted_on"]["summary"].startswith("thresholds fitted on")
    assert "reference" not in info["thresholds_fitted_on"]


def test_psi_is_zero_for_the_same_traffic_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    calm = rng.beta(8, 2, 2000)
    ref = reference(calm, calm * 0.9, np.zeros(2000, dtype=int))
    assert len(ref["level1"]) == len(EDGES) and sum(ref["level1"]) == 2000
    assert psi(ref["level1"], ref["level1"]) == 0.0
    same, shifted = bin_counts(rng.beta(8, 2, 2000)), bin_counts(rng.beta(2, 2, 2000))
    assert psi(ref["level1"], same) < 0.1 < 0.25 < psi(ref["level1"], shifted)
    assert ref["decisions"] == {"full": 1.0, "category": 0.0, "abstain": 0.0}
