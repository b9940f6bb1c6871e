"""The train stage: train_model on the selected (and synthetic) rows, calibrated on valid.csv."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shelver.pipeline.runner import RunContext, read_manifest
from shelver.pipeline.synthesize import SYNTHETIC_FILE


def _train_inputs(ctx: RunContext) -> dict[str, Any]:
    return {"config": ctx.config.train.to_dict()}


def _train_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.data import read_labeled
    from shelver.training import train_model

    select = ctx.stage_dir("select")
    real = read_labeled(select / "train.csv", ctx.taxonomy)
    train = _with_synthetic(ctx, real)
    valid = read_labeled(select / "valid.csv", ctx.taxonomy)
    model = train_model(
        ctx.config.train, ctx.taxonomy, train, progress=ctx.progress, valid=valid, workdir=directory / "work"
    )
    model.save(directory / "model")
    shutil.rmtree(directory / "work", ignore_errors=True)  # the model directory holds a copy
    return {
        "train_rows": len(real),
        "synthetic_rows": len(train) - len(real),
        "valid_rows": len(valid),
        "head": model.head,  # what the selection chose when head.kind is "auto"
    }


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
