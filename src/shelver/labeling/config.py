"""The labeling run's configuration: who votes, how calls are made, what a call may cost.

``voters_from_cli`` turns the CLI's ``--backend/--model/--base-url/--option`` into voter specs;
``LabelConfig`` is what a run writes into its store before it starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shelver.errors import ConfigError
from shelver.labeling.backends import BACKENDS
from shelver.labeling.retry import BACKOFF, MAX_RETRIES


@dataclass(frozen=True)
class VoterSpec:
    backend: str
    model: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelConfig:
    # the embedding labeler needs no LLM, no network and no key: the offline default
    voters: tuple[VoterSpec, ...] = (VoterSpec("embedding"),)
    # the encoder that builds shortlists and scores the embedding backend's answers
    encoder: str = "minilm"
    # a small model reads ten candidates well and two hundred badly; the right path is usually in the top 10
    shortlist: int = 10
    # votes per LLM voter; more than one samples at sample_temperature so the votes can disagree
    samples: int = 1
    # diverse enough to expose uncertainty, low enough to stay on topic
    sample_temperature: float = 0.7
    prompt: str = "label_v1"
    # enough to keep a remote API busy without tripping its rate limit on the first minute
    concurrency: int = 4
    # 429/5xx/timeouts: up to this many retries, waiting backoff * 2**attempt (capped at 60 s);
    # the one policy of labeling and synthesis, its reasons in labeling/retry.py
    max_retries: int = MAX_RETRIES
    backoff: float = BACKOFF
    # label only the N most frequent queries (None: all)
    limit: int | None = None
    # US$ per million prompt / completion tokens, for the cost estimate (None: no estimate)
    price_prompt: float | None = None
    price_completion: float | None = None
    # extra names the validator maps to canonical ones ({"tee": "Tshirts"})
    synonyms: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


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
