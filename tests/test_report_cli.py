"""The CLI of issue 4 end to end on the tiny data: train with a target precision, calibrate
without retraining, predict with decisions, evaluate with metrics.json and report.html."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shelver.cli import main

HASHING = ("--set", "encoder.name=hashing", "--set", "head.C=0.3", "--quiet")


@pytest.fixture(scope="module")
def trained(tiny_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    args = ["train", "--taxonomy", str(tiny_files["taxonomy"]), "--train", str(tiny_files["train"])]
    args += ["--valid", str(tiny_files["valid"]), "--out", str(out), "--target-precision", "0.9", *HASHING]
    # the point estimate: 36 valid rows cannot certify 0.9 (test_default_thresholds_are_certified)
    args += ["--set", "decision.delta=none"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_target_precision_needs_valid(tiny_files, tmp_path):
    args = ["train", "--taxonomy", str(tiny_files["taxonomy"]), "--train", str(tiny_files["train"])]
    result = CliRunner().invoke(
        main, [*args, "--out", str(tmp_path / "m"), "--target-precision", "0.9", *HASHING]
    )
    assert result.exit_code == 1
    assert "needs validation data to choose thresholds on" in result.output
    assert "Traceback" not in result.output


def test_train_with_target_precision_stores_thresholds(trained):
    stored = json.loads((trained / "calibration.json").read_text())
    assert stored["fitted_on"]["target_precision"] == 0.9
    assert 0 < stored["thresholds"]["level2"] <= 1
    assert stored["temperature"]["level1"] > 0
    assert (trained / "valid" / "report.html").is_file()


def test_default_thresholds_are_certified_and_say_so(trained, tiny_files):
    args = ["calibrate", "--model", str(trained), "--valid", str(tiny_files["valid"]), "--delta", "0.1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    fitted_on = json.loads((trained / "calibration.json").read_text())["fitted_on"]
    assert fitted_on["method"] == "certified" and fitted_on["delta"] == 0.1
    assert "labeled rows would" in result.output or "certified precision" in result.output
    point = CliRunner().invoke(main, [*args[:5], "--point-estimate"])
    assert point.exit_code == 0, point.output
    assert json.loads((trained / "calibration.json").read_text())["fitted_on"]["method"] == "point"


def test_calibrate_retunes_without_retraining(trained, tiny_files):
    manifest = json.loads((trained / "manifest.json").read_text())
    before = json.loads((trained / "calibration.json").read_text())["thresholds"]
    args = ["calibrate", "--model", str(trained), "--valid", str(tiny_files["valid"])]
    result = CliRunner().invoke(main, [*args, "--thresholds", "0.6,0.8"])
    assert result.exit_code == 0, result.output
    after = json.loads((trained / "manifest.json").read_text())
    assert after["files"]["heads.safetensors"] == manifest["files"]["heads.safetensors"]  # same weights
    assert json.loads((trained / "calibration.json").read_text())["thresholds"] == {
        "level1": 0.6,
        "level2": 0.8,
    }
    result = CliRunner().invoke(main, [*args, "--target-precision", "0.9"])
    assert result.exit_code == 0, result.output
    assert json.loads((trained / "calibration.json").read_text())["thresholds"] == before
    bad = CliRunner().invoke(main, [*args, "--target-precision", "0.9", "--thresholds", "0.1,0.2"])
    assert bad.exit_code == 1 and "not both" in bad.output


def test_predict_outputs_decisions(trained, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("red boots\nblue\nzzz qqq\n")
    result = CliRunner().invoke(main, ["predict", "--model", str(trained), "--input", str(queries)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert result.stderr.startswith("thresholds")  # what the decisions promise, on stderr
    for row in rows:
        assert row["decision"] in ("full", "category", "abstain") and row["reason"]
        assert row["paths"] == ([] if row["decision"] == "abstain" else [row["path"]])
    assert rows[0]["path"] == ["Shoes", "Boots"] and rows[0]["decision"] == "full"


def test_evaluate_writes_metrics_and_html_report(trained, tiny_files, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(trained), "--data", str(tiny_files["test"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["coverage_at_precision"]["level1"]) == {"0.9", "0.95", "0.99"}
    assert set(metrics["ece"]) == {"level1", "level2"}
    assert 0 <= metrics["ece"]["level2"] <= 1
    assert sum(metrics["decisions"].values()) == metrics["n"]
    page = (out / "report.html").read_text()
    for png in ("risk_coverage.png", "reliability.png", "per_group_accuracy.png"):
        assert f'src="{png}"' in page
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Worst subcategories" in page and "Withheld answers" in page


def test_multi_label_train_and_evaluate(tiny_files, tmp_path):
    train = tmp_path / "train.csv"
    lines = tiny_files["train"].read_text().splitlines()
    rows = ["text,path"] + [
        f"{line.split(',')[0]},{line.split(',')[1]} > {line.split(',')[2]}" for line in lines[1:]
    ]
    rows += [
        f'{c} gift set,"Bags > Accessories | Tops > Accessories"' for c in ("red", "blue", "green", "pink")
    ]
    train.write_text("\n".join(rows) + "\n")
    out = tmp_path / "m"
    args = ["train", "--taxonomy", str(tiny_files["taxonomy"]), "--train", str(train), "--valid", str(train)]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--multi-label", *HASHING])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "valid" / "metrics.json").read_text())
    assert metrics["multi_label"]["n_multi_label_texts"] == 4
    assert 0 <= metrics["multi_label"]["example_f1"] <= 1
