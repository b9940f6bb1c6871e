"""Where the benchmarks leave their figures: ``benchmarks/results/<name>.json`` and ``<name>.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, results: dict[str, Any], markdown: str) -> None:
    """The results as indented JSON and their Markdown table, side by side."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
