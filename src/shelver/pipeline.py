"""Cold start: a taxonomy and an unlabeled search log to a served model, in one resumable run.

```
label     the log -> a SQLite label store (LLM or embedding voters; resumable after any kill)
select    the embedding labeler's labels smoothed over the log (labeling/smoothing.py), then labels
          at or above a confidence -> train.csv / valid.csv, split by a hash of the text
synthesize  queries for leaves still under synthesize.min_examples training rows, filtered
train     train_model on train.csv, calibrated (thresholds) on valid.csv
evaluate  held-out LLM-labeled valid and, when given, a real labeled sample: side by side
export    the serving model (ONNX encoder when it has a transformer; optional)
review    the real queries the model abstained on or doubted, most frequent first, to label
```

Each stage writes into ``RUN_DIR/<stage>/`` and finishes by writing ``manifest.json`` (atomically,
last) with the hash of its inputs: its configuration section, the files it reads and the hashes of
the stages before it. A re-run skips a stage whose manifest holds the same hash, so a changed
setting re-runs that stage and every later one; a stage killed midway has no manifest and runs
again (the label store keeps every finished call, so labeling resumes where it stopped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shelver.config import TrainConfig, _build, _parse_override, _read_toml, _set_dotted
from shelver.errors import ConfigError
from shelver.taxonomy import Taxonomy, format_path

MANIFEST = "manifest.json"
# a test hook: "STAGE:SECONDS" sleeps inside STAGE (after it started, before it finishes), so a
# test can kill the run midway through a stage that is otherwise too quick to catch
SLOW_STAGE_ENV = "SHELVER_BOOTSTRAP_SLOW_STAGE"


# ---- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelStage:
    # NAME[=MODEL] per voter, as 'shelver label --backend'; the embedding labeler needs no LLM
    backends: tuple[str, ...] = ("embedding",)
    model: str | None = None
    base_url: str | None = None
    # [BACKEND.]KEY=VALUE, as 'shelver label --option'
    options: tuple[str, ...] = ()
    # encoder for shortlists and the embedding backend
    encoder: str = "minilm"
    shortlist: int = 10
    votes: int = 1
    concurrency: int = 4
    # label only the N most frequent queries (None: all)
    limit: int | None = None


@dataclass(frozen=True)
class SelectStage:
    # machine labels below this confidence are left out (human labels always go in); the embedding
    # labeler's confidence is a softmax over its shortlist: a toss-up between two paths scores ~0.5.
    # With smooth on it applies to the smoothed confidence, a mean over neighbours and so lower: use
    # 0.2 there (grocery, 8k-row log slice, a logistic head on the kept rows, valid L1: 0.0 -> 0.575,
    # 0.2 -> 0.579, 0.3 -> 0.576, 0.5 -> 0.528); without smoothing 0.3-0.5 did best (~0.565)
    min_confidence: float = 0.5
    # share of the selected rows held out (by a hash of the text, so a query never moves split)
    valid_fraction: float = 0.2
    # re-derive the embedding labeler's labels from the log's own embeddings (labeling/smoothing.py):
    # leaf vectors refined by the rows they win, then each row's distribution averaged over its
    # nearest log rows; human and LLM labels are never changed. On grocery's valid split it lifted
    # the labels from L1 / L2 0.535 / 0.375 to 0.604 / 0.456, but the fashion benchmark's model fell
    # (L1 0.945 -> 0.872, bootstrap-smooth-fashion.md): off until a rule for when it helps is measured
    smooth: bool = False
    # weight of the mean of the rows a leaf wins against its description (valid: 1 -> 0.570, 3 -> 0.577)
    smooth_beta: float = 3.0
    # neighbours averaged per row (valid L1: 10 -> 0.587, 20 -> 0.595, 30 -> 0.598)
    smooth_k: int = 30


@dataclass(frozen=True)
class SynthesizeStage:
    # on by default: the leaves a fresh log barely covers are where a bootstrapped model is weakest
    enabled: bool = True
    # leaves with fewer selected training rows than this get synthetic ones (the report's tail: 50)
    min_examples: int = 50
    # queries kept per leaf and generator, at most
    per_class: int = 20
    # attributes and titles (the log's own queries, query-ized) need no model; "llm" writes with
    # the label stage's LLM backend
    generators: tuple[str, ...] = ("attributes", "titles")
    # the judge (label.encoder against the leaf descriptions) must rank the intended leaf in its
    # top K; 3 as in benchmarks/synthesis.py (top 1 removed rows that still taught); 0: no judge
    judge_top_k: int = 3
    seed: int = 0


@dataclass(frozen=True)
class ExportStage:
    # ONNX export of a transformer encoder takes minutes on CPU; a hashing encoder needs none
    onnx: bool = True
    quantize: bool = True


@dataclass(frozen=True)
class ReviewStage:
    # rows in the review CSV: abstentions first in frequency order, then the least sure answers
    limit: int = 500


def _bootstrap_train_default() -> TrainConfig:
    # thresholds for precision 0.9 on the held-out split: abstentions are what the review stage lists
    return dataclasses.replace(
        TrainConfig(), decision=dataclasses.replace(TrainConfig().decision, target_precision=0.9)
    )


@dataclass(frozen=True)
class BootstrapConfig:
    label: LabelStage = field(default_factory=LabelStage)
    select: SelectStage = field(default_factory=SelectStage)
    synthesize: SynthesizeStage = field(default_factory=SynthesizeStage)
    train: TrainConfig = field(default_factory=_bootstrap_train_default)
    export: ExportStage = field(default_factory=ExportStage)
    review: ReviewStage = field(default_factory=ReviewStage)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


_SECTIONS = {
    "label": LabelStage,
    "select": SelectStage,
    "synthesize": SynthesizeStage,
    "export": ExportStage,
    "review": ReviewStage,
}


def load_bootstrap_config(path: str | Path | None = None, overrides: tuple[str, ...] = ()) -> BootstrapConfig:
    """Defaults, then the TOML file (sections label, select, synthesize, train, export, review),
    then overrides."""
    values: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    for item in overrides:
        _set_dotted(values, *_parse_override(item))
    unknown = set(values) - {"train", *_SECTIONS}
    if unknown:
        raise ConfigError(
            f"unknown bootstrap config section {sorted(unknown)[0]!r}; "
            f"valid sections: {', '.join(['label', 'select', 'synthesize', 'train', 'export', 'review'])}"
        )
    sections = {name: _section(cls, values.get(name, {}), name) for name, cls in _SECTIONS.items()}
    train = _build(TrainConfig, _with_train_defaults(values.get("train", {})), "train.")
    config = BootstrapConfig(train=train, **sections)
    _check_generators(config)  # before labeling, not hours later when the stage starts
    if config.select.smooth:
        _smoothing(config)  # its ConfigError too
    return config


def _with_train_defaults(values: dict[str, Any]) -> dict[str, Any]:
    decision = dict(values.get("decision", {}))
    decision.setdefault("target_precision", 0.9)
    return {**values, "decision": decision}


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    built = _build(cls, values, f"{name}.")
    tuples = {
        f.name: _as_tuple(getattr(built, f.name)) for f in dataclasses.fields(cls) if "tuple" in str(f.type)
    }
    return dataclasses.replace(built, **tuples)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    # --set synthesize.generators=llm arrives as one string, not as the letters of one
    return (value,) if isinstance(value, str) else tuple(value)


def _check_generators(config: BootstrapConfig) -> None:
    from shelver.synthesis import GENERATORS

    generators = config.synthesize.generators
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ConfigError(
            f"synthesize.generators has {unknown[0]!r}; use some of {', '.join(GENERATORS)} "
            '(e.g. --set \'synthesize.generators=["attributes", "titles"]\')'
        )
    if config.synthesize.enabled and "llm" in generators and not _llm_voters(config.label):
        raise ConfigError(
            "synthesize.generators has 'llm', which writes with the label stage's LLM backend, but "
            f"label.backends is {list(config.label.backends)}; add --backend openai or --backend "
            "llamacpp, or drop 'llm' from synthesize.generators"
        )


def _llm_voters(label: LabelStage) -> list[Any]:
    from shelver.labeling.config import voters_from_cli

    voters = voters_from_cli(label.backends, label.model, label.base_url, label.options)
    return [v for v in voters if v.backend != "embedding"]


# ---- the run ------------------------------------------------------------------------------------
@dataclass
class RunContext:
    taxonomy_path: Path
    log_path: Path
    out: Path
    config: BootstrapConfig
    labeled_sample: Path | None = None
    progress: bool = True
    hashes: dict[str, str] = field(default_factory=dict)
    _taxonomy: Taxonomy | None = None

    @property
    def taxonomy(self) -> Taxonomy:
        if self._taxonomy is None:
            self._taxonomy = Taxonomy.load(self.taxonomy_path)
        return self._taxonomy

    def stage_dir(self, name: str) -> Path:
        return self.out / name


@dataclass(frozen=True)
class Stage:
    name: str
    # what the stage's hash covers besides the hashes of the stages before it
    inputs: Callable[[RunContext], dict[str, Any]]
    # does the work into its directory; returns a summary for the manifest
    run: Callable[[RunContext, Path], dict[str, Any]]
    # keep the directory when re-running (the label store resumes); others start empty
    keep_dir: bool = False


STAGES: dict[str, Stage] = {}
# the order of every stage the pipeline knows; one that is not registered is skipped and named as such
ORDER = ("label", "select", "synthesize", "train", "evaluate", "export", "review")


def register(stage: Stage) -> Stage:
    if stage.name not in ORDER:
        raise ConfigError(f"stage {stage.name!r} has no place in the pipeline order {', '.join(ORDER)}")
    STAGES[stage.name] = stage
    return stage


@dataclass
class StageResult:
    name: str
    status: str  # "ran", "skipped" (hash unchanged) or "unavailable" (not registered yet)
    seconds: float = 0.0


def run_pipeline(
    ctx: RunContext, start_from: str | None = None, echo: Callable[[str], None] = print
) -> list[StageResult]:
    """Run every stage in order; a stage whose manifest matches its hash is skipped."""
    _check_from(start_from)
    ctx.out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(ctx.out / "config.json", _resolved(ctx))  # before anything runs
    forced = False
    results = []
    for name in ORDER:
        forced = forced or name == start_from
        if name not in STAGES:
            echo(f"[{name}] not available in this version: skipped")
            results.append(StageResult(name, "unavailable"))
            continue
        results.append(_run_stage(ctx, STAGES[name], forced, echo))
    return results


def _check_from(start_from: str | None) -> None:
    if start_from is None:
        return
    if start_from not in ORDER:
        raise ConfigError(f"--from {start_from!r} is not a stage; stages: {', '.join(ORDER)}")
    if start_from not in STAGES:
        raise ConfigError(f"--from {start_from!r}: that stage is not available in this version")


def _resolved(ctx: RunContext) -> dict[str, Any]:
    return {
        "taxonomy": str(ctx.taxonomy_path),
        "log": str(ctx.log_path),
        "labeled_sample": str(ctx.labeled_sample) if ctx.labeled_sample else None,
        "stages": [n for n in ORDER if n in STAGES],
        "config": ctx.config.to_dict(),
    }


def _run_stage(ctx: RunContext, stage: Stage, forced: bool, echo: Callable[[str], None]) -> StageResult:
    inputs = {"stage": stage.name, "upstream": dict(ctx.hashes), **stage.inputs(ctx)}
    digest = _hash(inputs)
    ctx.hashes[stage.name] = digest
    directory = ctx.stage_dir(stage.name)
    old = read_manifest(directory)
    if not forced and old is not None and old.get("hash") == digest:
        echo(f"[{stage.name}] up to date ({digest[:12]}): skipped")
        return StageResult(stage.name, "skipped")
    _prepare(directory, stage.keep_dir)
    echo(f"[{stage.name}] running ({'forced' if forced else 'inputs changed' if old else 'not finished'})")
    started = time.perf_counter()
    summary = stage.run(ctx, directory)
    _slow_down(stage.name)
    seconds = time.perf_counter() - started
    manifest = {
        "stage": stage.name,
        "hash": digest,
        "inputs": inputs,
        "summary": summary,
        "outputs": _output_hashes(directory),
        "seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json_atomic(directory / MANIFEST, manifest)  # last: a killed stage has none and re-runs
    echo(f"[{stage.name}] done in {seconds:.1f}s")
    return StageResult(stage.name, "ran", seconds)


def _prepare(directory: Path, keep: bool) -> None:
    (directory / MANIFEST).unlink(missing_ok=True)
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def _slow_down(name: str) -> None:
    spec = os.environ.get(SLOW_STAGE_ENV, "")
    stage, _, seconds = spec.partition(":")
    if stage == name and seconds:
        time.sleep(float(seconds))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # cannot happen with the atomic write, but a broken file must re-run, not crash


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as file:
        file.write(json.dumps(payload, indent=2, default=str) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _output_hashes(directory: Path) -> dict[str, str]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    # the label store changes on every open (WAL); its content is what 'select' hashes
    return {str(p.relative_to(directory)): file_hash(p) for p in files if ".sqlite" not in p.name}


# ---- label --------------------------------------------------------------------------------------
def _label_inputs(ctx: RunContext) -> dict[str, Any]:
    return {
        "taxonomy": file_hash(ctx.taxonomy_path),
        "log": file_hash(ctx.log_path),
        "config": dataclasses.asdict(ctx.config.label),
    }


def _label_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.labeling import LabelConfig, Labeler, LabelStore, read_query_log
    from shelver.labeling.config import voters_from_cli

    cfg = ctx.config.label
    config = LabelConfig(
        voters=voters_from_cli(cfg.backends, cfg.model, cfg.base_url, cfg.options),
        encoder=cfg.encoder,
        shortlist=cfg.shortlist,
        samples=cfg.votes,
        concurrency=cfg.concurrency,
        limit=cfg.limit,
    )
    labeler = Labeler(ctx.taxonomy, config)
    with LabelStore(directory / "labels.sqlite") as store:
        try:
            summary = labeler.run(store, read_query_log(ctx.log_path), progress=ctx.progress)
        finally:
            labeler.close()
        return {"queries": store.count("queries"), "labels": store.count("labels"), "run": summary.to_dict()}


# ---- select -------------------------------------------------------------------------------------
def store_path(ctx: RunContext) -> Path:
    return ctx.stage_dir("label") / "labels.sqlite"


def _select_inputs(ctx: RunContext) -> dict[str, Any]:
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
    return _hash(rows)


def _select_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.labeling import LabelStore, export_frame

    cfg = ctx.config.select
    with LabelStore(store_path(ctx), create=False) as store:
        # smoothing needs every labeled row (its neighbours); the threshold comes after it
        frame, skipped = export_frame(store, 0.0 if cfg.smooth else cfg.min_confidence)
    frame, held_out = _without_sample(frame, ctx.labeled_sample)
    frame, smoothed = _smoothed(ctx, frame) if cfg.smooth else (frame, {"enabled": False})
    frame = _confident(frame, cfg.min_confidence, skipped)
    is_valid = frame["text"].map(lambda t: text_bucket(t) < cfg.valid_fraction).astype(bool)
    train, valid = frame[~is_valid], frame[is_valid]
    _require_rows(train, valid, cfg)
    train.to_csv(directory / "train.csv", index=False)
    valid.to_csv(directory / "valid.csv", index=False)
    return {
        "train_rows": len(train),
        "valid_rows": len(valid),
        "left_out": skipped,
        "labeled_sample_queries_left_out": held_out,
        "by_source": frame["source"].value_counts().to_dict(),
        "smooth": smoothed,
    }


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
    dist = smooth(embeddings, index.vectors, np.where(movable, -1, leaves), _smoothing(ctx.config))
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


def _smoothing(config: BootstrapConfig) -> Any:
    """Smoothing with the select stage's beta and k and the embedding backend's own softmax."""
    from shelver.labeling.config import voters_from_cli
    from shelver.labeling.smoothing import Smoothing

    label, select = config.label, config.select
    voters = voters_from_cli(label.backends, label.model, label.base_url, label.options)
    options = next((v.options for v in voters if v.backend == "embedding"), {})
    temperature = float(options.get("temperature", Smoothing.temperature))
    return Smoothing(select.smooth_beta, select.smooth_k, label.shortlist, temperature)


def text_bucket(text: str) -> float:
    """A stable number in [0, 1) per text: the split never depends on row order or on a seed."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def _without_sample(frame: pd.DataFrame, sample: Path | None) -> tuple[pd.DataFrame, int]:
    """The labeled sample's queries never train the model that is scored on them."""
    if sample is None:
        return frame, 0
    from shelver.data import read_table
    from shelver.labeling import normalize_query

    sample_texts = {normalize_query(t) for t in read_table(sample)["text"].astype(str)}
    inside = frame["text"].isin(sample_texts)
    return frame[~inside].reset_index(drop=True), int(inside.sum())


def _require_rows(train: pd.DataFrame, valid: pd.DataFrame, cfg: SelectStage) -> None:
    from shelver.errors import DataError

    if len(train) < 2 or len(valid) < 1:
        raise DataError(
            f"only {len(train)} training and {len(valid)} validation rows passed select.min_confidence="
            f"{cfg.min_confidence}; lower it (--set select.min_confidence=0.3) or label more of the log"
        )


# ---- synthesize ---------------------------------------------------------------------------------
SYNTHETIC_FILE = "synthetic.csv"


def _synthesize_inputs(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config.synthesize
    llm = cfg.enabled and "llm" in cfg.generators
    return {
        "config": dataclasses.asdict(cfg),
        "encoder": ctx.config.label.encoder,  # the filters' and the judge's
        "llm": [dataclasses.asdict(v) for v in _llm_voters(ctx.config.label)[:1]] if llm else None,
        "labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None,  # leaks
    }


def _synthesize_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
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
            filters=s.FilterConfig(judge_top_k=max(cfg.judge_top_k, 1)),
            progress=ctx.progress,
        )
    finally:
        if backend is not None:
            backend.close()


def _label_llm_backend(ctx: RunContext) -> Any:
    from shelver.labeling import make_backend

    spec = _llm_voters(ctx.config.label)[0]  # load_bootstrap_config checked there is one
    return make_backend(spec.backend, spec.model, spec.options)


def _avoid_texts(ctx: RunContext) -> list[str]:
    """What synthetic rows must not copy: the held-out split and the real labeled sample."""
    from shelver.synthesis import read_avoid

    files = [ctx.stage_dir("select") / "valid.csv"]
    return read_avoid(files + [ctx.labeled_sample] if ctx.labeled_sample else files)


# ---- train --------------------------------------------------------------------------------------
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
        "head": ctx.config.train.head.kind,
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


# ---- evaluate -----------------------------------------------------------------------------------
def _evaluate_inputs(ctx: RunContext) -> dict[str, Any]:
    return {"labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None}


def _evaluate_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.data import read_labeled
    from shelver.model_dir import load_model
    from shelver.report import evaluate, write_report

    model = load_model(ctx.stage_dir("train") / "model").set_params(progress=ctx.progress)
    sets = {"llm_heldout": read_labeled(ctx.stage_dir("select") / "valid.csv", ctx.taxonomy)}
    if ctx.labeled_sample is not None:
        sets["real_sample"] = read_labeled(ctx.labeled_sample, ctx.taxonomy)
    metrics = {}
    for name, data in sets.items():
        evaluation = evaluate(model, data)
        write_report(evaluation, directory / name, title=f"bootstrap: {name} ({data.origin})")
        metrics[name] = evaluation.metrics
    table = comparison(metrics)
    (directory / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    (directory / "report.md").write_text(render_comparison(table))
    return {"sets": {k: v["n"] for k, v in metrics.items()}}


COMPARED = (
    ("L1 accuracy", ("level1", "accuracy")),
    ("L1 macro-F1", ("level1", "macro_f1")),
    ("L2 accuracy", ("level2", "accuracy")),
    ("L2 macro-F1", ("level2", "macro_f1")),
    ("hierarchical F1", ("hierarchical_f1",)),
    ("L1 coverage @ precision 0.9", ("coverage_at_precision", "level1", "0.9")),
    ("L2 coverage @ precision 0.9", ("coverage_at_precision", "level2", "0.9")),
    ("L2 ECE", ("ece", "level2")),
    ("answered (full path)", ("selective", "level2", "coverage")),
)


def comparison(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per metric: each evaluation set, and the gap (real sample minus LLM-labeled)."""
    rows = []
    for label, keys in COMPARED:
        row: dict[str, Any] = {"metric": label}
        for name, values in metrics.items():
            row[name] = _dig(values, keys)
        if "real_sample" in row and row["real_sample"] is not None and row["llm_heldout"] is not None:
            row["gap"] = row["real_sample"] - row["llm_heldout"]
        rows.append(row)
    return {"n": {k: v["n"] for k, v in metrics.items()}, "rows": rows}


def _dig(values: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return None if values is None else float(values)


def render_comparison(table: dict[str, Any]) -> str:
    sets = list(table["n"])
    has_gap = "real_sample" in sets
    header = [
        "metric",
        *[f"{s} (n={table['n'][s]:,})" for s in sets],
        *(["gap (real - LLM)"] if has_gap else []),
    ]
    lines = [
        "# bootstrap: how good is the model?",
        "",
        "`llm_heldout`: the held-out share of the LLM-labeled log (labels from the labeler, not people).",
        "`real_sample`: the labeled sample of real queries, when given (never trained on).",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in table["rows"]:
        cells = [_fmt(row.get(s)) for s in sets] + ([_fmt(row.get("gap"), signed=True)] if has_gap else [])
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


# ---- export -------------------------------------------------------------------------------------
def _export_inputs(ctx: RunContext) -> dict[str, Any]:
    return {"config": dataclasses.asdict(ctx.config.export)}


def _export_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    target = directory / "model"
    shutil.copytree(ctx.stage_dir("train") / "model", target)
    if ctx.config.train.encoder.name.startswith("hashing"):
        return {"onnx": "not needed: the hashing encoder already runs without torch", "model": str(target)}
    if not ctx.config.export.onnx:
        return {"onnx": "off (export.onnx=false)", "model": str(target)}
    from shelver.data import read_queries
    from shelver.export import export_onnx

    texts = read_queries(ctx.stage_dir("select") / "valid.csv", "text")
    # unattended: an int8 graph that fails its check gives way to fp32 rather than stop the run
    result = export_onnx(
        target, texts, quantize=ctx.config.export.quantize, progress=ctx.progress, fallback_fp32=True
    )
    summary = {"onnx": result.quantization, "agreement": result.check.describe(), "model": str(target)}
    if result.int8_refused is not None:
        summary["int8_refused"] = result.int8_refused.describe()
    return summary


# ---- review -------------------------------------------------------------------------------------
REVIEW_FILE = "review.csv"


def _review_inputs(ctx: RunContext) -> dict[str, Any]:
    return {"config": dataclasses.asdict(ctx.config.review), "log": file_hash(ctx.log_path)}


def _review_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.labeling import read_query_log
    from shelver.model_dir import load_model

    model = load_model(ctx.stage_dir("train") / "model").set_params(progress=ctx.progress)
    human = _human_labeled(ctx)  # once: read per log query, it made the stage quadratic
    queries = [(q, c) for q, c in read_query_log(ctx.log_path) if q not in human]
    frame = review_frame(model, queries, ctx.config.review.limit)
    frame.to_csv(directory / REVIEW_FILE, index=False)
    return {
        "rows": len(frame),
        "abstained": int((frame["decision"] != "full").sum()),
        "log_queries": len(queries),
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


for _stage in (
    Stage("label", _label_inputs, _label_run, keep_dir=True),
    Stage("select", _select_inputs, _select_run),
    Stage("synthesize", _synthesize_inputs, _synthesize_run),
    Stage("train", _train_inputs, _train_run),
    Stage("evaluate", _evaluate_inputs, _evaluate_run),
    Stage("export", _export_inputs, _export_run),
    Stage("review", _review_inputs, _review_run),
):
    register(_stage)
