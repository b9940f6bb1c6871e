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


def _review_inputs(ctx: RunContext) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(ctx.config.review),
        "log": file_hash(ctx.log_path),
        "labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None,
    }


def _review_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.labeling import read_query_log
    from shelver.model_dir import load_model

    model = load_model(ctx.stage_dir("train") / "model").set_params(progress=ctx.progress)
    human = _human_labeled(ctx)  # once: read per log query, it made the stage quadratic
    sample = sample_texts(ctx.labeled_sample)  # real labels already: nothing to review there
    logged = read_query_log(ctx.log_path)
    queries = [(q, c) for q, c in logged if q not in human and q not in sample]
    frame = review_frame(model, queries, ctx.config.review.limit)
    write_table(frame, directory / REVIEW_FILE)
    cfg = ctx.config.review
    calibration = calibration_sample(model, queries, cfg.calibration_rows, cfg.strata, ctx.config.train.seed)
    write_table(calibration, directory / SAMPLE_FILE)
    return {
        "rows": len(frame),
        "abstained": int((frame["decision"] != "full").sum()),
        "log_queries": len(queries),
        "labeled_sample_queries_left_out": sum(q in sample for q, _ in logged),
        "calibration_sample_rows": len(calibration),
    }


def calibration_sample(
    model: Any, queries: list[tuple[str, int]], n: int, strata: int, seed: int
) -> pd.DataFrame:
    """Queries to label next so the thresholds can be certified at more coverage.

    A certificate holds for the traffic its labels were drawn from, so this is a sample of
    served traffic: queries drawn with probability proportional to their count (frequent queries
    first in expectation), stratified into ``strata`` bands of the model's full-path confidence
    of equal traffic, ``n / strata`` from each. Label it whole: a part chosen by hand is no longer
    a sample of traffic. Bands nearest the level-2 threshold come first in the file.
    """
    columns = ["text", "count", "label", "decision", "confidence", "stratum", "human_path"]
    if not queries or n <= 0:
        return pd.DataFrame(columns=columns)
    texts, counts = [q for q, _ in queries], np.array([c for _, c in queries], dtype=np.float64)
    predictions = model.classify(texts)
    confidence = np.array([float(p.confidence[-1]) for p in predictions])
    band = _traffic_bands(confidence, counts, strata)
    rng, chosen = np.random.default_rng(seed), []
    for b in range(strata):
        rows = np.flatnonzero(band == b)
        k = min(len(rows), round(n / strata))
        if k:
            chosen += rng.choice(rows, k, replace=False, p=counts[rows] / counts[rows].sum()).tolist()
    frame = pd.DataFrame(
        {
            "text": [texts[i] for i in chosen],
            "count": counts[chosen].astype(int),
            "label": [format_path(predictions[i].candidate) for i in chosen],
            "decision": [predictions[i].decision for i in chosen],
            "confidence": np.round(confidence[chosen], 6),
            "stratum": band[chosen],
            "human_path": "",
        }
    )
    threshold = min(float(model.thresholds_.level2), 1.0)
    frame["_near"] = (frame["confidence"] - threshold).abs()
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


def review_frame(model: Any, queries: list[tuple[str, int]], limit: int) -> pd.DataFrame:
    """Abstentions and partial answers (most frequent first), then the least sure full answers.

    ``label`` is the model's best path, so ``=`` in ``human_path`` accepts it on import."""
    columns = ["text", "count", "label", "decision", "confidence", "reason", "human_path"]
    if not queries:
        return pd.DataFrame(columns=columns)
    predictions = model.classify([q for q, _ in queries])
    frame = pd.DataFrame(
        {
            "text": [q for q, _ in queries],
            "count": [c for _, c in queries],
            "label": [format_path(p.candidate) for p in predictions],
            "decision": [p.decision for p in predictions],
            "confidence": [round(float(p.confidence[-1]), 6) for p in predictions],  # of the whole path
            "reason": [p.reason for p in predictions],
            "human_path": "",
        }
    )
    frame["_doubt"] = (frame["decision"] != "full").astype(int)
    chosen = frame.sort_values(["_doubt", "confidence"], ascending=[False, True], kind="stable").head(limit)
    chosen = chosen.sort_values(["_doubt", "count"], ascending=[False, False], kind="stable")
    return chosen[columns].reset_index(drop=True)
