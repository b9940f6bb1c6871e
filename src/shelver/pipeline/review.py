"""The review stage: the real queries the model abstained on or doubted, most frequent first."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from shelver.pipeline.runner import RunContext, file_hash
from shelver.pipeline.select import sample_texts, store_path
from shelver.taxonomy import format_path

REVIEW_FILE = "review.csv"


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
    frame.to_csv(directory / REVIEW_FILE, index=False)
    return {
        "rows": len(frame),
        "abstained": int((frame["decision"] != "full").sum()),
        "log_queries": len(queries),
        "labeled_sample_queries_left_out": sum(q in sample for q, _ in logged),
    }


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
