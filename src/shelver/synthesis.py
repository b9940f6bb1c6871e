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

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from shelver.encoders import CachedEncoder, Encoder, make_encoder
from shelver.errors import ConfigError, DataError
from shelver.taxonomy import Path_, Taxonomy, format_path
from shelver.text_keys import word_sequence_key

# columns of a training file that are never attributes
NOT_ATTRIBUTES = {"text", "path", "source", "split", "id", "count", "masterCategory"}
# an extra column with more distinct values than this is an identifier or free text, not an attribute
MAX_ATTRIBUTE_VALUES = 60
# values that mean "unknown" in the shared data sets
MISSING_VALUES = {"", "na", "nan", "none", "null", "n/a", "-", "other", "unknown"}
# Shopify attributes that apply to most physical products (the files hold no category mapping)
SHOPIFY_ATTRIBUTES = ("color", "pattern", "material")


@dataclass(frozen=True)
class SynthRow:
    text: str
    path: Path_
    source: str


@dataclass
class ClassContext:
    """One leaf as a generator sees it."""

    path: Path_
    count: int
    attributes: dict[str, list[str]] = field(default_factory=dict)
    titles: list[str] = field(default_factory=list)


# ---- which leaves need data ---------------------------------------------------------------------
def leaf_counts(taxonomy: Taxonomy, y: np.ndarray) -> dict[Path_, int]:
    """Training rows per leaf, zero for leaves that have none."""
    counts = Counter(map(tuple, y))
    return {p: int(counts.get(p, 0)) for p in taxonomy.paths}


def tail_paths(taxonomy: Taxonomy, y: np.ndarray, min_examples: int) -> list[Path_]:
    """Leaves with fewer than ``min_examples`` training rows, in taxonomy order."""
    return [p for p, n in leaf_counts(taxonomy, y).items() if n < min_examples]


def attribute_columns(frame: pd.DataFrame, taxonomy: Taxonomy) -> list[str]:
    """Extra columns that look like attributes: a handful of distinct, non-numeric values."""
    skip = NOT_ATTRIBUTES | set(taxonomy.levels)
    columns = []
    for column in frame.columns:
        values = frame[column].astype(str)
        if column in skip or values.nunique() > MAX_ATTRIBUTE_VALUES:
            continue
        if not values.str.fullmatch(r"[\d.\-]+").mean() > 0.5:
            columns.append(str(column))
    return columns


def build_contexts(
    frame: pd.DataFrame,
    taxonomy: Taxonomy,
    y: np.ndarray,
    paths: Sequence[Path_],
    extra_attributes: Mapping[str, Sequence[str]] | None = None,
) -> list[ClassContext]:
    """Attribute values and titles of each leaf in ``paths``, from the rows labeled with it.

    A leaf without rows gets the values most common over the whole file, so it still varies.
    """
    columns = attribute_columns(frame, taxonomy)
    counts = leaf_counts(taxonomy, y)
    keys = np.array([format_path(p) for p in map(tuple, y)])
    texts = frame["text"].astype(str).to_numpy()
    contexts = []
    for path in paths:
        rows = keys == format_path(path)
        source = frame.loc[rows] if rows.any() else frame
        attributes = {c: _common_values(source[c]) for c in columns}
        for name, values in (extra_attributes or {}).items():
            attributes.setdefault(name, list(values))
        attributes = {k: v for k, v in attributes.items() if v}
        contexts.append(ClassContext(path, counts[path], attributes, list(dict.fromkeys(texts[rows]))))
    return contexts


def _common_values(column: pd.Series, top: int = 12) -> list[str]:
    values = column.astype(str).str.strip()
    values = values[~values.str.casefold().isin(MISSING_VALUES)]
    return values.value_counts().index[:top].tolist()


def shopify_attributes(root: str | Path, handles: Sequence[str] = SHOPIFY_ATTRIBUTES) -> dict[str, list[str]]:
    """Short values of generic Shopify attributes (color, pattern, material) from attributes.json.

    The published files list attributes and their values but not which categories use them, so
    only attributes that fit nearly any product are taken, and only values of one or two words.
    """
    path = Path(root) / "attributes.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; point --shopify at the shopify-taxonomy folder")
    attributes = json.loads(path.read_text(encoding="utf-8"))["attributes"]
    out: dict[str, list[str]] = {}
    for attribute in attributes:
        if attribute["handle"] in handles:
            names = [v["name"] for v in attribute["values"] if len(v["name"].split()) <= 2]
            out[attribute["handle"]] = [n for n in names if n.casefold() not in MISSING_VALUES]
    return out


# ---- generators -----------------------------------------------------------------------------------
class Generator(Protocol):
    """Turns one leaf's context into up to ``k`` candidate queries (unfiltered)."""

    source: str

    def generate(self, context: ClassContext, k: int) -> list[str]: ...


def _rng(seed: int, name: str, path: Path_) -> random.Random:
    # a string seed is hashed with SHA-512: the same on every run and platform
    return random.Random(f"{seed}|{name}|{format_path(path)}")


def _leaf_phrase(path: Path_) -> str:
    return path[-1].casefold()


def _type_phrases(path: Path_) -> list[str]:
    """Ways to name the product: the leaf, and the leaf with its parent when that adds words."""
    leaf, parent = path[-1].casefold(), path[-2].casefold() if len(path) > 1 else ""
    stems = {w[:5] for w in leaf.split()}
    if parent and not stems & {w[:5] for w in parent.split()}:
        return [leaf, f"{parent} {leaf}"]
    return [leaf]


class AttributeGenerator:
    """Compose ``[attribute] [attribute] <product type>`` queries from attribute values; no model.

    Deterministic under ``seed``: the same seed, context and ``k`` give the same queries.
    """

    source = "synthetic:attributes"
    TEMPLATES = ("{a} {t}", "{a} {b} {t}", "{t} {a}", "{t} for {g}", "{g} {a} {t}", "{g} {t}", "{a} {t} {c}")

    def __init__(self, seed: int = 0, max_words: int = 5) -> None:
        self.seed = seed
        self.max_words = max_words

    def generate(self, context: ClassContext, k: int) -> list[str]:
        rng = _rng(self.seed, "attributes", context.path)
        values = [
            [v.casefold() for v in vs] for name, vs in sorted(context.attributes.items()) if name != "gender"
        ]
        genders = [g.casefold() for g in context.attributes.get("gender", [])]
        out: dict[str, None] = {}
        for _ in range(k * 8):
            if len(out) >= k:
                break
            query = self._one(rng, _type_phrases(context.path), values, genders)
            if query and 2 <= len(query.split()) <= self.max_words:
                out.setdefault(query)
        return list(out)

    def _one(self, rng: random.Random, types: list[str], values: list[list[str]], genders: list[str]) -> str:
        template = rng.choice(self.TEMPLATES)
        if ("{g}" in template and not genders) or (("{a}" in template or "{b}" in template) and not values):
            template = "{a} {t}" if values else "{g} {t}" if genders else "{t}"
        fill = {
            "t": rng.choice(types),
            "a": rng.choice(rng.choice(values)) if values else "",  # an attribute, then a value of it
            "b": rng.choice(rng.choice(values)) if values else "",
            "g": rng.choice(genders) if genders else "",
            "c": rng.choice(["cheap", "online", "sale", "new", "best"]),
        }
        words = template.format(**fill).split()
        return " ".join(dict.fromkeys(words))  # "blue blue shirt" -> "blue shirt"


SIZE_TOKEN = re.compile(
    r"^(x{0,3}[sml]|x{1,3}l|\d+x?l|free ?size"
    r"|\d+(\.\d+)?(ml|l|g|kg|oz|lb|lbs|cm|mm|m|in|inch|ct|pk|pack|gal|fl)?)$",
    re.IGNORECASE,
)
CODE_TOKEN = re.compile(r"^(?=.*\d)[\w\-/.]+$")
GENDER_WORDS = {"men", "women", "boys", "girls", "unisex", "kids", "mens", "womens", "men's", "women's"}


class TitleGenerator:
    """Catalogue titles -> what people type: drop the leading brand, sizes, codes and numbers; keep
    the product type and one or two attributes; add seeded noise (a dropped word, a typo)."""

    source = "synthetic:titles"

    def __init__(self, seed: int = 0, p_drop: float = 0.2, p_typo: float = 0.15, max_words: int = 5) -> None:
        self.seed = seed
        self.p_drop = p_drop
        self.p_typo = p_typo
        self.max_words = max_words

    def generate(self, context: ClassContext, k: int) -> list[str]:
        rng = _rng(self.seed, "titles", context.path)
        known = {w for v in context.attributes.values() for x in v for w in word_sequence_key(x).split()}
        known |= GENDER_WORDS | set(word_sequence_key(" ".join(context.path)).split())
        titles = list(context.titles)
        rng.shuffle(titles)
        out: dict[str, None] = {}
        for title in titles * 2:  # a second pass draws other attributes and other noise
            if len(out) >= k:
                break
            query = self.queryize(title, known, rng)
            if query:
                out.setdefault(query)
        return list(out)

    def queryize(self, title: str, known: set[str], rng: random.Random) -> str:
        raw = [w for w in str(title).split() if not SIZE_TOKEN.match(w) and not CODE_TOKEN.match(w)]
        words = word_sequence_key(" ".join(raw)).split()
        words = _drop_brand(words, known)
        if not words:
            return ""
        product, attributes = words[-1:], words[:-1]
        if len(attributes) > 2:
            keep = sorted(rng.sample(range(len(attributes)), rng.choice((1, 2))))
            attributes = [attributes[i] for i in keep]
        words = (attributes + product)[-self.max_words :]
        return " ".join(self._noise(words, rng))

    def _noise(self, words: list[str], rng: random.Random) -> list[str]:
        if len(words) > 2 and rng.random() < self.p_drop:
            words = words[:]
            del words[rng.randrange(len(words) - 1)]  # never the product type
        if rng.random() < self.p_typo:
            long = [i for i, w in enumerate(words) if len(w) >= 4]
            if long:
                i = rng.choice(long)
                words = [*words[:i], typo(words[i], rng), *words[i + 1 :]]
        return words


def _drop_brand(words: list[str], known: set[str]) -> list[str]:
    """Leading words before the first known word (gender, attribute value, taxonomy word) are the
    brand; with no known word at all, only the first word of a title (4 words or more) is taken as
    the brand: a text of 3 words or fewer is already a query ("organic whole milk")."""
    for i, word in enumerate(words):
        if word in known:
            return words[i:]
    return words[1:] if len(words) > 3 else words


def typo(word: str, rng: random.Random) -> str:
    """One realistic slip: two letters swapped, one dropped, or one doubled (never the first)."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


LLM_SYSTEM = "You write realistic e-commerce search queries, the way shoppers type them into a search box."
LLM_USER = """Category: {path}
{attributes}{examples}
Write {k} different search queries a shopper would type to find products in this category.
Rules: 2 to 5 words each; lower case; vary the wording and attributes; an occasional typo is fine;
no brand names; no numbering, quotes or explanations. One query per line."""


class LLMGenerator:
    """Queries written by an LLM through a labeling backend (``openai`` or ``llamacpp``)."""

    def __init__(self, backend: Any, seed: int = 0, examples: int = 5, temperature: float = 0.8) -> None:
        self.backend = backend
        self.seed = seed
        self.examples = examples
        self.temperature = temperature
        self.source = f"synthetic:llm:{backend.model}"

    def prompt(self, context: ClassContext, k: int) -> tuple[dict[str, str], ...]:
        attributes = "".join(f"{n}: {', '.join(v[:8])}\n" for n, v in sorted(context.attributes.items()))
        shots = context.titles[: self.examples]
        examples = "Real product titles in it:\n" + "".join(f"- {t}\n" for t in shots) if shots else ""
        user = LLM_USER.format(path=format_path(context.path), attributes=attributes, examples=examples, k=k)
        return ({"role": "system", "content": LLM_SYSTEM}, {"role": "user", "content": user})

    def generate(self, context: ClassContext, k: int) -> list[str]:
        from shelver.labeling.backends.base import Request

        request = Request(
            self.prompt(context, k),
            query=format_path(context.path),
            max_tokens=12 * k + 16,
            temperature=self.temperature,
            seed=self.seed,
        )
        return parse_lines(self._call(request))[:k]

    def _call(self, request: Any) -> str:
        """The reply text; rate limits and server errors are retried as labeling retries them."""
        from shelver.labeling.retry import with_retries

        return with_retries(lambda: self.backend.generate(request).text)


def parse_lines(text: str) -> list[str]:
    """One query per line, without numbering, bullets or quotes; headers and JSON/markup lines go."""
    out = []
    for line in str(text).splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip().strip("\"'`").strip()
        if line and not line.endswith(":") and not re.search(r"[{}<>\[\]]", line):
            out.append(line.casefold())
    return list(dict.fromkeys(out))


# ---- filters ----------------------------------------------------------------------------------------
class Judge(Protocol):
    """Scores every leaf for each text: ``(n, n_leaves)``, columns in taxonomy order."""

    def leaf_scores(self, texts: Sequence[str]) -> np.ndarray: ...


class ClassifierJudge:
    """A trained shelver model as the judge (its calibrated leaf probabilities)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def load(cls, model_dir: str | Path, taxonomy: Taxonomy) -> ClassifierJudge:
        from shelver.model_dir import load_model

        return cls(load_model(model_dir, taxonomy))

    def leaf_scores(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(list(texts))[1]


class EmbeddingJudge:
    """The embedding labeler as the judge: cosine similarity of the text to each leaf description."""

    def __init__(self, taxonomy: Taxonomy, encoder: str | Encoder = "minilm") -> None:
        from shelver.labeling.shortlist import PathIndex

        self.index = PathIndex(taxonomy, encoder)

    def leaf_scores(self, texts: Sequence[str]) -> np.ndarray:
        return self.index.similarities(list(texts))


@dataclass
class FilterCounts:
    """How many rows each filter removed, in the order they ran."""

    generated: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    kept: int = 0

    def drop(self, reason: str, n: int) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + n


@dataclass(frozen=True)
class FilterConfig:
    min_words: int = 1
    max_words: int = 6
    max_chars: int = 60
    # cosine similarity at or above which two synthetic texts of a leaf are near duplicates
    near_duplicate: float = 0.95
    # cosine similarity at or above which a synthetic text nearly matches a valid/test text
    near_leak: float = 0.92
    # the judge must rank the intended leaf within its top ``judge_top_k``
    judge_top_k: int = 1


def filter_rows(
    rows: list[SynthRow],
    encoder: Encoder,
    config: FilterConfig,
    avoid: Sequence[str] = (),
    train: Sequence[str] = (),
    judge: Judge | None = None,
    taxonomy: Taxonomy | None = None,
) -> tuple[list[SynthRow], FilterCounts]:
    """Length, exact duplicates (of each other and of training texts), exact leaks, near
    duplicates, near leaks, then the judge; each step counted."""
    counts = FilterCounts(generated=len(rows))
    rows = _step(counts, "length", rows, [_length_ok(r.text, config) for r in rows])
    rows = _step(counts, "exact_duplicate", rows, _first_seen(rows, {word_sequence_key(t) for t in train}))
    avoid_keys = {word_sequence_key(t) for t in avoid}
    rows = _step(counts, "exact_leak", rows, [word_sequence_key(r.text) not in avoid_keys for r in rows])
    vectors = encoder.encode([r.text for r in rows]) if rows else np.zeros((0, encoder.dim), np.float32)
    keep = _near_duplicates(rows, vectors, config.near_duplicate)
    rows, vectors = _step(counts, "near_duplicate", rows, keep), vectors[keep]
    keep = _far_from(vectors, encoder, list(dict.fromkeys(avoid)), config.near_leak)
    rows = _step(counts, "near_leak", rows, keep)
    if judge is not None and rows:
        rows = _step(counts, "judge", rows, _judged(rows, judge, taxonomy, config.judge_top_k))
    counts.kept = len(rows)
    return rows, counts


def _step(counts: FilterCounts, reason: str, rows: list[SynthRow], keep: Sequence[bool]) -> list[SynthRow]:
    kept = [r for r, k in zip(rows, keep, strict=True) if k]
    counts.drop(reason, len(rows) - len(kept))
    return kept


def _length_ok(text: str, config: FilterConfig) -> bool:
    n = len(text.split())
    return config.min_words <= n <= config.max_words and 0 < len(text) <= config.max_chars


def _first_seen(rows: list[SynthRow], taken: set[str]) -> list[bool]:
    keep = []
    for row in rows:
        key = word_sequence_key(row.text)
        keep.append(key not in taken)
        taken.add(key)
    return keep


def _near_duplicates(rows: list[SynthRow], vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy, per leaf: a row goes if it is at least ``threshold`` similar to a kept one."""
    keep = np.ones(len(rows), dtype=bool)
    by_path: dict[Path_, list[int]] = {}
    for i, row in enumerate(rows):
        by_path.setdefault(row.path, []).append(i)
    for members in by_path.values():
        sims = vectors[members] @ vectors[members].T
        kept: list[int] = []
        for j in range(len(members)):
            if kept and sims[j, kept].max() >= threshold:
                keep[members[j]] = False
            else:
                kept.append(j)
    return keep


def _far_from(vectors: np.ndarray, encoder: Encoder, avoid: list[str], threshold: float) -> np.ndarray:
    if not avoid or not len(vectors):
        return np.ones(len(vectors), dtype=bool)
    best = np.full(len(vectors), -1.0, dtype=np.float32)
    for start in range(0, len(avoid), 4096):
        chunk = encoder.encode(avoid[start : start + 4096])
        best = np.maximum(best, (vectors @ chunk.T).max(axis=1))
    return best < threshold


def _judged(rows: list[SynthRow], judge: Judge, taxonomy: Taxonomy | None, top_k: int) -> np.ndarray:
    if taxonomy is None:
        raise ConfigError("the judge filter needs the taxonomy to find each row's leaf")
    scores = judge.leaf_scores([r.text for r in rows])
    intended = np.array([taxonomy.leaf_index[r.path] for r in rows])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return (top == intended[:, None]).any(axis=1)


GENERATORS = ("attributes", "titles", "llm")


def make_generators(names: Sequence[str], seed: int = 0, backend: Any = None) -> list[Generator]:
    """Generators by name; ``llm`` needs a backend (``make_backend("openai", ...)``)."""
    out: list[Generator] = []
    for name in dict.fromkeys(names):
        if name == "attributes":
            out.append(AttributeGenerator(seed))
        elif name == "titles":
            out.append(TitleGenerator(seed))
        elif name == "llm":
            if backend is None:
                raise ConfigError(
                    "the llm generator needs a backend: add --backend openai or --backend llamacpp"
                )
            out.append(LLMGenerator(backend, seed))
        else:
            raise ConfigError(f"unknown generator {name!r}; use one of {', '.join(GENERATORS)}")
    return out


def read_training(path: str | Path, taxonomy: Taxonomy) -> tuple[pd.DataFrame, np.ndarray]:
    """The training file as a frame (extra columns kept: they are the attributes) and its labels."""
    from shelver.data import explode_multi_label, labels_of, read_table, texts_of

    origin = Path(path).name
    frame = explode_multi_label(read_table(path), taxonomy)
    if frame.empty:
        raise DataError(f"{origin} has no rows; a labeled file needs at least one")
    frame = frame.assign(text=texts_of(frame, origin))
    return frame.reset_index(drop=True), labels_of(frame, taxonomy, origin)


def read_avoid(paths: Sequence[str | Path]) -> list[str]:
    """Every text of the files synthetic rows must not leak into (valid, test)."""
    from shelver.data import read_table, texts_of

    return [t for p in paths for t in texts_of(read_table(p), Path(p).name)]


# ---- the whole run -----------------------------------------------------------------------------------
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
    encoder: str | Encoder = "hashing",
    min_examples: int = 50,
    per_class: int = 20,
    avoid: Sequence[str] = (),
    judge: Judge | None = None,
    filters: FilterConfig = FilterConfig(),
    extra_attributes: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> SynthesisResult:
    """Generate and filter queries for every leaf below ``min_examples`` training rows."""
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


def to_frame(rows: Iterable[SynthRow], taxonomy: Taxonomy) -> pd.DataFrame:
    """A frame ``read_labeled`` accepts: text, one column per level, source."""
    records = [
        {"text": r.text, **dict(zip(taxonomy.levels, r.path, strict=True)), "source": r.source} for r in rows
    ]
    return pd.DataFrame(records, columns=["text", *taxonomy.levels, "source"])


def write_rows(rows: Iterable[SynthRow], taxonomy: Taxonomy, out: str | Path) -> Path:
    """The rows as CSV, Parquet or JSONL by ``out``'s suffix (``data.write_table``)."""
    from shelver.data import write_table

    return write_table(to_frame(rows, taxonomy), out)
