"""Synthetic queries for subcategories with too little real traffic, filtered before they teach.

```
tail_paths       leaves with fewer than ``min_examples`` training rows (zero-row leaves included)
ClassContext     what a generator knows of one leaf: its path, attribute values, real titles
generators       attributes (no model, seeded) | titles (query-ization, seeded) | llm (backends)
filters          length, exact + near duplicates, leakage against valid/test, judge consistency
synthesize()     contexts -> generated rows -> filtered rows, each with a ``source`` and a valid path
```

Every row's ``source`` says where it came from (``synthetic:attributes``, ``synthetic:titles``,
``synthetic:llm:<model>``) so evaluation can slice by it, and every path is checked against the
taxonomy before it is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shelver.config import LabelStage, SynthesizeStage
from shelver.encoders import CachedEncoder, Encoder, make_encoder
from shelver.errors import ConfigError
from shelver.synthesis.contexts import (
    MAX_ATTRIBUTE_VALUES,
    MISSING_VALUES,
    NOT_ATTRIBUTES,
    SHOPIFY_ATTRIBUTES,
    ClassContext,
    SynthRow,
    attribute_columns,
    build_contexts,
    leaf_counts,
    shopify_attributes,
    tail_paths,
)
from shelver.synthesis.filters import FilterConfig, FilterCounts, filter_rows
from shelver.synthesis.generators import (
    CODE_TOKEN,
    GENDER_WORDS,
    GENERATORS,
    SIZE_TOKEN,
    AttributeGenerator,
    Generator,
    LLMGenerator,
    TitleGenerator,
    make_generators,
    parse_lines,
    typo,
)
from shelver.synthesis.io import read_avoid, read_training, to_frame, write_rows
from shelver.synthesis.judges import ClassifierJudge, EmbeddingJudge, Judge
from shelver.taxonomy import Path_, Taxonomy

__all__ = [
    "CODE_TOKEN",
    "GENDER_WORDS",
    "GENERATORS",
    "MAX_ATTRIBUTE_VALUES",
    "MISSING_VALUES",
    "NOT_ATTRIBUTES",
    "SHOPIFY_ATTRIBUTES",
    "SIZE_TOKEN",
    "AttributeGenerator",
    "ClassContext",
    "ClassifierJudge",
    "EmbeddingJudge",
    "FilterConfig",
    "FilterCounts",
    "Generator",
    "Judge",
    "LLMGenerator",
    "SynthRow",
    "SynthesisResult",
    "TitleGenerator",
    "attribute_columns",
    "build_contexts",
    "filter_rows",
    "generate_rows",
    "leaf_counts",
    "make_generators",
    "parse_lines",
    "read_avoid",
    "read_training",
    "shopify_attributes",
    "synthesize",
    "tail_paths",
    "to_frame",
    "typo",
    "write_rows",
]


@dataclass
class SynthesisResult:
    rows: list[SynthRow]
    counts: FilterCounts
    paths: list[Path_]
    by_source: dict[str, int]


def generate_rows(
    contexts: Sequence[ClassContext], generators: Sequence[Generator], per_class: int, progress: bool = False
) -> list[SynthRow]:
    """Up to ``per_class`` candidates per leaf from each generator (more are asked for, so that
    filtering leaves about ``per_class``)."""
    from tqdm.auto import tqdm

    rows = []
    for context in tqdm(contexts, desc="synthesize", unit="leaf", disable=not progress):
        for generator in generators:
            texts = generator.generate(context, per_class)
            rows.extend(SynthRow(t.strip(), context.path, generator.source) for t in texts if t.strip())
    return rows


def synthesize(
    taxonomy: Taxonomy,
    frame: pd.DataFrame,
    y: np.ndarray,
    generators: Sequence[Generator],
    *,
    encoder: str | Encoder = LabelStage.encoder,
    min_examples: int = SynthesizeStage.min_examples,
    per_class: int = SynthesizeStage.per_class,
    avoid: Sequence[str] = (),
    judge: Judge | None = None,
    filters: FilterConfig = FilterConfig(),  # noqa: B008 (frozen: ruff sees that only within one module)
    extra_attributes: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> SynthesisResult:
    """Generate and filter queries for every leaf below ``min_examples`` training rows.

    ``encoder`` filters near duplicates and leaks (and is the labeler's: MiniLM by default, as
    ``shelver synthesize`` and bootstrap use); ``filters.judge_top_k`` 0 turns ``judge`` off."""
    if not generators:
        raise ConfigError("no generator chosen; pass --generator attributes, titles or llm")
    paths = tail_paths(taxonomy, y, min_examples)
    contexts = build_contexts(frame, taxonomy, y, paths, extra_attributes)
    rows = generate_rows(contexts, generators, per_class, progress)
    for row in rows:
        taxonomy.check_path(row.path)
    inner = make_encoder(encoder)
    cached = inner if isinstance(inner, CachedEncoder) else CachedEncoder(inner)
    texts = frame["text"].astype(str).tolist()
    rows, counts = filter_rows(rows, cached, filters, avoid, texts, judge, taxonomy)
    rows = _cap(rows, per_class * len(generators))
    return SynthesisResult(rows, counts, paths, dict(Counter(r.source for r in rows)))


def _cap(rows: list[SynthRow], limit: int) -> list[SynthRow]:
    seen: Counter[Path_] = Counter()
    out = []
    for row in rows:
        if seen[row.path] < limit:
            out.append(row)
            seen[row.path] += 1
    return out
