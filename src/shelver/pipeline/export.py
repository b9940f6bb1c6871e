"""The export stage: the serving model, with an ONNX encoder when it has a transformer."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from shelver.model_dir import TORCH_FREE_PREFIXES
from shelver.pipeline.runner import RunContext


def inputs(ctx: RunContext) -> dict[str, Any]:
    return {"config": dataclasses.asdict(ctx.config.export)}


def run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    target = directory / "model"
    shutil.copytree(ctx.stage_dir("train") / "model", target)
    _copy_evaluations(ctx, target)
    encoder = ctx.config.train.encoder.name
    if encoder.startswith(TORCH_FREE_PREFIXES):
        note = f"not needed: the encoder {encoder!r} already runs without torch"
        return {"onnx": note, "model": str(target)}
    if not ctx.config.export.onnx:
        return {"onnx": "off (export.onnx=false)", "model": str(target)}
    from shelver.data import read_queries
    from shelver.export import export_onnx

    texts = read_queries(ctx.stage_dir("select") / "valid.csv", "text")
    # unattended: an int8 graph that fails its check gives way to fp32 rather than stop the run
    cfg = ctx.config.export
    result = export_onnx(
        target,
        texts,
        sample=cfg.sample,
        min_agreement=cfg.min_agreement,
        quantize=cfg.quantize,
        int8=cfg.int8,
        progress=ctx.progress,
        fallback_fp32=True,
    )
    summary = {"onnx": result.quantization, "agreement": result.check.describe(), "model": str(target)}
    if result.int8_refused is not None:
        summary["int8_refused"] = result.int8_refused.describe()
    return summary


# the evaluate stage's sets, as the model card names them: llm_heldout is select's valid split
CARD_SETS = {"llm_heldout": "valid", "real_sample": "real_sample"}


def _copy_evaluations(ctx: RunContext, target: Path) -> None:
    """The evaluate stage's figures go into the served model, and onto its card (README.md)."""
    from shelver.model_card import METRICS_FILE
    from shelver.model_dir import refresh_model_card

    for name, card_name in CARD_SETS.items():
        metrics = ctx.stage_dir("evaluate") / name / METRICS_FILE
        if metrics.is_file():
            (target / card_name).mkdir(exist_ok=True)
            shutil.copyfile(metrics, target / card_name / METRICS_FILE)
    refresh_model_card(target)
