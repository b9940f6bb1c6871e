"""Smoothing the embedding labeler over the log: the backend's own distribution, neighbours, anchors."""

from __future__ import annotations

import numpy as np
import pytest

from shelver.errors import ConfigError
from shelver.labeling.smoothing import (
    Smoothing,
    nearest_mean,
    refine_leaf_vectors,
    shortlist_softmax,
    smooth,
    with_anchors,
)

LEAVES = np.eye(3, dtype=np.float32)  # three leaves, one axis each


def _unit(rows: list[list[float]]) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _log() -> np.ndarray:
    """Five rows leaning to leaf 0, one among them a hair nearer leaf 1, and three rows of leaf 1."""
    cluster = [[0.80, 0.60, 0.30 + 0.01 * i] for i in range(5)]
    odd = [[0.70, 0.71, 0.31]]
    far = [[0.10, 0.95, 0.05 * i] for i in range(3)]
    return _unit(cluster + odd + far)


def test_an_isolated_mislabeled_row_takes_its_neighbours_label() -> None:
    log = _log()
    zero_shot = shortlist_softmax(log @ LEAVES.T, 3, 0.05).argmax(axis=1)
    assert zero_shot.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]  # the odd row (5) is labeled leaf 1
    smoothed = smooth(log, LEAVES, np.full(len(log), -1), Smoothing(beta=1.0, k=5, shortlist=3))
    assert smoothed.argmax(axis=1).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert np.allclose(smoothed.sum(axis=1), 1.0, atol=1e-5)


def test_anchors_pull_their_neighbours_and_without_neighbours_nothing_moves() -> None:
    log = _log()
    anchors = np.full(len(log), -1)
    anchors[:5] = 2  # people said the whole cluster is leaf 2
    smoothed = smooth(log, LEAVES, anchors, Smoothing(beta=1.0, k=5, shortlist=3))
    assert smoothed[5].argmax() == 2
    alone = smooth(log, LEAVES, np.full(len(log), -1), Smoothing(beta=0.0, k=1, shortlist=3))
    assert np.allclose(alone, shortlist_softmax(log @ LEAVES.T, 3, 0.05), atol=1e-6)


def test_distribution_is_the_embedding_backends_softmax_over_its_shortlist() -> None:
    from shelver.labeling.backends.embedding import EmbeddingBackend

    class Index:  # the backend asks its index for the similarities of the offered choices
        encoder = type("E", (), {"spec": "fixed"})()

        def score_choices(self, query: str, choices: list[str]) -> np.ndarray:
            return sims[[int(c) for c in choices]]

    sims = np.array([0.31, 0.52, 0.47, 0.12, 0.50], dtype=np.float32)
    dist = shortlist_softmax(sims[None, :], 3, 0.05)[0]
    assert np.count_nonzero(dist) == 3 and dist[3] == dist[0] == 0.0
    reply = EmbeddingBackend(Index(), temperature=0.05).generate(_request(["1", "4", "2"]))
    assert float(dist.max()) == pytest.approx(reply.score, rel=1e-5)


def _request(choices: list[str]) -> object:
    from shelver.labeling import Request

    return Request(query="q", messages=(), choices=tuple(choices))


def test_nearest_mean_in_blocks_equals_one_block() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50, 8)).astype(np.float32)
    values = rng.random((50, 4)).astype(np.float32)
    assert np.allclose(nearest_mean(rows, values, 7, block=3), nearest_mean(rows, values, 7, block=1000))
    assert np.allclose(nearest_mean(rows, values, 1), values)  # each row is its own nearest


def test_refined_leaves_stay_unit_and_a_leaf_nobody_wins_keeps_its_description() -> None:
    log = _log()
    refined = refine_leaf_vectors(LEAVES, log, np.array([0] * 6 + [1] * 3), beta=3.0)
    assert np.allclose(np.linalg.norm(refined, axis=1), 1.0, atol=1e-6)
    assert np.allclose(refined[2], LEAVES[2]) and not np.allclose(refined[0], LEAVES[0])


def test_with_anchors_is_one_hot_on_anchored_rows_only() -> None:
    dist = np.full((3, 3), 1 / 3, dtype=np.float32)
    out = with_anchors(dist, np.array([-1, 2, 0]))
    assert out.tolist()[1:] == [[0, 0, 1], [1, 0, 0]] and np.allclose(out[0], 1 / 3)


def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="smoothing needs k >= 1.*got k=0.*fix select.smooth_k"):
        Smoothing(k=0)
