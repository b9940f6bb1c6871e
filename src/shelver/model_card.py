"""A model directory's ``README.md``: a Hugging Face model card, rendered from the directory itself.

Everything on the card is read from the files beside it (``manifest.json``, ``taxonomy.json``,
``config.json``, ``calibration.json``, ``train_config.json`` and ``selection.json`` when present,
and ``<set>/metrics.json`` reports such as ``valid/``), so it is rewritten whenever one of them
changes (save, calibrate, export, an evaluation written into the directory) without the model in
memory. ``model_dir`` hashes it into the manifest like every other file. Nothing here is measured:
a figure the directory does not hold is written as "not measured".
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from shelver.calibration import HUMAN, title_like
from shelver.taxonomy import Taxonomy

CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
# the evaluations a reader looks for first; any other <set>/metrics.json follows them
NAMED_SETS = ("valid", "test")
# rows a leaf needs to leave the tail band of the report (shelver.report's bands)
TAIL_ROWS = 50
# level fields the card knows how to print, in this order; any other key follows them
LEVEL_FIELDS = (
    "method",
    "threshold",
    "coverage",
    "precision",
    "lower_bound",
    "certified",
    "n",
    "rows",
    "answered",
    "labels_needed",
)
FITTED_ON_KNOWN = (
    "fingerprint",
    "rows",
    "n",
    "source",
    "sources",
    "left_out",
    "human",
    "median_words",
    "target_precision",
    "delta",
    "method",
    "levels",
    "reference",  # the drift histograms (shelver.drift): for the service, not for readers
)


def render_model_card(root: Path, manifest: Mapping[str, Any]) -> str:
    """The card of the model directory ``root`` whose manifest is ``manifest``."""
    files = _ModelFiles(root)
    taxonomy = _taxonomy(root)
    fitted_on = (files.json("calibration.json") or {}).get("fitted_on")
    sections = [
        _front_matter(manifest, taxonomy),
        _title(manifest, taxonomy, fitted_on),
        _taxonomy_section(manifest, taxonomy),
        _training_section(manifest),
        _configuration_section(files),
        _metrics_section(files),
        _thresholds_section(files.json("calibration.json") or {}),
        _export_section(manifest, files),
        _use_section(fitted_on),
        _how_to_section(root),
    ]
    return "\n\n".join(section.rstrip() for section in sections) + "\n"


def _taxonomy(root: Path) -> Taxonomy | None:
    try:
        return Taxonomy.load(root / "taxonomy.json")
    except (OSError, ValueError):  # TaxonomyError is a ValueError; the card says it is missing
        return None


class _ModelFiles:
    """The directory's JSON files, read once each; a missing or unreadable file reads as None."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Any] = {}

    def json(self, name: str) -> Any:
        if name not in self._cache:
            try:
                self._cache[name] = json.loads((self.root / name).read_text())
            except (OSError, json.JSONDecodeError):
                self._cache[name] = None
        return self._cache[name]

    def metric_sets(self) -> dict[str, dict[str, Any]]:
        """``{set name: metrics}`` from ``<set>/metrics.json``: valid and test first."""
        found = [p.parent.name for p in sorted(self.root.glob(f"*/{METRICS_FILE}"))]
        order = [s for s in NAMED_SETS if s in found] + [s for s in found if s not in NAMED_SETS]
        sets = {name: self.json(f"{name}/{METRICS_FILE}") for name in order}
        return {name: m for name, m in sets.items() if isinstance(m, dict)}


# ---- front matter and title -------------------------------------------------------------------
def _front_matter(manifest: Mapping[str, Any], taxonomy: Taxonomy | None) -> str:
    meta = {
        "library_name": "shelver",
        "pipeline_tag": "text-classification",
        "tags": ["shelver", "text-classification", "hierarchical-classification", "e-commerce", "search"],
        "shelver": {
            "taxonomy": manifest.get("taxonomy", {}).get("name"),
            "taxonomy_hash": manifest.get("taxonomy", {}).get("hash"),
            "levels": list(taxonomy.levels) if taxonomy else None,
            "format_version": manifest.get("format_version"),
            "shelver_version": manifest.get("shelver_version"),
            "created": manifest.get("created"),
        },
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def _title(manifest: Mapping[str, Any], taxonomy: Taxonomy | None, fitted_on: Any) -> str:
    levels = " > ".join(taxonomy.levels) if taxonomy else "category > subcategory"
    name = manifest.get("taxonomy", {}).get("name") or "unnamed"
    return (
        f"# shelver model: {name}\n\n"
        f"Puts e-commerce search queries on a shelf of the **{name}** taxonomy ({levels}), "
        "or backs off to the category, or abstains, when its confidence is below the thresholds "
        f"below. {_threshold_verdict(fitted_on)}\n\n"
        f"Written by shelver {manifest.get('shelver_version', '?')} on {manifest.get('created', '?')}; "
        "every file of this directory, this card included, is hashed in `manifest.json`, and "
        "loading refuses a directory whose files changed."
    )


# ---- taxonomy and training data -----------------------------------------------------------------
def _taxonomy_section(manifest: Mapping[str, Any], taxonomy: Taxonomy | None) -> str:
    if taxonomy is None:
        return "## Taxonomy\n\n`taxonomy.json` is missing or unreadable: this directory will not load."
    first, last = taxonomy.levels[0], taxonomy.levels[-1]
    rows = [
        ("name", taxonomy.name),
        ("levels", " > ".join(taxonomy.levels)),
        (f"{first} nodes", len(taxonomy.categories)),
        (f"{last} nodes (leaves)", len(taxonomy)),
        ("hash", f"`{taxonomy.hash}`"),
    ]
    per_category = ", ".join(f"{c} ({len(taxonomy.leaves_under(c))})" for c in taxonomy.categories)
    return (
        "## Taxonomy\n\n" + _table(("", "value"), rows) + f"\n\nLeaves per {first}: {per_category}.\n\n"
        "`load_model(DIR, taxonomy=...)` refuses this model when your taxonomy differs (the hash "
        "covers the level names and every path, in order)."
    )


def _training_section(manifest: Mapping[str, Any]) -> str:
    training = manifest.get("training", {})
    counts: dict[str, int] = training.get("counts", {})
    values = sorted(counts.values())
    lines = [
        "## Training data",
        "",
        f"- **{training.get('n', 0):,} training rows** counted (synthetic rows, source "
        "`synthetic:*`, train but are not counted here); fingerprint of the texts and labels: "
        f"`{training.get('fingerprint')}`.",
        f"- By source: {_sources_line(training)}",
    ]
    if values:
        tail = sum(1 for v in values if v < TAIL_ROWS)
        empty = sum(1 for v in values if v == 0)
        lines.append(
            f"- Rows per leaf: min {values[0]:,}, median {statistics.median(values):,.0f}, "
            f"max {values[-1]:,}; {tail} of {len(values)} leaves have fewer than {TAIL_ROWS} rows "
            f"(the tail), {empty} have none."
        )
        lines += ["", _table(("category", "rows", "leaves"), _category_rows(counts))]
    return "\n".join(lines)


def _sources_line(training: Mapping[str, Any]) -> str:
    sources = training.get("sources")
    if not sources:
        return "not recorded (the model was fitted without a `source` per row)."
    rows = ", ".join(f"{n:,} {name}" for name, n in sources.items())
    return f"{rows} (every row that trained, synthetic ones included)."


def _category_rows(counts: Mapping[str, int]) -> list[tuple[str, str, int]]:
    totals: dict[str, list[int]] = {}
    for path, n in counts.items():
        totals.setdefault(path.split(" > ")[0], []).append(int(n))
    return [(name, f"{sum(ns):,}", len(ns)) for name, ns in totals.items()]


# ---- configuration ------------------------------------------------------------------------------
def _configuration_section(files: _ModelFiles) -> str:
    config = files.json("config.json") or {}
    encoder = config.get("encoder", {})
    lines = [
        "## Configuration",
        "",
        f"Encoder `{encoder.get('spec')}` (fingerprint `{encoder.get('fingerprint')}`). "
        "The estimator's parameters (`config.json`):",
        "",
        _table(("parameter", "value"), _flatten(config.get("params", {}))),
    ]
    for name, what in (
        ("train_config.json", "The full training configuration"),
        ("selection.json", "How the configuration was chosen"),
    ):
        payload = files.json(name)
        if isinstance(payload, Mapping):
            lines += ["", f"{what} (`{name}`):", "", *_record_tables(payload)]
    return "\n".join(lines)


def _record_tables(payload: Mapping[str, Any]) -> list[str]:
    """A JSON record as a key/value table; each list of objects in it (e.g. the candidates a
    selection scored) as a table of its own, one row per object."""
    lists = {
        k: v
        for k, v in payload.items()
        if isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v)
    }
    rest = {k: v for k, v in payload.items() if k not in lists}
    out = [_table(("key", "value"), _flatten(rest))]
    for key, items in lists.items():
        columns = list(dict.fromkeys(k for item in items for k in item))
        rows = [tuple(_value(item.get(c)) for c in columns) for item in items]
        out += ["", f"`{key}`:", "", _table(tuple(columns), rows)]
    return out


def _flatten(payload: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", "1")]``; lists of dicts are numbered (``a.0.b``)."""
    if isinstance(payload, Mapping) and (payload or not prefix):
        return [row for k, v in payload.items() for row in _flatten(v, f"{prefix}{k}.")]
    if isinstance(payload, list) and payload and any(isinstance(v, Mapping) for v in payload):
        return [row for i, v in enumerate(payload) for row in _flatten(v, f"{prefix}{i}.")]
    return [(prefix.rstrip(".") or "value", _value(payload))]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return f"`{text}`" if text else '`""`'


# ---- metrics ------------------------------------------------------------------------------------
METRIC_COLUMNS = (
    ("n", ("n",)),
    ("L1 acc", ("level1", "accuracy")),
    ("L1 macro-F1", ("level1", "macro_f1")),
    ("L2 acc", ("level2", "accuracy")),
    ("L2 macro-F1", ("level2", "macro_f1")),
    ("L2 tail macro-F1", ("level2", "tail_macro_f1")),
    ("hier. F1", ("hierarchical_f1",)),
    ("L2 answered", ("selective", "level2", "coverage")),
    ("L2 acc. answered", ("selective", "level2", "selective_accuracy")),
)


def _metrics_section(files: _ModelFiles) -> str:
    sets = files.metric_sets()
    rows = [(name, *(_metric(sets[name], keys) for _, keys in METRIC_COLUMNS)) for name in sets]
    missing = [name for name in NAMED_SETS if name not in sets]
    lines = ["## Evaluation", ""]
    if rows:
        lines += [_table(("set", *(label for label, _ in METRIC_COLUMNS)), rows), ""]
        lines.append(
            "From each set's `metrics.json` in this directory (its `report.md` beside it). "
            "`valid` is the split the temperatures and thresholds were tuned on: its figures "
            "are optimistic."
        )
    if rows and missing:
        lines.append("")
    for name in missing:
        lines.append(f"- {name}: not measured (`shelver evaluate --model DIR --data ... --out DIR/{name}`).")
    return "\n".join(lines)


def _metric(metrics: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    value: Any = metrics
    for key in keys:
        if not isinstance(value, Mapping) or value.get(key) is None:
            return "n/a"
        value = value[key]
    return f"{value:,}" if isinstance(value, int) else f"{float(value):.3f}"


# ---- thresholds and what they were fitted on ------------------------------------------------------
def _human_labeled(fitted_on: Mapping[str, Any]) -> bool:
    """Whether people's labels set the thresholds; a record that does not say reads as no."""
    if "human" in fitted_on:
        return bool(fitted_on["human"])
    if fitted_on.get("sources"):
        return set(fitted_on["sources"]) == {HUMAN}
    return fitted_on.get("source") == HUMAN


def _threshold_verdict(fitted_on: Any) -> str:
    if not isinstance(fitted_on, Mapping) or not fitted_on:
        return (
            "**The thresholds are unverified on real queries:** the model was not calibrated "
            "(every level answers, or the thresholds were set by hand)."
        )
    if fitted_on.get("target_precision") is None:
        return (
            "**The thresholds are unverified on real queries:** temperatures were fitted, "
            "but no target precision chose the thresholds."
        )
    if not _human_labeled(fitted_on):
        return (
            "**The thresholds are unverified on real queries:** they were fitted on "
            f"{_sources_text(fitted_on)}, not on people's labels of real search queries."
        )
    words = fitted_on.get("median_words")
    if title_like(words):
        return (
            f"The thresholds were fitted on human labels with a median of {words:.0f} words: "
            "if those texts are product titles, **they are unverified on real queries**, whose "
            "precision will be lower."
        )
    return f"The thresholds were fitted on {_sources_text(fitted_on)}."


def _sources_text(fitted_on: Mapping[str, Any]) -> str:
    sources = fitted_on.get("sources")
    rows = fitted_on.get("rows", fitted_on.get("n"))
    if isinstance(sources, Mapping) and sources:
        return ", ".join(_rows_of(n, s) for s, n in sources.items())
    if fitted_on.get("source"):
        return _rows_of(rows, fitted_on["source"])
    return f"{rows if rows is not None else 'an unknown number of'} rows of unrecorded provenance"


def _rows_of(n: Any, source: str) -> str:
    count = f"{n:,}" if isinstance(n, int) else "some"
    return f"{count} human-labeled rows" if source == HUMAN else f"{count} rows labeled by {source}"


def _thresholds_section(calibration: Mapping[str, Any]) -> str:
    fitted_on = calibration.get("fitted_on")
    thresholds = calibration.get("thresholds", {})
    lines = ["## Thresholds and what they were fitted on", "", _threshold_verdict(fitted_on), ""]
    lines.append(
        "Thresholds in use: "
        + ", ".join(f"{level} {_value(v)}" for level, v in thresholds.items() if not isinstance(v, Mapping))
        + (" (multi-label: several paths may be answered)." if calibration.get("multi_label") else ".")
    )
    if isinstance(fitted_on, Mapping) and fitted_on:
        lines += ["", *_fitted_on_lines(fitted_on)]
    return "\n".join(lines)


def _fitted_on_lines(fitted_on: Mapping[str, Any]) -> list[str]:
    known = {
        "rows": _value(fitted_on.get("rows", fitted_on.get("n"))),
        "sources": _value(fitted_on.get("sources") or fitted_on.get("source")),
        "left out (machine labels, when human ones exist)": _value(fitted_on.get("left_out")),
        "human-labeled": _value(_human_labeled(fitted_on)),
        "median words per text": _value(fitted_on.get("median_words")),
        "target precision": _value(fitted_on.get("target_precision")),
        "method": _value(fitted_on.get("method")),
        "delta (chance the precision falls below the target)": _value(fitted_on.get("delta")),
        "fingerprint of the rows": _value(fitted_on.get("fingerprint")),
    }
    others = {k: v for k, v in fitted_on.items() if k not in FITTED_ON_KNOWN}
    rows = [(k, v) for k, v in known.items() if v != "`null`"] + _flatten(others)
    lines = [_table(("fitted on", "value"), rows)]
    levels = fitted_on.get("levels")
    if isinstance(levels, Mapping) and levels:
        lines += ["", _levels_table(levels)]
    return lines


def _levels_table(levels: Mapping[str, Any]) -> str:
    keys = [k for k in LEVEL_FIELDS if any(k in (fit or {}) for fit in levels.values())]
    keys += sorted({k for fit in levels.values() for k in (fit or {}) if k not in LEVEL_FIELDS})
    rows = [(level, *(_value((fit or {}).get(k)) for k in keys)) for level, fit in levels.items()]
    return _table(("level", *keys), rows)


# ---- export, use, limits --------------------------------------------------------------------------
def _export_section(manifest: Mapping[str, Any], files: _ModelFiles) -> str:
    spec = str(((files.json("config.json") or {}).get("encoder") or {}).get("spec", ""))
    onnx = manifest.get("exports", {}).get("onnx")
    lines = ["## Serving export", ""]
    if onnx is None and spec.startswith(("hashing", "static:", "onnx:")):
        lines.append(f"None needed: the encoder `{spec}` runs without torch.")
    elif onnx is None:
        lines.append("None yet: serving without torch needs `shelver export --model DIR`.")
    else:
        check = onnx.get("check", {})
        lines.append(
            f"ONNX encoder in `{onnx.get('directory', 'onnx')}/`, {onnx.get('quantization')}; its "
            f"predictions match PyTorch's on {_percent(check.get('agreement'))} of "
            f"{check.get('n', '?')} validation texts (refused below {_percent(check.get('min_agreement'))})."
        )
    return "\n".join(lines)


def _percent(value: Any) -> str:
    return f"{float(value):.2%}" if isinstance(value, int | float) else "?"


def _use_section(fitted_on: Any) -> str:
    words = fitted_on.get("median_words") if isinstance(fitted_on, Mapping) else None
    measured = f" (the calibration texts: median {words:.0f} words)" if isinstance(words, int | float) else ""
    return (
        "## Intended use and known limits\n\n"
        "- For: short e-commerce search queries (1-4 words) classified into this taxonomy, in "
        "the language and market of the training data. Every answer is a path of the taxonomy, "
        "a category alone (back-off), or an abstention, with the reason.\n"
        "- Titles are not queries: a model trained or calibrated on product titles (6+ words, "
        "brand and attribute rich) is less accurate on real queries, and thresholds fitted on "
        f"titles promise a precision that queries do not reach{measured}. Check it on labeled "
        "real queries (`shelver evaluate`) and calibrate on them (`shelver calibrate`).\n"
        "- Leaves with few training rows (the tail) are the least reliable; new products and "
        "paths outside the taxonomy cannot be answered, only abstained on.\n"
        "- Not for: decisions about people, or any taxonomy other than the one hashed above."
    )


def _how_to_section(root: Path) -> str:
    return (
        "## How to use\n\n"
        "```python\n"
        "import shelver\n\n"
        f'model = shelver.load_model("{root.name}")  # checks every file against manifest.json\n'
        'for prediction in model.classify(["red running shoes"]):\n'
        "    print(prediction.to_dict())  # path, confidence, decision, reason\n"
        "```\n\n"
        "Serve it over HTTP without torch (`pip install 'shelver[serve]'`):\n\n"
        "```bash\n"
        f"shelver serve --model {root.name}\n"
        "```"
    )


def _table(header: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
