"""Review in Label Studio: the store's labels out as tasks, a Label Studio JSON export back in.

``labeling_config`` is the project's labeling interface: the query, and the taxonomy as a
two-level choice (a ``<Taxonomy>`` tag whose categories hold their subcategories; only a
subcategory can be picked, so every answer is a full path), plus a ``none`` choice for a query
no shelf fits. ``tasks`` gives one task per stored query, pre-annotated with its machine label
(the LLM's or the embedding labeler's: ``model_version`` is the label's source, ``score`` its
confidence) and, given a trained model, with the model's answer as a second prediction.
``read_export`` turns a Label Studio JSON export into the ``(query, path or None)`` pairs that
``LabelStore.record_human`` stores as human labels, which outrank every machine label.
Standard library only; the real ``label-studio-sdk`` checks both formats in a slow test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from shelver.errors import DataError
from shelver.labeling.resolver import PathResolver
from shelver.labeling.store import LabelStore
from shelver.taxonomy import Path_, Taxonomy, parse_path
from shelver.text_keys import text_key

# the names that tie the labeling config, the pre-annotations and the export together
TEXT, PATH, VERDICT = "text", "path", "verdict"
NONE_CHOICE = "none"


def labeling_config(taxonomy: Taxonomy) -> str:
    """The Label Studio labeling interface (XML) for ``taxonomy``: a two-level choice."""
    categories = [_category_xml(category, taxonomy) for category in taxonomy.categories]
    return "\n".join(
        [
            "<View>",
            f'  <Text name="{TEXT}" value="${TEXT}"/>',
            f'  <Taxonomy name="{PATH}" toName="{TEXT}" leafsOnly="true" maxUsages="1">',
            *categories,
            "  </Taxonomy>",
            f'  <Choices name="{VERDICT}" toName="{TEXT}" choice="single">',
            f'    <Choice value="{NONE_CHOICE}" hint="no shelf of the taxonomy fits this query"/>',
            "  </Choices>",
            "</View>",
            "",
        ]
    )


def _category_xml(category: str, taxonomy: Taxonomy) -> str:
    leaves = [
        f"      <Choice value={quoteattr(path[-1])}/>" for path in taxonomy.paths if path[0] == category
    ]
    return "\n".join([f"    <Choice value={quoteattr(category)}>", *leaves, "    </Choice>"])


def tasks(store: LabelStore, model: Any = None, model_version: str = "shelver") -> list[dict[str, Any]]:
    """One task per stored query, most frequent first, pre-annotated with its label and, given a
    trained ``model``, with the model's best path too (``model_version``; score: its joint
    confidence), so a reviewer sees where the labeler and the model part."""
    found = [_task(label) for label in store.labels()]
    if model is not None:
        answers = model.classify([task["data"][TEXT] for task in found])
        for task, answer in zip(found, answers, strict=True):
            task.setdefault("predictions", []).append(_model_prediction(answer, model_version))
    return found


def _model_prediction(answer: Any, model_version: str) -> dict[str, Any]:
    value = {"taxonomy": [list(answer.candidate)]}
    result = {"from_name": PATH, "to_name": TEXT, "type": "taxonomy", "value": value}
    return {"model_version": model_version, "score": float(answer.confidence[-1]), "result": [result]}


def _task(label: dict[str, Any]) -> dict[str, Any]:
    data = {TEXT: label["query"], "count": label["count"], "label": label["path"], "source": label["source"]}
    task: dict[str, Any] = {"data": data}
    if label["status"] in ("labeled", "none"):
        task["predictions"] = [_prediction(label)]
    return task


def _prediction(label: dict[str, Any]) -> dict[str, Any]:
    if label["status"] == "none":
        result = {"from_name": VERDICT, "type": "choices", "value": {"choices": [NONE_CHOICE]}}
    else:
        result = {
            "from_name": PATH,
            "type": "taxonomy",
            "value": {"taxonomy": [list(parse_path(label["path"]))]},
        }
    return {
        "model_version": label["source"],
        "score": float(label["confidence"] or 0.0),
        "result": [{**result, "to_name": TEXT}],
    }


def write_tasks(
    store: LabelStore, out: str | Path, model: Any = None, model_version: str = "shelver"
) -> tuple[Path, Path, int]:
    """``out`` (tasks, JSON) and the labeling config beside it (``*.label_config.xml``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    found = tasks(store, model, model_version)
    config = out.with_name(out.stem + ".label_config.xml")
    config.write_text(labeling_config(store.taxonomy()), encoding="utf-8")
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(found, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    partial.replace(out)
    return out, config, len(found)


def read_export(path: str | Path, taxonomy: Taxonomy) -> list[tuple[str, Path_ | None]]:
    """``(query, path or None)`` per annotated task of a Label Studio JSON export; tasks with no
    annotation (or only cancelled ones) are skipped. The newest annotation of a task wins."""
    path = Path(path)
    resolver = PathResolver(taxonomy)
    reviewed = []
    for task in _read_json(path):
        annotation = _latest(task)
        if annotation is not None:
            text = text_key(str(task.get("data", {}).get(TEXT, "")))
            reviewed.append((text, _answer(annotation, resolver, path, task)))
    return reviewed


def _read_json(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"Label Studio export {str(path)!r} does not exist; export the project as JSON")
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path.name} is not JSON ({err}); export the Label Studio project as JSON") from None
    if not isinstance(found, list):
        raise DataError(f"{path.name} holds a {type(found).__name__}, not a list of tasks; export as JSON")
    return found


def _latest(task: dict[str, Any]) -> dict[str, Any] | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and a.get("result")]
    return max(done, key=lambda a: str(a.get("updated_at") or a.get("created_at") or "")) if done else None


def _answer(
    annotation: dict[str, Any], resolver: PathResolver, path: Path, task: dict[str, Any]
) -> Path_ | None:
    for result in annotation["result"]:
        value = result.get("value", {})
        if result.get("type") == "choices" and NONE_CHOICE in value.get("choices", []):
            return None
        if result.get("type") == "taxonomy" and value.get("taxonomy"):
            return _resolve(" > ".join(value["taxonomy"][0]), resolver, path, task)
    raise DataError(
        f"{_where(path, task)}: its annotation picks no path and not '{NONE_CHOICE}'; annotate it, or skip "
        "the task in Label Studio"
    )


def _resolve(answer: str, resolver: PathResolver, path: Path, task: dict[str, Any]) -> Path_:
    resolution = resolver.resolve(answer)
    if not resolution.ok:
        raise DataError(
            f"{_where(path, task)}: {resolution.reason}; the project's labeling config must be the one "
            "'shelver labels export --format label-studio' wrote"
        )
    return resolution.path


def _where(path: Path, task: dict[str, Any]) -> str:
    return f"{path.name}, task {task.get('id', '?')} ({task.get('data', {}).get(TEXT)!r})"
