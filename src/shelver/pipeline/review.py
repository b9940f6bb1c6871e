"""The review stage: the real queries the model abstained on or doubted, most frequent first."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shelver.data import write_table
from shelver.pipeline.runner import RunContext, file_hash
from shelver.pipeline.select import sample_texts, store_path
from shelver.taxonomy import format_path

REVIEW_FILE = "review.csv"
SAMPLE_FILE = "calibration_sample.csv"


def inputs(ctx: RunContext) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(ctx.config.review),
        "log": file_hash(ctx.log_path),
        "labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None,
    }


def run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.labeling import read_query_log
    from shelver.model_dir import load_model

    model = load_model(ctx.stage_dir("train") / "model").set_params(progress=ctx.progress)
    human = _human_labeled(ctx)  # once: read per log query, it made the stage quadratic
    sample = sample_texts(ctx.labeled_sample)  # real labels already: nothing to review there
    logged = read_query_log(ctx.log_path)
    queries = [(q, c) for q, c in logged if q not in human and q not in sample]
    predicted = predicted_frame(model, queries)  # classified once, for both files
    frame = review_frame(predicted, ctx.config.review.limit)
    write_table(frame, directory / REVIEW_FILE)
    cfg = ctx.config.review
    threshold = model.thresholds_.level2
    calibration = calibration_sample(
        predicted, cfg.calibration_rows, cfg.strata, ctx.config.train.seed, threshold
    )
    write_table(calibration, directory / SAMPLE_FILE)
    return {
        "rows": len(frame),
        "abstained": int((frame["decision"] != "full").sum()),
        "log_queries": len(queries),
        "labeled_sample_queries_left_out": sum(q in sample for q, _ in logged),
        "calibration_sample_rows": len(calibration),
    }


def predicted_frame(model: Any, queries: list[tuple[str, int]]) -> pd.DataFrame:
    """The log's queries and counts with the model's best path (``label``: ``=`` in ``human_path``
    accepts it on import), decision, reason and the confidence of the whole path (rounded;
    ``_confidence`` keeps it exact)."""
    predictions = model.classify([q for q, _ in queries]) if queries else []
    exact = [float(p.confidence[-1]) for p in predictions]
    return pd.DataFrame(
        {
            "text": [q for q, _ in queries],
            "count": [c for _, c in queries],
            "label": [format_path(p.candidate) for p in predictions],
            "decision": [p.decision for p in predictions],
            "confidence": [round(c, 6) for c in exact],
            "reason": [p.reason for p in predictions],
            "human_path": "",
            "_confidence": exact,
        }
    )


def calibration_sample(
    predicted: pd.DataFrame, n: int, strata: int, seed: int, threshold: float
) -> pd.DataFrame:
    """Queries to label next so the thresholds can be certified at more coverage.

    A certificate holds for the traffic its labels were drawn from, so this is a sample of
    served traffic: queries drawn with probability proportional to their count (frequent queries
    first in expectation), stratified into ``strata`` bands of the model's full-path confidence
    of equal traffic, ``n / strata`` from each. Label it whole: a part chosen by hand is no longer
    a sample of traffic. Bands nearest the level-2 ``threshold`` come first in the file.
    """
    columns = ["text", "count", "label", "decision", "confidence", "stratum", "human_path"]
    if predicted.empty or n <= 0:
        return pd.DataFrame(columns=columns)
    counts = predicted["count"].to_numpy(dtype=np.float64)
    band = _traffic_bands(predicted["_confidence"].to_numpy(), counts, strata)
    rng, chosen = np.random.default_rng(seed), []
    for b in range(strata):
        rows = np.flatnonzero(band == b)
        k = min(len(rows), round(n / strata))
        if k:
            chosen += rng.choice(rows, k, replace=False, p=counts[rows] / counts[rows].sum()).tolist()
    frame = predicted.iloc[chosen].assign(stratum=band[chosen])
    frame["_near"] = (frame["confidence"] - min(float(threshold), 1.0)).abs()
    return frame.sort_values(["_near", "count"], ascending=[True, False], kind="stable")[columns].reset_index(
        drop=True
    )


def _traffic_bands(confidence: np.ndarray, counts: np.ndarray, strata: int) -> np.ndarray:
    """Band of each query: ``strata`` confidence ranges holding equal shares of the traffic."""
    order = np.argsort(confidence, kind="stable")
    share = np.cumsum(counts[order]) / counts.sum()
    band = np.empty(len(confidence), dtype=int)
    band[order] = np.minimum((share * strata - 1e-9).astype(int), strata - 1)
    return band


def _human_labeled(ctx: RunContext) -> set[str]:
    from shelver.labeling import LabelStore

    with LabelStore(store_path(ctx), create=False) as store:
        return store.human_queries()


def review_frame(predicted: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Abstentions and partial answers (most frequent first), then the least sure full answers,
    from ``predicted_frame``."""
    columns = ["text", "count", "label", "decision", "confidence", "reason", "human_path"]
    frame = predicted.assign(_doubt=(predicted["decision"] != "full").astype(int))
    chosen = frame.sort_values(["_doubt", "confidence"], ascending=[False, True], kind="stable").head(limit)
    chosen = chosen.sort_values(["_doubt", "count"], ascending=[False, False], kind="stable")
    return chosen[columns].reset_index(drop=True)
