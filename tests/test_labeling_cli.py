"""The labeling commands end to end, and a labeling process killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from shelver.cli import main
from shelver.data import read_labeled

REPO = Path(__file__).resolve().parents[1]
WORDS = ["sneakers", "boots", "sandals", "backpack", "handbag", "bag strap", "shirt", "cufflinks", "tank top"]
COLOURS = ["red", "blue", "black", "white", "green", "brown", "grey"]


def write_log(path: Path, n: int) -> list[str]:
    queries = [f"{COLOURS[i % len(COLOURS)]} {WORDS[i % len(WORDS)]} {i}" for i in range(n)]
    pd.DataFrame({"text": queries, "count": range(n, 0, -1)}).to_csv(path, index=False)
    return queries


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_label_export_audit_import_round_trip(tiny_files, tmp_path):
    log, store = tmp_path / "log.csv", tmp_path / "labels.db"
    queries = write_log(log, 12)
    result = invoke(
        "label",
        "--taxonomy",
        tiny_files["taxonomy"],
        "--log",
        log,
        "--out",
        store,
        "--backend",
        "fake",
        "--backend",
        "embedding",
        "--encoder",
        "hashing",
        "--shortlist",
        "3",
        "--price-prompt",
        "0.15",
        "--price-completion",
        "0.6",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "labeled 12 queries with 24 calls" in result.output and "est. cost $" in result.output

    result = invoke("labels", "export", "--store", store, "--out", tmp_path / "train.csv")
    assert result.exit_code == 0, result.output
    from shelver.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(tiny_files["taxonomy"])
    data = read_labeled(tmp_path / "train.csv", taxonomy)
    assert sorted(data.texts) == sorted(queries) and set(data.source) == {"llm:fake-first"}

    result = invoke(
        "train",
        "--taxonomy",
        tiny_files["taxonomy"],
        "--train",
        tiny_files["train"],
        "--out",
        tmp_path / "model",
        "--set",
        'encoder.name="hashing"',
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    result = invoke(
        "labels",
        "audit",
        "--store",
        store,
        "--model",
        tmp_path / "model",
        "--out",
        tmp_path / "r.csv",
        "--limit",
        "5",
    )
    assert result.exit_code == 0, result.output
    review = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert len(review) == 5 and list(review["human_path"]) == [""] * 5
    review.loc[0, "human_path"] = "Tops > Tops"
    review.to_csv(tmp_path / "r.csv", index=False)
    result = invoke("labels", "import", "--store", store, "--review", tmp_path / "r.csv", "--reviewer", "ana")
    assert "imported 1 human labels" in result.output

    invoke(
        "labels", "export", "--store", store, "--out", tmp_path / "train.parquet", "--min-confidence", "0.5"
    )
    exported = pd.read_parquet(tmp_path / "train.parquet")
    human = exported[exported["source"] == "human"]
    assert human[["text", "category", "subcategory"]].values.tolist() == [
        [review.loc[0, "text"], "Tops", "Tops"]
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backend", "nope"],
            "error: unknown backend 'nope'; use one of embedding, openai, llamacpp, fake",
        ),
        (["--backend", "fake", "--option", "colour=red"], "error: backend 'fake' does not take that option"),
        (["--backend", "fake", "--option", "openai.timeout=3"], "names backend 'openai', which is not among"),
        (["--backend", "llamacpp", "--model", "/no/such.gguf"], "is neither a GGUF file nor a built-in name"),
        (["--prompt", "label_v0"], "error: no prompt 'label_v0'"),
    ],
)
def test_label_mistakes_are_one_line_errors(tiny_files, tmp_path, args, message):
    log = tmp_path / "log.csv"
    write_log(log, 3)
    result = CliRunner().invoke(
        main,
        [
            "label",
            "--taxonomy",
            str(tiny_files["taxonomy"]),
            "--log",
            str(log),
            "--out",
            str(tmp_path / "s.db"),
            "--encoder",
            "hashing",
            "--quiet",
            *args,
        ],
    )
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_export_of_a_missing_store_names_the_fix(tmp_path):
    (tmp_path / "empty.db").write_bytes(b"")
    result = CliRunner().invoke(
        main, ["labels", "export", "--store", str(tmp_path / "empty.db"), "--out", str(tmp_path / "t.csv")]
    )
    assert result.exit_code == 1 and "has no taxonomy yet: label something into it first" in result.output


def test_sigkill_mid_run_loses_no_stored_label_and_repeats_no_stored_call(tiny_files, tmp_path):
    log, store, call_log = tmp_path / "log.csv", tmp_path / "labels.db", tmp_path / "calls.txt"
    queries = write_log(log, 60)
    command = [
        sys.executable,
        "-c",
        "from shelver.cli import main; main()",
        "label",
        "--taxonomy",
        str(tiny_files["taxonomy"]),
        "--log",
        str(log),
        "--out",
        str(store),
        "--backend",
        "fake",
        "--encoder",
        "hashing",
        "--concurrency",
        "4",
        "--quiet",
        "--option",
        f"call_log={call_log}",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([*command, "--option", "delay=0.1"], env=env, stderr=subprocess.DEVNULL)
    _wait_for_labels(store, 15, proc)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {q for (q,) in db.execute("SELECT query FROM calls WHERE status != 'error'")}
        labels_before = dict(db.execute("SELECT query, path FROM labels"))
    assert 15 <= len(stored) < len(queries)
    called_before = call_log.read_text().splitlines()

    subprocess.run(command, env=env, check=True, stderr=subprocess.DEVNULL, timeout=120)
    called_after = call_log.read_text().splitlines()[len(called_before) :]
    assert not set(called_after) & stored  # no stored call was paid for twice
    assert len(called_after) == len(set(called_after))
    assert set(called_before) | set(called_after) == set(queries)
    with sqlite3.connect(store) as db:
        labels_after = dict(db.execute("SELECT query, path FROM labels WHERE status = 'labeled'"))
    assert set(labels_after) == set(queries)
    assert all(labels_after[q] == p for q, p in labels_before.items())  # nothing stored was lost or changed


def _wait_for_labels(store: Path, n: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the labeling run ended before it could be killed"
        if store.exists():
            try:
                with sqlite3.connect(store, timeout=1) as db:
                    if db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] >= n:
                        return
            except sqlite3.OperationalError:
                pass  # tables not created yet
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} labels after {timeout}s")
