"""Every raw reply is checked against the taxonomy: parsed, repaired (and the repair counted), or
rejected with its reason. Nothing else ever becomes a label.

Statuses: ``ok`` (a canonical path as is), ``repaired`` (case, spacing, separator, synonym,
missing parent or broken JSON fixed), ``none`` (the model says no category fits: a valid
outcome), ``rejected`` (unparseable, empty, not in the taxonomy, subcategory under the wrong
category, ambiguous).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from shelver.labeling.backends.base import NONE_ANSWER
from shelver.labeling.resolver import PathResolver
from shelver.taxonomy import Path_

ANSWER_KEYS = ("path", "category", "label", "answer")
_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_PATH_FIELD = re.compile(r'"(?:path|category|label|answer)"\s*:\s*"([^"\n]*)"?', re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass(frozen=True)
class Verdict:
    status: str
    path: Path_ | None = None
    repairs: tuple[str, ...] = ()
    reason: str = ""
    # a valid path the model chose from outside its shortlist (allowed, but worth counting)
    off_shortlist: bool = False

    @property
    def answered(self) -> bool:
        """A usable vote: a path or an explicit none."""
        return self.status in ("ok", "repaired", "none")


def validate(text: str, resolver: PathResolver, choices: tuple[Path_, ...] = ()) -> Verdict:
    """Parse, repair and check one raw reply."""
    answer, repairs, problem = extract_answer(text)
    if problem:
        return Verdict("rejected", reason=problem)
    if answer is None or answer.strip().casefold() in (NONE_ANSWER, "null", "none of the above"):
        return Verdict("none", repairs=repairs)
    resolution = resolver.resolve(answer)
    if not resolution.ok:
        return Verdict("rejected", reason=f"{resolution.reason} (answer {answer[:80]!r})")
    repairs = tuple(dict.fromkeys(repairs + resolution.repairs))
    off = bool(choices) and resolution.path not in choices
    return Verdict("repaired" if repairs else "ok", resolution.path, repairs, off_shortlist=off)


def extract_answer(text: str) -> tuple[str | None, tuple[str, ...], str]:
    """``(answer, repairs, problem)`` from a reply that should be ``{"path": "..."}``."""
    stripped = _FENCE.sub("", (text or "").strip()).strip()
    if not stripped:
        return None, (), "empty reply"
    try:
        return _from_json(json.loads(stripped), ())
    except json.JSONDecodeError:
        pass
    for candidate in _OBJECT.findall(stripped):
        try:
            return _from_json(json.loads(candidate), ("json",))
        except json.JSONDecodeError:
            continue
    field = _PATH_FIELD.search(stripped)
    if field:
        return field.group(1), ("json",), ""
    if "\n" not in stripped and "{" not in stripped and len(stripped) <= 120:
        return (
            stripped.strip("\"'. "),
            ("json",),
            "",
        )  # a bare path: the format was wrong, the answer may not be
    return None, (), f'unparseable reply (expected {{"path": ...}}): {stripped[:80]!r}'


def _from_json(value: object, repairs: tuple[str, ...]) -> tuple[str | None, tuple[str, ...], str]:
    if isinstance(value, str):
        return value, (*repairs, "json"), ""
    if not isinstance(value, dict):
        return None, (), f"reply is JSON {type(value).__name__}, not an object with 'path'"
    for key in ANSWER_KEYS:
        if key in value:
            answer = value[key]
            if answer is None or isinstance(answer, str):
                return answer, repairs if key == "path" else (*repairs, "json"), ""
            return None, (), f"'{key}' is {type(answer).__name__}, not a string"
    return None, (), f"reply has no 'path' key (keys: {', '.join(map(str, value))[:80]})"
