"""The train stage: train_model on the selected (and synthetic) rows, calibrated on valid.csv."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shelver.calibration import HUMAN
from shelver.crossfit import FOLDS, calibrate_out_of_fold
from shelver.pipeline.runner import RunContext, file_hash, read_manifest
from shelver.pipeline.synthesize import SYNTHETIC_FILE


def inputs(ctx: RunContext) -> dict[str, Any]:
    return {
        "config": ctx.config.train.to_dict(),
        "labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None,
    }


def run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    """Train on the selected, synthetic and human-labeled rows. With enough human labels (the
    labeled sample and imported ones), they also fit the thresholds, cross-fitted; else the
    LLM-labeled valid split does, and the thresholds are unverified."""
    from shelver.calibration import describe_fitted_on
    from shelver.data import read_labeled
    from shelver.training import train_model

    select = ctx.stage_dir("select")
    real = read_labeled(select / "train.csv", ctx.taxonomy)
    train = _with_sample(ctx, _with_synthetic(ctx, real))
    valid = read_labeled(select / "valid.csv", ctx.taxonomy)
    model = train_model(
        ctx.config.train, ctx.taxonomy, train, progress=ctx.progress, valid=valid, workdir=directory / "work"
    )
    human = train.source.count(HUMAN)
    if human >= FOLDS:
        calibrate_out_of_fold(model, train.texts, train.y, train.source, seed=ctx.config.train.seed)
    model.save(directory / "model")
    shutil.rmtree(directory / "work", ignore_errors=True)  # the model directory holds a copy
    record_round(ctx, model.calibrated_on_, human)
    return {
        "train_rows": len(real),
        "synthetic_rows": _synthetic(train),
        "sample_rows": len(train) - len(real) - _synthetic(train),
        "human_rows": human,  # the sample's and any imported human labels among the selected rows
        "valid_rows": len(valid),
        "head": model.head,  # what the selection chose when head.kind is "auto"
        "thresholds": describe_fitted_on(model.calibrated_on_),
    }


def _synthetic(data: Any) -> int:
    return sum(s.startswith("synthetic") for s in data.source)


def _with_sample(ctx: RunContext, train: Any) -> Any:
    """The training rows, then the labeled sample's (human labels outrank the machine's: select
    already left the sample's queries out of the machine-labeled rows)."""
    if ctx.labeled_sample is None:
        return train
    import numpy as np

    from shelver.data import LabeledData, read_labeled
    from shelver.text_keys import text_key

    sample = read_labeled(ctx.labeled_sample, ctx.taxonomy)
    texts = [text_key(t) for t in sample.texts]
    return LabeledData(
        train.texts + texts,
        np.vstack([train.y, sample.y]),
        train.source + [HUMAN] * len(texts),
        f"{train.origin} + {sample.origin}",
    )


ROUNDS_FILE = "rounds.jsonl"


def record_round(ctx: RunContext, fitted_on: dict[str, Any] | None, human: int) -> None:
    """One line per trained round in ``OUT/rounds.jsonl``: how many human labels, and the
    precision and coverage they certified, so each bootstrap -> review -> labels import ->
    bootstrap round shows whether the curve rises."""
    levels = (fitted_on or {}).get("levels", {})
    line = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "human_rows": human,
        "verified": bool(fitted_on and fitted_on.get("human")),
        "target_precision": (fitted_on or {}).get("target_precision"),
        **{
            level: {k: fit[k] for k in ("coverage", "precision", "lower_bound", "certified")}
            for level, fit in levels.items()
        },
    }
    with open(ctx.out / ROUNDS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def _with_synthetic(ctx: RunContext, real: Any) -> Any:
    """The selected rows, then the synthesize stage's rows when its manifest says it kept some."""
    import numpy as np

    from shelver.data import LabeledData, read_labeled

    manifest = read_manifest(ctx.stage_dir("synthesize"))
    if manifest is None or not manifest.get("summary", {}).get("kept"):
        return real
    extra = read_labeled(ctx.stage_dir("synthesize") / SYNTHETIC_FILE, ctx.taxonomy)
    return LabeledData(
        real.texts + extra.texts,
        np.vstack([real.y, extra.y]),
        real.source + extra.source,
        f"{real.origin} + {extra.origin}",
    )
