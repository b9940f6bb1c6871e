"""Generators: a leaf's context -> candidate queries. ``attributes`` (templates over attribute values,
no model), ``titles`` (catalogue titles query-ized) and ``llm`` (a labeling backend), each seeded."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any, Protocol

from shelver.config import GENERATORS
from shelver.errors import ConfigError
from shelver.synthesis.contexts import ClassContext
from shelver.taxonomy import Path_, format_path
from shelver.text_keys import word_sequence_key


class Generator(Protocol):
    """Turns one leaf's context into up to ``k`` candidate queries (unfiltered)."""

    source: str

    def generate(self, context: ClassContext, k: int) -> list[str]: ...


def _rng(seed: int, name: str, path: Path_) -> random.Random:
    # a string seed is hashed with SHA-512: the same on every run and platform
    return random.Random(f"{seed}|{name}|{format_path(path)}")


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


# the built-in prompt file (shelver/prompts/) and what its [user] section must contain
SYNTHESIS_PROMPT = "synthesize_v1"
SYNTHESIS_PLACEHOLDERS = ("{path}", "{k}")


class LLMGenerator:
    """Queries written by an LLM through a labeling backend (``openai`` or ``llamacpp``)."""

    def __init__(self, backend: Any, seed: int = 0, examples: int = 5, temperature: float = 0.8) -> None:
        from shelver.labeling.prompts import Prompt

        self.backend = backend
        self.seed = seed
        self.examples = examples
        self.temperature = temperature
        self.source = f"synthetic:llm:{backend.model}"
        self.template = Prompt.load(SYNTHESIS_PROMPT, needs=SYNTHESIS_PLACEHOLDERS)

    def prompt(self, context: ClassContext, k: int) -> tuple[dict[str, str], ...]:
        attributes = "".join(f"{n}: {', '.join(v[:8])}\n" for n, v in sorted(context.attributes.items()))
        shots = context.titles[: self.examples]
        examples = "Real product titles in it:\n" + "".join(f"- {t}\n" for t in shots) if shots else ""
        user = self.template.user.format(
            path=format_path(context.path), attributes=attributes, examples=examples, k=k
        )
        return ({"role": "system", "content": self.template.system}, {"role": "user", "content": user})

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
