"""The command line end to end, as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SHELVER = [sys.executable, "-m", "shelver.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SHELVER, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_files):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = run(
        "train",
        "--taxonomy",
        tiny_files["taxonomy"],
        "--train",
        tiny_files["train"],
        "--valid",
        tiny_files["valid"],
        "--out",
        out,
        "--set",
        "encoder.name=hashing",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "L2 acc" in result.stdout
    return out


def test_train_writes_model_config_and_valid_report(model_dir):
    assert json.loads((model_dir / "train_config.json").read_text())["encoder"]["name"] == "hashing"
    assert (model_dir / "valid" / "metrics.json").is_file()


def test_evaluate_writes_metrics(model_dir, tiny_files, tmp_path):
    result = run("evaluate", "--model", model_dir, "--data", tiny_files["test"], "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["n"] == 36
    assert metrics["level2"]["accuracy"] >= 0.9
    assert {"accuracy", "macro_f1", "tail_macro_f1"} <= set(metrics["level2"])
    assert 0.9 <= metrics["hierarchical_f1"] <= 1.0
    assert "## Worst subcategories" in (tmp_path / "r" / "report.md").read_text()


def test_predict_from_stdin_and_from_a_table(model_dir, tiny_files):
    result = run("predict", "--model", model_dir, stdin="black chelsea boots\n\nred tote bag\n")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [["Shoes", "Boots"], ["Bags", "Handbags"]]
    assert all(len(r["confidence"]) == 2 and r["text"] for r in rows)
    table = run("predict", "--model", model_dir, "--input", tiny_files["test"])
    assert len(table.stdout.splitlines()) == 36


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_column", "has no 'text' column"),
        ("empty_text", "row 2 has an empty 'text'"),
        ("unknown_label", "'Clogs' is not in the taxonomy under 'Shoes'"),
        ("empty_file", "cannot be read as .csv"),
        ("wrong_model", "not a shelver model directory"),
        ("bad_set", "unknown config key 'head.size'"),
    ],
)
def test_bad_input_is_one_clear_line(model_dir, tiny_files, tmp_path, case, message):
    data = tmp_path / "d.csv"
    contents = {
        "missing_column": "query,category,subcategory\nx,Shoes,Boots\n",
        "empty_text": "text,category,subcategory\nx,Shoes,Boots\n,Shoes,Boots\n",
        "unknown_label": "text,category,subcategory\nx,Shoes,Clogs\n",
        "empty_file": "",
        "wrong_model": "",
        "bad_set": "",
    }
    data.write_text(contents[case])
    if case == "wrong_model":
        result = run("evaluate", "--model", tmp_path, "--data", tiny_files["test"], "--out", tmp_path / "r")
    elif case == "bad_set":
        result = run(
            "train",
            "--taxonomy",
            tiny_files["taxonomy"],
            "--train",
            tiny_files["train"],
            "--out",
            tmp_path / "m",
            "--set",
            "head.size=3",
        )
    else:
        result = run(
            "train",
            "--taxonomy",
            tiny_files["taxonomy"],
            "--train",
            data,
            "--out",
            tmp_path / "m",
            "--set",
            "encoder.name=hashing",
            "--quiet",
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


# ---- the defaults: one home in the dataclasses, chosen on valid when "auto" ------------------
def _commands(group):
    import click

    for command in group.commands.values():
        yield from _commands(command) if isinstance(command, click.Group) else [command]


def test_every_config_option_default_is_its_dataclass_default():
    """A click option that mirrors a config key has that key's default; a drift fails here."""
    from shelver.cli import main
    from shelver.cli.common import ConfigOption
    from shelver.config import config_default

    mirrored = {
        param.name: param
        for command in _commands(main)
        for param in command.params
        if isinstance(param, ConfigOption)
    }
    for name, param in mirrored.items():
        assert param.default == config_default(param.config_key, param.section), (name, param.config_key)
    train = {p.name: p for p in main.commands["train"].params}
    assert {
        name: getattr(train[name], "config_key", None) for name in ("target_precision", "multi_label")
    } == {
        "target_precision": "decision.target_precision",
        "multi_label": "decision.multi_label",
    }
    assert mirrored["source"].config_key == "encoder.name"  # distill --encoder
    sections = {(p.section.__name__, p.config_key) for p in mirrored.values()}
    assert {("SynthesizeStage", "judge_top_k"), ("LabelStage", "concurrency")} <= sections


def test_stage_commands_read_their_defaults_from_the_stage_sections():
    """'shelver label', 'synthesize' and 'export' mirror every key they share with their stage."""
    from shelver.cli import main
    from shelver.cli.common import ConfigOption

    def mirrored(command: str) -> set[str]:
        params = main.commands[command].params
        return {p.config_key for p in params if isinstance(p, ConfigOption)}

    assert mirrored("label") == {
        "concurrency",
        "max_retries",
        "votes",
        "shortlist",
        "encoder",
        "prompt",
        "limit",
    }
    assert mirrored("export") == {"sample", "min_agreement", "quantize", "int8"}
    assert mirrored("synthesize") == {
        "min_examples",
        "per_class",
        "generators",
        "judge_top_k",
        "encoder",
        "seed",
    }


def test_config_command_prints_toml_that_loads_back_to_the_same_configuration(tmp_path):
    from click.testing import CliRunner

    from shelver.cli import main
    from shelver.config import load_config
    from shelver.pipeline.config import load_bootstrap_config

    runner = CliRunner()
    for extra, load in (([], load_config), (["--bootstrap"], load_bootstrap_config)):
        result = runner.invoke(main, ["config", *extra, "--set", "seed=7" if not extra else "review.limit=9"])
        assert result.exit_code == 0, result.output
        path = tmp_path / f"c{len(extra)}.toml"
        path.write_text(result.output)
        assert load(path) == load(None, ("seed=7",) if not extra else ("review.limit=9",))
        assert "# queries are short: 32 tokens" in result.output


def test_a_config_option_overrides_the_file_only_when_given(tiny_files, tmp_path):
    from click.testing import CliRunner

    from shelver.cli import main

    config = tmp_path / "c.toml"
    config.write_text('[encoder]\nname = "hashing"\n[decision]\ntarget_precision = 0.8\n')
    common = ["train", "--taxonomy", str(tiny_files["taxonomy"]), "--train", str(tiny_files["train"])]
    common += ["--valid", str(tiny_files["valid"]), "--config", str(config), "--quiet"]
    runner = CliRunner()
    for extra, expected in (([], 0.8), (["--target-precision", "0.9"], 0.9)):
        out = tmp_path / f"m{expected}"
        result = runner.invoke(main, [*common, *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
        written = json.loads((out / "train_config.json").read_text())
        assert written["decision"]["target_precision"] == expected


def test_train_with_defaults_chooses_the_head_on_valid_and_says_so(model_dir):
    record = json.loads((model_dir / "selection.json").read_text())
    assert record["scored_on"] == "valid" and len(record["candidates"]) == 4
    assert "selection.json" in json.loads((model_dir / "manifest.json").read_text())["files"]
    assert json.loads((model_dir / "train_config.json").read_text())["head"]["kind"] == "auto"
    assert "## Model selection" in (model_dir / "valid" / "report.md").read_text()
