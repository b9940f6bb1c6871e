"""The synthesize stage: synthetic queries for the leaves select left under min_examples."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from shelver.pipeline.config import SynthesizeStage, llm_voters
from shelver.pipeline.runner import RunContext, file_hash

SYNTHETIC_FILE = "synthetic.csv"


def inputs(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config.synthesize
    llm = cfg.enabled and "llm" in cfg.generators
    return {
        "config": dataclasses.asdict(cfg),
        "encoder": ctx.config.label.encoder,  # the filters' and the judge's
        "llm": [dataclasses.asdict(v) for v in llm_voters(ctx.config.label)[:1]] if llm else None,
        "labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None,  # leaks
    }


def run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    cfg = ctx.config.synthesize
    if not cfg.enabled:
        return {"enabled": False, "kept": 0}
    from shelver import synthesis as s

    result = _synthesize(ctx, cfg)
    if result.rows:
        s.write_rows(result.rows, ctx.taxonomy, directory / SYNTHETIC_FILE)
    return {
        "enabled": True,
        "kept": len(result.rows),
        "leaves": len(result.paths),
        "generated": result.counts.generated,
        "removed": result.counts.removed,
        "by_source": result.by_source,
    }


def _synthesize(ctx: RunContext, cfg: SynthesizeStage) -> Any:
    """Generate for the leaves under min_examples after select; filter against valid and the sample."""
    from shelver import synthesis as s
    from shelver.encoders import CachedEncoder, make_encoder

    frame, y = s.read_training(ctx.stage_dir("select") / "train.csv", ctx.taxonomy)
    encoder = CachedEncoder(make_encoder(ctx.config.label.encoder))  # one cache: filters and judge
    judge = s.EmbeddingJudge(ctx.taxonomy, encoder) if cfg.judge_top_k > 0 else None
    backend = _label_llm_backend(ctx) if "llm" in cfg.generators else None
    try:
        return s.synthesize(
            ctx.taxonomy,
            frame,
            y,
            s.make_generators(cfg.generators, cfg.seed, backend),
            encoder=encoder,
            min_examples=cfg.min_examples,
            per_class=cfg.per_class,
            avoid=_avoid_texts(ctx),
            judge=judge,
            filters=s.FilterConfig(judge_top_k=cfg.judge_top_k),
            progress=ctx.progress,
        )
    finally:
        if backend is not None:
            backend.close()


def _label_llm_backend(ctx: RunContext) -> Any:
    from shelver.labeling import make_backend

    spec = llm_voters(ctx.config.label)[0]  # load_bootstrap_config checked there is one
    return make_backend(spec.backend, spec.model, spec.options)


def _avoid_texts(ctx: RunContext) -> list[str]:
    """What synthetic rows must not copy: the held-out split and the real labeled sample."""
    from shelver.synthesis import read_avoid

    files = [ctx.stage_dir("select") / "valid.csv"]
    return read_avoid(files + [ctx.labeled_sample] if ctx.labeled_sample else files)
