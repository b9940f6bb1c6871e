"""An explicit, validated category tree.

A node is identified by its *path* (``("Women", "Accessories")``), never by its name alone:
real taxonomies repeat names under different parents, and a group may hold a child of its own
name ("Belts > Belts"). Leaves all sit at the same depth; two levels is what the heads use
today, and nothing here assumes two.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from shelver.errors import TaxonomyError

SEPARATOR = " > "
DEFAULT_LEVELS = ("category", "subcategory")

Path_ = tuple[str, ...]


def format_path(path: Sequence[str]) -> str:
    """``("Shoes", "Sneakers")`` -> ``"Shoes > Sneakers"``; empty levels are dropped."""
    return SEPARATOR.join(p for p in path if p)


def parse_path(text: str) -> Path_:
    """``"Shoes > Sneakers"`` -> ``("Shoes", "Sneakers")``, tolerating ``>`` without spaces."""
    return tuple(part.strip() for part in str(text).split(">") if part.strip())


@dataclass(frozen=True)
class Taxonomy:
    """Leaf paths of a uniform-depth tree, in file order, with their level names."""

    paths: tuple[Path_, ...]
    levels: tuple[str, ...] = DEFAULT_LEVELS
    name: str = "taxonomy"
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        _validate(self.paths, self.levels, self.source)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_tree(
        cls,
        tree: Mapping[str, Any],
        levels: Sequence[str] = DEFAULT_LEVELS,
        name: str = "taxonomy",
        source: str = "<memory>",
    ) -> Taxonomy:
        """Build from ``{category: [subcategory, ...]}`` or deeper nested mappings."""
        paths = list(_walk(tree, (), source))
        return cls(tuple(paths), tuple(levels), name, source)

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[Sequence[str]],
        levels: Sequence[str] = DEFAULT_LEVELS,
        name: str = "taxonomy",
    ) -> Taxonomy:
        return cls(tuple(tuple(p) for p in paths), tuple(levels), name)

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        """Read the JSON form (``{"name", "levels", "tree"}``), a YAML mapping, or text lines."""
        return read_taxonomy(Path(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by ``taxonomy.json`` files."""
        return {"name": self.name, "levels": list(self.levels), "tree": _nest(self.paths)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")

    # ---- shape ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.levels)

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical tree: equal trees hash equal, whatever the file format."""
        canonical = json.dumps([list(self.levels), [list(p) for p in self.paths]])
        return hashlib.sha256(canonical.encode()).hexdigest()

    @cached_property
    def categories(self) -> tuple[str, ...]:
        """Level-1 names in file order."""
        return tuple(dict.fromkeys(p[0] for p in self.paths))

    @cached_property
    def leaf_index(self) -> dict[Path_, int]:
        return {p: i for i, p in enumerate(self.paths)}

    @cached_property
    def category_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.categories)}

    @cached_property
    def leaf_category(self) -> tuple[int, ...]:
        """For each leaf, the index of its level-1 ancestor."""
        return tuple(self.category_index[p[0]] for p in self.paths)

    @cached_property
    def leaf_category_array(self) -> Any:
        """``leaf_category`` as a read-only integer array (made once: the request path uses it)."""
        import numpy as np

        array = np.asarray(self.leaf_category, dtype=np.intp)
        array.flags.writeable = False
        return array

    def children(self, prefix: Sequence[str]) -> tuple[str, ...]:
        """Names directly under ``prefix`` (``()`` gives the categories)."""
        n = len(prefix)
        return tuple(dict.fromkeys(p[n] for p in self.paths if p[:n] == tuple(prefix)))

    def leaves_under(self, category: str) -> tuple[int, ...]:
        """Indices of the leaves whose level-1 ancestor is ``category``."""
        return tuple(i for i, p in enumerate(self.paths) if p[0] == category)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, tuple) and path in self.leaf_index

    def __len__(self) -> int:
        return len(self.paths)

    # ---- checking labels ----------------------------------------------------------------
    def check_path(self, path: Sequence[str]) -> Path_:
        """Return ``path`` as a tuple if it is a leaf; else raise with what would fix it."""
        path = tuple(path)
        if path in self.leaf_index:
            return path
        raise TaxonomyError(f"{self.explain_unknown(path)}; fix the label or add the path to the taxonomy")

    def explain_unknown(self, path: Sequence[str]) -> str:
        """Why ``path`` is not a leaf, with a hint when its name lives under another parent."""
        path = tuple(str(p) for p in path)
        if len(path) != self.depth:
            return (
                f"path {format_path(path)!r} has {len(path)} level(s); this taxonomy has "
                f"{self.depth} ({', '.join(self.levels)})"
            )
        if path[0] not in self.category_index:
            return f"{self.levels[0]} {path[0]!r} is not in the taxonomy{self._did_you_mean(path[0])}"
        parents = [p[:-1] for p in self.paths if p[-1] == path[-1]]
        if parents:
            where = " or ".join(repr(format_path(p)) for p in parents[:3])
            return (
                f"{self.levels[-1]} {path[-1]!r} is not under {self.levels[-2]} "
                f"{format_path(path[:-1])!r}; its parent is {where}"
            )
        return f"{self.levels[-1]} {path[-1]!r} is not in the taxonomy under {format_path(path[:-1])!r}"

    def _did_you_mean(self, name: str) -> str:
        folded = {c.casefold(): c for c in self.categories}
        match = folded.get(name.strip().casefold())
        return f" (did you mean {match!r}?)" if match else ""


def _walk(node: Any, prefix: Path_, source: str) -> Iterable[Path_]:
    if isinstance(node, Mapping):
        if not node:
            raise TaxonomyError(_empty_message(prefix, source))
        for name, child in node.items():
            yield from _walk(child, (*prefix, _name(name, prefix, source)), source)
    elif isinstance(node, (list, tuple)):
        if not node:
            raise TaxonomyError(_empty_message(prefix, source))
        for leaf in node:
            if isinstance(leaf, Mapping):
                yield from _walk(leaf, prefix, source)
            else:
                yield (*prefix, _name(leaf, prefix, source))
    elif node is None and prefix:
        yield prefix
    else:
        raise TaxonomyError(
            f"{source}: under {format_path(prefix) or 'the root'!r} expected a mapping or a list "
            f"of names, got {type(node).__name__} {node!r}"
        )


def _name(value: Any, prefix: Path_, source: str) -> str:
    name = str(value).strip() if value is not None else ""
    if not name or ">" in name:
        raise TaxonomyError(
            f"{source}: invalid name {value!r} under {format_path(prefix) or 'the root'!r}; "
            "names must be non-empty and must not contain '>'"
        )
    return name


def _empty_message(prefix: Path_, source: str) -> str:
    return (
        f"{source}: {format_path(prefix) or 'the taxonomy'!r} has no children; every inner "
        "node needs at least one: add one, or remove it"
    )


def _validate(paths: tuple[Path_, ...], levels: tuple[str, ...], source: str) -> None:
    if not paths:
        raise TaxonomyError(f"{source}: the taxonomy is empty; give at least one path")
    if len(set(levels)) != len(levels) or not all(levels):
        raise TaxonomyError(f"{source}: level names must be distinct and non-empty, got {levels}")
    seen: set[Path_] = set()
    for path in paths:
        if len(path) != len(levels):
            raise TaxonomyError(
                f"{source}: path {format_path(path)!r} has {len(path)} level(s) but the taxonomy "
                f"declares {len(levels)} ({', '.join(levels)}); every leaf must sit at the same depth"
            )
        if path in seen:
            raise TaxonomyError(
                f"{source}: duplicate {levels[-1]} {path[-1]!r} under {format_path(path[:-1])!r}; "
                "sibling names must be unique: remove or rename one"
            )
        seen.add(path)


def _nest(paths: Iterable[Path_]) -> dict[str, Any]:
    """Leaf paths back to ``{a: {b: [c, ...]}}`` (lists at the last level)."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for part in path[:-2]:
            node = node.setdefault(part, {})
        node.setdefault(path[-2], []).append(path[-1]) if len(path) > 1 else node.setdefault(path[0], None)
    return tree


# ---- file formats -----------------------------------------------------------------------------
def read_taxonomy(path: Path) -> Taxonomy:
    """Dispatch on the suffix: ``.json``, ``.yaml``/``.yml``, anything else as text lines."""
    if not path.is_file():
        raise TaxonomyError(
            f"taxonomy file {str(path)!r} does not exist; pass --taxonomy PATH "
            "to a .json, .yaml or .txt taxonomy"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _from_document(_load_json(path), path)
    if suffix in (".yaml", ".yml"):
        return _from_document(_load_yaml(path), path)
    return _from_lines(path)


def _from_document(doc: Any, path: Path) -> Taxonomy:
    if isinstance(doc, Mapping) and "tree" in doc:
        levels = tuple(doc.get("levels") or DEFAULT_LEVELS)
        return Taxonomy.from_tree(doc["tree"], levels, str(doc.get("name") or path.stem), str(path))
    if isinstance(doc, Mapping):
        return Taxonomy.from_tree(doc, DEFAULT_LEVELS, path.stem, str(path))
    raise TaxonomyError(
        f"{path}: expected a mapping of category -> subcategories (or "
        f'{{"name", "levels", "tree"}}), got {type(doc).__name__}'
    )


def _no_duplicate_keys(source: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise TaxonomyError(
                    f"{source}: duplicate key {key!r}; sibling names must be "
                    "unique: merge the two entries or rename one"
                )
            out[key] = value
        return out

    return hook


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as err:
        raise TaxonomyError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _load_yaml(path: Path) -> Any:
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def construct(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[str, Any]:
        pairs = [(loader.construct_object(k), loader.construct_object(v, deep=True)) for k, v in node.value]
        return _no_duplicate_keys(path)(pairs)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise TaxonomyError(f"{path}: not valid YAML ({err})") from None


def _from_lines(path: Path) -> Taxonomy:
    """One ``Category > Subcategory`` per line; blank lines and ``#`` comments are skipped."""
    paths = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = tuple(part.strip() for part in line.split(">"))
        if any(not part for part in parts):
            raise TaxonomyError(
                f"{path}, line {number}: empty name in {line.strip()!r}; write 'Category > Subcategory'"
            )
        paths.append(parts)
    depth = len(paths[0]) if paths else 2
    levels = DEFAULT_LEVELS if depth == 2 else tuple(f"level{i + 1}" for i in range(depth))
    return Taxonomy(tuple(paths), levels, path.stem, str(path))
