"""Review in Label Studio: export tasks with the taxonomy as a two-level choice, annotate, import;
the human label wins. The slow test checks both files with the real label-studio-sdk."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from shelver.cli import main
from shelver.errors import DataError
from shelver.labeling import LabelStore
from shelver.labeling.label_studio import labeling_config, read_export
from shelver.taxonomy import Taxonomy

QUERIES = ["red sneakers", "tan chelsea boots", "school backpack", "leather handbag", "white tank top"]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def store(tiny_files: dict[str, Path], tmp_path: Path) -> Path:
    log, path = tmp_path / "log.csv", tmp_path / "labels.db"
    pd.DataFrame({"text": QUERIES, "count": range(len(QUERIES), 0, -1)}).to_csv(log, index=False)
    args = ["--taxonomy", tiny_files["taxonomy"], "--log", log, "--out", path, "--encoder", "hashing"]
    result = invoke("label", *args, "--quiet")
    assert result.exit_code == 0, result.output
    return path


def export_tasks(store: Path, out: Path) -> list[dict]:
    result = invoke("labels", "export", "--store", store, "--out", out, "--format", "label-studio")
    assert result.exit_code == 0, result.output
    assert f"wrote {len(QUERIES)} Label Studio tasks" in result.output
    return json.loads(out.read_text())


def test_labeling_config_is_the_taxonomy_as_a_two_level_choice(taxonomy: Taxonomy) -> None:
    root = ET.fromstring(labeling_config(taxonomy))
    tree = root.find("Taxonomy")
    assert tree is not None and tree.get("leafsOnly") == "true" and tree.get("toName") == "text"
    paths = [
        (category.get("value"), leaf.get("value")) for category in tree for leaf in category.findall("Choice")
    ]
    assert paths == list(taxonomy.paths)  # "Accessories" under two categories: paths, not names
    assert [c.get("value") for c in root.find("Choices")] == ["none"]


def test_tasks_carry_the_stored_labels_as_pre_annotations(store: Path, tmp_path: Path) -> None:
    tasks = export_tasks(store, tmp_path / "tasks.json")
    assert (tmp_path / "tasks.label_config.xml").is_file()
    with LabelStore(store, create=False) as opened:
        stored = {row["query"]: row for row in opened.labels()}
    assert sorted(t["data"]["text"] for t in tasks) == sorted(QUERIES)
    for task in tasks:
        label = stored[task["data"]["text"]]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == label["source"] == task["data"]["source"]
        assert prediction["score"] == pytest.approx(label["confidence"])
        (result,) = prediction["result"]
        assert " > ".join(result["value"]["taxonomy"][0]) == label["path"]


def test_a_trained_model_adds_its_answer(store: Path, hashing_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    result = invoke(
        "labels",
        "export",
        "--store",
        store,
        "--out",
        out,
        "--format",
        "label-studio",
        "--model",
        hashing_model_dir,
    )
    assert result.exit_code == 0, result.output
    for task in json.loads(out.read_text()):
        labeler, model = task["predictions"]
        assert labeler["model_version"] == task["data"]["source"]
        assert model["model_version"] == f"shelver:{hashing_model_dir.name}" and 0 <= model["score"] <= 1
        (path,) = model["result"][0]["value"]["taxonomy"]
        assert len(path) == 2 and path[0] in {"Shoes", "Bags", "Tops"}


def test_model_without_label_studio_is_a_usage_error(
    store: Path, hashing_model_dir: Path, tmp_path: Path
) -> None:
    result = invoke(
        "labels", "export", "--store", store, "--out", tmp_path / "t.csv", "--model", hashing_model_dir
    )
    assert result.exit_code == 2 and "--model pre-annotates Label Studio tasks" in result.output


def annotated(tasks: list[dict], answers: dict[str, list[dict]]) -> list[dict]:
    """A Label Studio JSON export: the tasks with ids and the given annotations."""
    return [
        {**task, "id": i + 1, "annotations": answers.get(task["data"]["text"], [])}
        for i, task in enumerate(tasks)
    ]


def pick(path: list[str], when: str = "2026-01-01T00:00:00Z", cancelled: bool = False) -> dict:
    value = {"taxonomy": [path]}
    result = {"from_name": "path", "to_name": "text", "type": "taxonomy", "value": value}
    return {"result": [result], "was_cancelled": cancelled, "updated_at": when}


NO_SHELF = {
    "result": [
        {"from_name": "verdict", "to_name": "text", "type": "choices", "value": {"choices": ["none"]}}
    ],
    "was_cancelled": False,
    "updated_at": "2026-01-01T00:00:00Z",
}


def test_round_trip_the_human_label_wins(store: Path, tmp_path: Path) -> None:
    tasks = export_tasks(store, tmp_path / "tasks.json")
    answers = {
        "red sneakers": [
            pick(["Tops", "Tops"], "2026-01-01T00:00:00Z"),
            pick(["Shoes", "Boots"], "2026-01-02"),
        ],
        "school backpack": [NO_SHELF],
        "leather handbag": [pick(["Bags", "Accessories"], cancelled=True)],
    }
    export = tmp_path / "project-1-export.json"
    export.write_text(json.dumps(annotated(tasks, answers)))
    result = invoke("labels", "import", "--store", store, "--review", export)
    assert "imported 2 human labels" in result.output

    invoke("labels", "export", "--store", store, "--out", tmp_path / "train.csv", "--min-confidence", "0.99")
    rows = pd.read_csv(tmp_path / "train.csv")
    human = rows[rows["source"] == "human"]
    assert human[["text", "category", "subcategory"]].values.tolist() == [["red sneakers", "Shoes", "Boots"]]
    assert "school backpack" not in set(rows["text"])  # 'none': no shelf fits, never a training row
    with LabelStore(store, create=False) as opened:
        sources = {row["query"]: row["source"] for row in opened.labels()}
    assert sources["leather handbag"] != "human"  # a cancelled annotation is no label


def test_a_path_outside_the_taxonomy_names_the_task(taxonomy: Taxonomy, tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    task = {"id": 7, "data": {"text": "red sneakers"}, "annotations": [pick(["Bags", "Sneakers"])]}
    export.write_text(json.dumps([task]))
    with pytest.raises(DataError, match=r"export.json, task 7 \('red sneakers'\): .*labeling config"):
        read_export(export, taxonomy)


def test_an_export_that_is_not_a_list_of_tasks_is_refused(taxonomy: Taxonomy, tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"tasks": []}))
    with pytest.raises(DataError, match="holds a dict, not a list of tasks"):
        read_export(export, taxonomy)


# --- the real label-studio-sdk, in a venv of its own (it pins NumPy below ours) ---------------

SDK_CHECK = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface

config, tasks_file, out = sys.argv[1:]
interface = LabelInterface(open(config).read())
tasks = json.load(open(tasks_file))
for task in tasks:
    for prediction in task.get("predictions", []):
        errors = interface.validate_prediction(prediction, return_errors=True)
        assert not errors, (task["data"], errors)
def region(name, kind, value):
    return {"result": [{"from_name": name, "to_name": "text", "type": kind, "value": value}]}
# the SDK reads the choices from the config: a name it lacks, or an answer other than 'none', is refused
assert not interface.validate_prediction(region("path", "taxonomy", {"taxonomy": [["Shoes", "Nope"]]}))
assert not interface.validate_prediction(region("verdict", "choices", {"choices": ["maybe"]}))
# annotate: every task takes its pre-annotation, the first one a different path
for i, task in enumerate(tasks):
    result = [dict(r) for p in task.get("predictions", [])[:1] for r in p["result"]]
    if i == 0 or not result:
        result = [{"from_name": "path", "to_name": "text", "type": "taxonomy",
                   "value": {"taxonomy": [["Shoes", "Boots"]]}}]
    annotation = {"result": result, "was_cancelled": False, "updated_at": "2026-01-01T00:00:00Z"}
    assert interface.validate_annotation(annotation), result
    task.update(id=i + 1, annotations=[annotation])
json.dump(tasks, open(out, "w"))
"""


@pytest.mark.slow
def test_label_studio_sdk_accepts_the_export_and_its_annotations_import(store: Path, tmp_path: Path) -> None:
    venv = tmp_path / "sdk-venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "label-studio-sdk"], check=True, timeout=900)
    tasks = export_tasks(store, tmp_path / "tasks.json")
    out = tmp_path / "export.json"
    config = tmp_path / "tasks.label_config.xml"
    done = subprocess.run(
        [python, "-c", SDK_CHECK, config, tmp_path / "tasks.json", out], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = invoke("labels", "import", "--store", store, "--review", out)
    assert f"imported {len(tasks)} human labels" in result.output
    with LabelStore(store, create=False) as opened:
        first = next(row for row in opened.labels() if row["query"] == tasks[0]["data"]["text"])
    assert (first["source"], first["path"]) == ("human", "Shoes > Boots")
