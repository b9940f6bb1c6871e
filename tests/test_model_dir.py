"""The model directory: no pickle, hashes checked, taxonomy changes refused."""

from __future__ import annotations

import json

import pytest

from shelver import HierarchicalClassifier, Taxonomy, load_model
from shelver.errors import ModelDirError


@pytest.fixture(scope="module")
def saved(tmp_path_factory, taxonomy, tiny_xy):
    texts, y = tiny_xy
    path = tmp_path_factory.mktemp("m") / "model"
    HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing:256", lexical=False).fit(texts, y).save(path)
    return path


def test_layout_and_manifest(saved, tiny_xy):
    names = sorted(p.name for p in saved.iterdir())
    assert names == [
        "README.md",
        "calibration.json",
        "config.json",
        "heads.safetensors",
        "manifest.json",
        "taxonomy.json",
    ]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["training"]["n"] == len(tiny_xy[0])
    assert manifest["training"]["counts"]["Tops > Tops"] == 14
    hashed = {"config.json", "taxonomy.json", "heads.safetensors", "calibration.json", "README.md"}
    assert set(manifest["files"]) == hashed
    assert json.loads((saved / "config.json").read_text())["params"]["encoder"] == "hashing:256"


def test_tampered_file_is_refused(saved, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    config = json.loads((copy / "config.json").read_text())
    config["params"]["head"] = "flat"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="config.json was modified after the model was saved"):
        load_model(copy)


def test_a_corrupt_file_is_reported_as_modified_not_as_its_parser_error(saved, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    (copy / "heads.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelDirError, match="heads.safetensors was modified after the model was saved"):
        load_model(copy)


def test_different_taxonomy_is_refused(saved, taxonomy):
    load_model(saved, taxonomy=taxonomy)  # the same tree loads
    grown = Taxonomy.from_paths([*taxonomy.paths, ("Shoes", "Clogs")])
    with pytest.raises(
        ModelDirError,
        match=r"different taxonomy \(1 path\(s\) added, 0 removed since, "
        r"e.g. 'Shoes > Clogs'",
    ):
        load_model(saved, taxonomy=grown)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist; train one with"),
        ("empty", r"not a shelver model directory \(no manifest.json\)"),
        ("incomplete", "is incomplete: heads.safetensors is missing"),
    ],
)
def test_wrong_model_directories(saved, tmp_path, setup, message):
    import shutil

    path = tmp_path / "m"
    if setup == "empty":
        path.mkdir()
    elif setup == "incomplete":
        shutil.copytree(saved, path)
        (path / "heads.safetensors").unlink()
    with pytest.raises(ModelDirError, match=message):
        load_model(path)
