"""The configuration's defaults and their reasons, read off the dataclasses of shelver.config.

The comment written above a field is its reason; ``--show-config`` prints a resolved
configuration as commented TOML and the docs' reference tables (docs/hooks) render the same
comments, so a default and its reason are written once, in the dataclass.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
from typing import Any


def field_comments(cls: type) -> dict[str, str]:
    """The comment lines directly above each field of ``cls``, joined into one sentence; a field
    right under another with no comment of its own shares its neighbour's (``"as above"``)."""
    lines, _ = inspect.getsourcelines(cls)
    tree = ast.parse("".join(lines))
    comments: dict[str, str] = {}
    previous_end = -1
    for node in tree.body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment = _comment_above(lines, node.lineno - 1)
            shares = not comment and node.lineno - 1 == previous_end
            comments[node.target.id] = "as above" if shares else comment
            previous_end = node.end_lineno or node.lineno
    return comments


def _comment_above(lines: list[str], index: int) -> str:
    found: list[str] = []
    while index > 0 and lines[index - 1].strip().startswith("#"):
        index -= 1
        found.insert(0, lines[index].strip().lstrip("#").strip())
    return " ".join(found)


def toml_value(value: Any) -> str:
    """A value as it is written in a TOML file or after ``--set``."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def commented_toml(config: Any, prefix: str = "") -> str:
    """``config`` (a dataclass instance) as TOML that loads back to it: each key under the comment
    that gives its reason, nested dataclasses as ``[sections]``; an unset (None) key is commented
    out, as TOML has no null."""
    comments = field_comments(type(config))
    nested = [f for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))]
    lines = []
    for spec in (f for f in dataclasses.fields(config) if f not in nested):
        if comments[spec.name] not in ("", "as above"):
            lines += textwrap.wrap(comments[spec.name], 100, initial_indent="# ", subsequent_indent="# ")
        value = getattr(config, spec.name)
        lines.append(f"# {spec.name} = (none)" if value is None else f"{spec.name} = {toml_value(value)}")
    blocks = ["\n".join(lines)] if lines else []
    for spec in nested:
        key = f"{prefix}{spec.name}"
        blocks.append(f"[{key}]\n" + commented_toml(getattr(config, spec.name), f"{key}."))
    return "\n\n".join(blocks)
