"""The label stage: the log -> a SQLite label store (resumable: its directory is kept)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from shelver.pipeline.runner import RunContext, file_hash


def inputs(ctx: RunContext) -> dict[str, Any]:
    return {
        "taxonomy": file_hash(ctx.taxonomy_path),
        "log": file_hash(ctx.log_path),
        "config": dataclasses.asdict(ctx.config.label),
    }


def run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.labeling import Labeler, LabelStore, read_query_log
    from shelver.labeling.config import label_config

    config = label_config(ctx.config.label)
    labeler = Labeler(ctx.taxonomy, config)
    with LabelStore(directory / "labels.sqlite") as store:
        try:
            summary = labeler.run(store, read_query_log(ctx.log_path), progress=ctx.progress)
        finally:
            labeler.close()
        return {"queries": store.count("queries"), "labels": store.count("labels"), "run": summary.to_dict()}
