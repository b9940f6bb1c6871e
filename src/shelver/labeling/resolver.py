"""Resolve a free-text spelling of a path (an LLM's reply, a reviewer's CSV cell) to a leaf of the
taxonomy, naming each repair (case, spacing, separator, synonym, parent) or rejecting it with a reason."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shelver.taxonomy import Path_, Taxonomy, format_path

_ARROW = re.compile(r"\s*(?<!-)>\s*")
_SEPARATORS = re.compile(r"\s*(?:>|/|\||::|->|→|»)\s*")
_PUNCTUATION = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class Resolution:
    """A spelling resolved to a leaf (``path``), with each repair named, or rejected with a reason."""

    path: Path_ | None
    repairs: tuple[str, ...] = ()
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.path is not None


class PathResolver:
    """Map case, spacing, separator and synonym variants of a path to the canonical leaf.

    Never guesses a parent: ``"Bags > Sneakers"`` is rejected (its subcategory lives under
    ``Shoes``), while a bare, unambiguous ``"Sneakers"`` is completed to ``Shoes > Sneakers``
    and counted as a ``parent`` repair. ``synonyms`` maps a variant name to a canonical one
    (``{"tee": "Tshirts"}``).
    """

    def __init__(self, taxonomy: Taxonomy, synonyms: Mapping[str, str] | None = None) -> None:
        self.taxonomy = taxonomy
        self.synonyms = {_name_key(k): v for k, v in (synonyms or {}).items()}
        self._folded = {tuple(_fold(p) for p in path): path for path in taxonomy.paths}
        self._keyed = _unique_index(taxonomy.paths, lambda path: tuple(_name_key(p) for p in path))
        self._by_leaf = _unique_index(taxonomy.paths, lambda path: _name_key(path[-1]))

    def resolve(self, text: str) -> Resolution:
        raw = str(text).strip()
        splits = [_split(raw, _ARROW), _split(raw, _SEPARATORS)]  # '>' first: names may hold '/'
        if not splits[0]:
            return Resolution(None, reason="empty path")
        for parts in dict.fromkeys(splits):
            for attempt in (self._exact, self._case, self._synonym, self._parent):
                found = attempt(parts)
                if found is not None:
                    repairs = self._format_repairs(raw, parts) + found[1]
                    return Resolution(found[0], tuple(dict.fromkeys(repairs)))
        return Resolution(None, reason=self._reason(splits[0]))

    def _format_repairs(self, raw: str, parts: Path_) -> tuple[str, ...]:
        if raw == format_path(parts):
            return ()
        return ("spacing",) if re.sub(r"\s*>\s*", " > ", raw) == format_path(parts) else ("separator",)

    def _exact(self, parts: Path_) -> tuple[Path_, tuple[str, ...]] | None:
        return (parts, ()) if parts in self.taxonomy.leaf_index else None

    def _case(self, parts: Path_) -> tuple[Path_, tuple[str, ...]] | None:
        path = self._folded.get(tuple(_fold(p) for p in parts))
        if path is None:
            return None
        spaced = tuple(" ".join(p.split()) for p in parts)
        kinds = ("case",) if spaced != path else ("spacing",)
        return path, kinds

    def _synonym(self, parts: Path_) -> tuple[Path_, tuple[str, ...]] | None:
        keys = tuple(_name_key(self.synonyms.get(_name_key(p), p)) for p in parts)
        path = self._keyed.get(keys)
        return (path, ("synonym",)) if path is not None else None

    def _parent(self, parts: Path_) -> tuple[Path_, tuple[str, ...]] | None:
        if len(parts) != self.taxonomy.depth - 1 or len(parts) != 1:
            return None
        path = self._by_leaf.get(_name_key(self.synonyms.get(_name_key(parts[0]), parts[0])))
        return (path, ("parent",)) if path is not None else None

    def _reason(self, parts: Path_) -> str:
        if len(parts) == 1 and self.taxonomy.depth > 1:
            key = _name_key(parts[0])
            parents = [p[:-1] for p in self.taxonomy.paths if _name_key(p[-1]) == key]
            if len(parents) > 1:
                where = " and ".join(repr(format_path(p)) for p in parents[:3])
                return f"ambiguous: {parts[0]!r} is under {where}; give the full path"
        canonical = [self._canonical_name(p) for p in parts]
        return self.taxonomy.explain_unknown(canonical)

    def _canonical_name(self, name: str) -> str:
        names = {_name_key(p): p for path in self.taxonomy.paths for p in path}
        return names.get(_name_key(self.synonyms.get(_name_key(name), name)), name)


def _split(raw: str, pattern: re.Pattern[str]) -> Path_:
    return tuple(p.strip() for p in pattern.split(raw) if p.strip())


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


def _name_key(name: str) -> str:
    """Loose key: case, punctuation, '&'/'and' and a plural 's' do not matter."""
    words = _PUNCTUATION.sub(" ", name.casefold().replace("&", " and ")).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def _unique_index(paths: Iterable[Path_], key: Any) -> dict[Any, Path_]:
    """``key(path) -> path`` for keys that only one path has (an ambiguous key resolves nothing)."""
    index: dict[Any, Path_ | None] = {}
    for path in paths:
        k = key(path)
        index[k] = None if k in index else path
    return {k: v for k, v in index.items() if v is not None}
