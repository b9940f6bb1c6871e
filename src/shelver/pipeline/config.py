"""The bootstrap configuration: a frozen section per configurable stage (train is TrainConfig), read
from TOML and --set overrides, checked at load."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelver.config import TrainConfig, build, parse_override, read_toml, set_dotted
from shelver.errors import ConfigError


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
    # Without smoothing 0.3-0.5 did best (grocery, 8k-row log slice, valid L1 ~0.565)
    min_confidence: float = 0.5
    # share of the selected rows held out (by a hash of the text, so a query never moves split)
    valid_fraction: float = 0.2
    # re-derive the embedding labeler's labels from the log's own embeddings (labeling/smoothing.py):
    # leaf vectors refined by the rows they win, then each row's distribution averaged over its
    # nearest log rows; human and LLM labels are never changed. It helps where the zero-shot labels
    # are weak and hurts where they are good (bootstrapped L1: grocery 0.571 -> 0.602, fashion
    # 0.945 -> 0.872, bootstrap-smooth*.md), so "auto" keeps it only when a --labeled-sample shows
    # the smoothed labels of the sample's own log queries to be more accurate (no sample: off);
    # "on" and "off" force it
    smooth: str = "auto"
    # min_confidence for smoothed labels: a mean over neighbours, so lower than a raw confidence
    # (median ~0.4). Grocery, 8k-row log slice, valid L1: 0.0 -> 0.575, 0.2 -> 0.579, 0.5 -> 0.528
    smooth_min_confidence: float = 0.2
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
    # rows in calibration_sample.csv, a traffic-weighted sample stratified by confidence: 300
    # labeled queries certified precision 0.9 on grocery query-form traffic at most of the point
    # estimate's coverage (benchmarks/results/real_query_confidence.md)
    calibration_rows: int = 300
    # confidence strata of calibration_sample.csv (equal traffic each)
    strata: int = 5


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
    values: dict[str, Any] = read_toml(Path(path)) if path is not None else {}
    for item in overrides:
        set_dotted(values, *parse_override(item))
    unknown = set(values) - {"train", *_SECTIONS}
    if unknown:
        raise ConfigError(
            f"unknown bootstrap config section {sorted(unknown)[0]!r}; "
            f"valid sections: {', '.join(['label', 'select', 'synthesize', 'train', 'export', 'review'])}"
        )
    _smooth_mode(values.get("select", {}))
    sections = {name: _section(cls, values.get(name, {}), name) for name, cls in _SECTIONS.items()}
    train = build(TrainConfig, _with_train_defaults(values.get("train", {})), "train.")
    config = BootstrapConfig(train=train, **sections)
    _check_generators(config)  # before labeling, not hours later when the stage starts
    if config.select.smooth != "off":
        _smoothing(config)  # its ConfigError too
    return config


SMOOTH_MODES = ("auto", "on", "off")


def _smooth_mode(select: dict[str, Any]) -> None:
    """``select.smooth``: auto, on or off (true / false, from before "auto", mean on / off)."""
    value = select.get("smooth", "auto")
    if isinstance(value, bool):
        select["smooth"] = value = "on" if value else "off"
    if value not in SMOOTH_MODES:
        raise ConfigError(f"select.smooth is {value!r}; choose one of {', '.join(SMOOTH_MODES)}")


def _with_train_defaults(values: dict[str, Any]) -> dict[str, Any]:
    decision = dict(values.get("decision", {}))
    decision.setdefault("target_precision", 0.9)
    return {**values, "decision": decision}


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    built = build(cls, values, f"{name}.")
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


def _smoothing(config: BootstrapConfig) -> Any:
    """Smoothing with the select stage's beta and k and the embedding backend's own softmax."""
    from shelver.labeling.config import voters_from_cli
    from shelver.labeling.smoothing import Smoothing

    label, select = config.label, config.select
    voters = voters_from_cli(label.backends, label.model, label.base_url, label.options)
    options = next((v.options for v in voters if v.backend == "embedding"), {})
    temperature = float(options.get("temperature", Smoothing.temperature))
    return Smoothing(select.smooth_beta, select.smooth_k, label.shortlist, temperature)
