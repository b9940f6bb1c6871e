"""mkdocs hook: reference tables rendered from the code, so nothing is written twice.

A line ``<!-- config-reference: shelver.config:TrainConfig -->`` in a page becomes one table per
section: each field's key, its default and the comment written above it in the source. The
dataclasses are the one place a default and its reason live; the docs read them there.
A line ``<!-- service-settings -->`` becomes the table of the service's ``SHELVER_*`` variables,
from ``shelver.service.settings.Settings`` in the same way.
A line ``<!-- benchmark-scripts -->`` becomes a table of ``benchmarks/*.py``: each script's first
docstring paragraph and the result pages it wrote.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

from shelver.config_reference import field_comments, toml_value

MARKER = re.compile(r"^<!-- config-reference: ([\w.]+):(\w+) -->$", re.MULTILINE)
BENCHMARKS_MARKER = "<!-- benchmark-scripts -->"
SETTINGS_MARKER = "<!-- service-settings -->"
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def render(cls: type) -> str:
    """Markdown for the defaults of ``cls``: a table of its own fields, a section per nested one."""
    return render_instance(cls(), "")


def render_instance(instance: Any, prefix: str) -> str:
    """The table of ``instance``'s plain fields (keys under ``prefix``), then its nested sections;
    an instance, not a class, so a parent's own default for a section shows."""
    comments = field_comments(type(instance))
    plain = [
        s for s in dataclasses.fields(instance) if not dataclasses.is_dataclass(getattr(instance, s.name))
    ]
    nested = [s for s in dataclasses.fields(instance) if s not in plain]
    rows = [
        f"| `{prefix}{s.name}` | `{toml_value(getattr(instance, s.name))}` | {_cell(comments[s.name])} |"
        for s in plain
    ]
    table = "\n".join(["| key | default | why |", "| --- | --- | --- |", *rows]) if rows else ""
    sections = [_section(f"{prefix}{s.name}", getattr(instance, s.name), comments[s.name]) for s in nested]
    return "\n\n".join(part for part in [table, *sections] if part) + "\n"


def _section(key: str, value: Any, comment: str) -> str:
    why = f"{_cell(comment)}\n\n" if comment else ""
    return f"### `[{key}]`\n\n{why}{render_instance(value, f'{key}.')}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def expand(markdown: str) -> str:
    """Replace every marker line of a page with its rendered reference."""

    def table(match: re.Match[str]) -> str:
        cls = getattr(importlib.import_module(match.group(1)), match.group(2))
        return render(cls)

    markdown = MARKER.sub(table, markdown)
    for marker, render_table in ((BENCHMARKS_MARKER, benchmark_table), (SETTINGS_MARKER, settings_table)):
        markdown = markdown.replace(marker, render_table()) if marker in markdown else markdown
    return markdown


def settings_table() -> str:
    """One row per service setting: its variable, its default and the comment above it."""
    from shelver.service.settings import PREFIX, Settings

    comments = field_comments(Settings)
    rows = ["| variable | default | |", "| --- | --- | --- |"]
    for spec in dataclasses.fields(Settings):
        variable, why = f"{PREFIX}{spec.name.upper()}", _cell(comments[spec.name])
        rows.append(f"| `{variable}` | {_setting(spec.default)} | {why} |")
    return "\n".join(rows) + "\n"


def _setting(default: Any) -> str:
    """A setting's default as its variable is written (``1``/``0`` for flags)."""
    if default is dataclasses.MISSING:
        return "required"
    if isinstance(default, bool):
        return str(int(default))
    return "unset" if default is None else str(default)


def benchmark_table(root: Path = BENCHMARKS) -> str:
    """One row per benchmark script (helpers starting with ``_`` left out)."""
    rows = ["| script | what it measures | results |", "| --- | --- | --- |"]
    for script in sorted(root.glob("[!_]*.py")):
        pages = sorted((root / "results").glob(f"{script.stem}*.md"))
        written = ", ".join(f"`{page.name}`" for page in pages) or "none committed"
        rows.append(f"| `{script.name}` | {_cell(_summary(script))} | {written} |")
    return "\n".join(rows) + "\n"


def _summary(script: Path) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand(markdown)
