"""The select stage: the store's labels (optionally smoothed), less the labeled sample, at or above
a confidence -> train.csv / valid.csv, split by a hash of the text."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shelver.data import write_table
from shelver.pipeline.config import SelectStage, smoothing_settings
from shelver.pipeline.runner import RunContext, file_hash, payload_hash
from shelver.taxonomy import Taxonomy


def store_path(ctx: RunContext) -> Path:
    return ctx.stage_dir("label") / "labels.sqlite"


def inputs(ctx: RunContext) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(ctx.config.select),
        "labels": _labels_digest(store_path(ctx)),  # human labels imported since change this
        "labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None,
    }


def _labels_digest(path: Path) -> str | None:
    from shelver.labeling import LabelStore

    if not path.is_file():
        return None
    with LabelStore(path, create=False) as store:
        rows = sorted((r["query"], r["status"], r["path"] or "", r["source"] or "") for r in store.labels())
    return payload_hash(rows)


def run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.labeling import LabelStore, export_frame

    cfg = ctx.config.select
    with LabelStore(store_path(ctx), create=False) as store:
        # smoothing needs every labeled row (its neighbours); the threshold comes after it
        frame, skipped = export_frame(store, 0.0 if cfg.smooth != "off" else cfg.min_confidence)
    frame, smoothed = _maybe_smoothed(ctx, frame)
    frame, held_out = _without_sample(frame, ctx.labeled_sample)
    threshold = cfg.smooth_min_confidence if smoothed["enabled"] else cfg.min_confidence
    frame = _confident(frame, threshold, skipped)
    is_valid = frame["text"].map(lambda t: text_bucket(t) < cfg.valid_fraction).astype(bool)
    train, valid = frame[~is_valid], frame[is_valid]
    _require_rows(train, valid, cfg)
    write_table(train, directory / "train.csv")
    write_table(valid, directory / "valid.csv")
    return {
        "train_rows": len(train),
        "valid_rows": len(valid),
        "left_out": skipped,
        "labeled_sample_queries_left_out": held_out,
        "by_source": frame["source"].value_counts().to_dict(),
        "smooth": smoothed,
    }


def _maybe_smoothed(ctx: RunContext, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The labels, smoothed when ``select.smooth`` is on, or auto and the labeled sample says so."""
    mode = ctx.config.select.smooth
    if mode == "off" or (mode == "auto" and ctx.labeled_sample is None):
        return frame, {"enabled": False, "mode": mode}
    smoothed, info = _smoothed(ctx, frame)
    if mode == "on":
        return smoothed, {**info, "mode": mode}
    agreement = sample_agreement(frame, smoothed, ctx.labeled_sample, ctx.taxonomy)
    keep = agreement["smoothed"] > agreement["raw"]
    return (smoothed if keep else frame), {**info, "enabled": keep, "mode": mode, "sample": agreement}


def sample_agreement(raw: pd.DataFrame, smoothed: pd.DataFrame, sample: Path, tree: Taxonomy) -> dict:
    """Full-path accuracy of the raw and of the smoothed labels on the labeled sample's queries."""
    from shelver.data import read_labeled
    from shelver.text_keys import text_key

    gold = read_labeled(sample, tree)
    truth = {text_key(t): tuple(p) for t, p in zip(gold.texts, gold.y, strict=True)}
    rows = raw["text"].isin(truth).to_numpy()
    levels = list(tree.levels)
    expected = [truth[t] for t in raw.loc[rows, "text"]]

    def accuracy(frame: pd.DataFrame) -> float:
        paths = list(frame.loc[rows, levels].itertuples(index=False, name=None))
        return (
            round(float(np.mean([p == e for p, e in zip(paths, expected, strict=True)])), 4) if paths else 0.0
        )

    return {"rows": int(rows.sum()), "raw": accuracy(raw), "smoothed": accuracy(smoothed)}


def _confident(frame: pd.DataFrame, min_confidence: float, skipped: dict[str, int]) -> pd.DataFrame:
    """Human labels always; machine labels at or above ``min_confidence`` (counted when left out)."""
    keep = (frame["source"] == "human") | (frame["confidence"] >= min_confidence)
    skipped["below_threshold"] += int((~keep).sum())
    return frame[keep].reset_index(drop=True)


def _smoothed(ctx: RunContext, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The embedding labeler's rows re-labeled by smoothing; human and LLM rows anchor it unchanged."""
    from shelver.labeling.smoothing import EMBEDDING_SOURCE, smooth

    movable = (frame["source"] == EMBEDDING_SOURCE).to_numpy()
    if not movable.any():
        return frame, {"enabled": True, "rows": 0, "paths_changed": 0}
    index = _label_index(ctx)
    levels = list(ctx.taxonomy.levels)
    leaves = np.array([ctx.taxonomy.leaf_index[tuple(p)] for p in frame[levels].itertuples(index=False)])
    embeddings = index.encoder.encode(frame["text"].tolist(), progress=ctx.progress)
    dist = smooth(embeddings, index.vectors, np.where(movable, -1, leaves), smoothing_settings(ctx.config))
    out = _relabeled(frame, dist, movable, ctx.taxonomy)
    changed = int((dist.argmax(axis=1) != leaves)[movable].sum())
    return out, {"enabled": True, "rows": int(movable.sum()), "paths_changed": changed}


def _relabeled(frame: pd.DataFrame, dist: np.ndarray, movable: np.ndarray, tree: Taxonomy) -> pd.DataFrame:
    """The ``movable`` rows get the smoothed arg-max path, its probability and a source saying so."""
    from shelver.labeling.smoothing import SMOOTHED_SOURCE

    out = frame.copy()
    out.loc[movable, list(tree.levels)] = [list(tree.paths[i]) for i in dist[movable].argmax(axis=1)]
    out.loc[movable, "confidence"] = dist[movable].max(axis=1).round(6)
    out.loc[movable, "source"] = SMOOTHED_SOURCE
    return out


def _label_index(ctx: RunContext) -> Any:
    """The path index the label stage's embedding backend scored with (same encoder, same texts)."""
    from shelver.labeling import PathIndex

    return PathIndex(ctx.taxonomy, ctx.config.label.encoder)


def text_bucket(text: str) -> float:
    """A stable number in [0, 1) per text: the split never depends on row order or on a seed."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def _without_sample(frame: pd.DataFrame, sample: Path | None) -> tuple[pd.DataFrame, int]:
    """The labeled sample's queries never train the model that is scored on them."""
    if sample is None:
        return frame, 0
    inside = frame["text"].isin(sample_texts(sample))
    return frame[~inside].reset_index(drop=True), int(inside.sum())


def sample_texts(sample: Path | None) -> set[str]:
    """The labeled sample's queries, normalized as the log's are (none without a sample)."""
    if sample is None:
        return set()
    from shelver.data import read_table
    from shelver.text_keys import text_key

    return {text_key(t) for t in read_table(sample)["text"].astype(str)}


def _require_rows(train: pd.DataFrame, valid: pd.DataFrame, cfg: SelectStage) -> None:
    from shelver.errors import DataError

    if len(train) < 2 or len(valid) < 1:
        raise DataError(
            f"only {len(train)} training and {len(valid)} validation rows passed select.min_confidence="
            f"{cfg.min_confidence}; lower it (--set select.min_confidence=0.3) or label more of the log"
        )
