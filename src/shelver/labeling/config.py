"""The labeling run's configuration: who votes, how calls are made, what a call may cost.

``voters_from_cli`` turns the CLI's ``--backend/--model/--base-url/--option`` into voter specs;
``LabelConfig`` is what a run writes into its store before it starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shelver.config import LabelStage
from shelver.errors import ConfigError
from shelver.labeling.backends import BACKENDS


@dataclass(frozen=True)
class VoterSpec:
    backend: str
    model: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelConfig:
    """A labeling run's resolved settings; their defaults and reasons are ``LabelStage``'s."""

    voters: tuple[VoterSpec, ...] = (VoterSpec("embedding"),)
    encoder: str = LabelStage.encoder
    shortlist: int = LabelStage.shortlist
    samples: int = LabelStage.votes
    # diverse enough to expose uncertainty, low enough to stay on topic
    sample_temperature: float = 0.7
    prompt: str = LabelStage.prompt
    concurrency: int = LabelStage.concurrency
    max_retries: int = LabelStage.max_retries
    backoff: float = LabelStage.backoff
    limit: int | None = LabelStage.limit
    # US$ per million prompt / completion tokens, for the cost estimate (None: no estimate)
    price_prompt: float | None = None
    price_completion: float | None = None
    # extra names the validator maps to canonical ones ({"tee": "Tshirts"})
    synonyms: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def label_config(stage: LabelStage, **extra: Any) -> LabelConfig:
    """The run's settings from a stage section (``shelver label``'s options or bootstrap's [label]);
    ``extra`` sets what only a run has (prices, synonyms)."""
    return LabelConfig(
        voters=stage_voters(stage),
        encoder=stage.encoder,
        shortlist=stage.shortlist,
        samples=stage.votes,
        prompt=stage.prompt,
        concurrency=stage.concurrency,
        max_retries=stage.max_retries,
        backoff=stage.backoff,
        limit=stage.limit,
        **extra,
    )


def stage_voters(stage: LabelStage) -> tuple[VoterSpec, ...]:
    """The voters a stage section names (its backends, model, base URL and options)."""
    return voters_from_cli(stage.backends, stage.model, stage.base_url, stage.options)


def voters_from_cli(
    backends: Sequence[str],
    model: str | None = None,
    base_url: str | None = None,
    options: Sequence[str] = (),
) -> tuple[VoterSpec, ...]:
    """``--backend NAME[=MODEL]`` (repeatable), ``--model`` for the LLM backends without one,
    ``--option [BACKEND.]KEY=VALUE`` (no prefix: the first backend)."""
    names = [b.partition("=")[0].strip() for b in backends] or ["embedding"]
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    per_backend = _options(options, names)
    specs = []
    for raw, name in zip(backends or ["embedding"], names, strict=True):
        own = raw.partition("=")[2].strip() or None
        chosen = own or (model if name != "embedding" else None)
        opts = dict(per_backend.get(name, {}))
        if name == "openai" and base_url:
            opts.setdefault("base_url", base_url)
        specs.append(VoterSpec(name, chosen, opts))
    return tuple(specs)


def _options(items: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects [BACKEND.]KEY=VALUE (e.g. openai.timeout=30), got {item!r}")
        backend, dot, name = key.strip().rpartition(".")
        target = backend if dot else names[0]
        if target not in names:
            raise ConfigError(
                f"--option {item!r} names backend {target!r}, which is not among --backend {', '.join(names)}"
            )
        out.setdefault(target, {})[name] = _value(value.strip())
    return out


def _value(text: str) -> Any:
    """Numbers and booleans as such; anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
