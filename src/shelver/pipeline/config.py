"""The bootstrap configuration: the stage sections of ``shelver.config`` (their one home, which the
stage commands read too) under one root, read from TOML and --set overrides, checked at load."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelver.config import (
    GENERATORS,
    ExportStage,
    LabelStage,
    ReviewStage,
    SelectStage,
    SynthesizeStage,
    TrainConfig,
    build,
    parse_override,
    read_toml,
    set_dotted,
)
from shelver.errors import ConfigError


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
        smoothing_settings(config)  # its ConfigError too
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
    generators = config.synthesize.generators
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ConfigError(
            f"synthesize.generators has {unknown[0]!r}; use some of {', '.join(GENERATORS)} "
            '(e.g. --set \'synthesize.generators=["attributes", "titles"]\')'
        )
    if config.synthesize.enabled and "llm" in generators and not llm_voters(config.label):
        raise ConfigError(
            "synthesize.generators has 'llm', which writes with the label stage's LLM backend, but "
            f"label.backends is {list(config.label.backends)}; add --backend openai or --backend "
            "llamacpp, or drop 'llm' from synthesize.generators"
        )


def llm_voters(label: LabelStage) -> list[Any]:
    """The label stage's LLM voters (the embedding labeler left out)."""
    from shelver.labeling.config import stage_voters

    return [v for v in stage_voters(label) if v.backend != "embedding"]


def smoothing_settings(config: BootstrapConfig) -> Any:
    """Smoothing with the select stage's beta and k and the embedding backend's own softmax."""
    from shelver.labeling.config import stage_voters
    from shelver.labeling.smoothing import Smoothing

    label, select = config.label, config.select
    options = next((v.options for v in stage_voters(label) if v.backend == "embedding"), {})
    temperature = float(options.get("temperature", Smoothing.temperature))
    return Smoothing(select.smooth_beta, select.smooth_k, label.shortlist, temperature)
