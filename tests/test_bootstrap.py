"""The cold-start pipeline: stages, hashes, skipping, --from, kills mid-stage, the review loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, make_rows

from shelver.data import read_labeled
from shelver.errors import ConfigError
from shelver.pipeline import STAGES, RunContext, load_bootstrap_config, read_manifest, run_pipeline
from shelver.taxonomy import Taxonomy

FAST = (
    "label.encoder=hashing",
    "train.encoder.name=hashing",
    "select.min_confidence=0.0",
    "select.smooth_min_confidence=0.0",
)
RESULTS = (
    "select/train.csv",
    "select/valid.csv",
    "synthesize/synthetic.csv",
    "evaluate/comparison.json",
    "review/review.csv",
)


@pytest.fixture()
def inputs(tmp_path: Path, tiny_files: dict[str, Path]) -> dict[str, Path]:
    log = tmp_path / "log.csv"
    make_rows(14, 0)[["text"]].to_csv(log, index=False)  # the labels removed: a raw log
    return {"taxonomy": tiny_files["taxonomy"], "log": log, "sample": tiny_files["test"]}


def _run(
    inputs: dict[str, Path], out: Path, *overrides: str, start_from: str | None = None
) -> dict[str, str]:
    config = load_bootstrap_config(None, FAST + overrides)
    ctx = RunContext(inputs["taxonomy"], inputs["log"], out, config, inputs["sample"], progress=False)
    return {r.name: r.status for r in run_pipeline(ctx, start_from, echo=lambda line: None)}


def _results(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in RESULTS}


def test_embedding_run_writes_every_stage_then_skips_them_all(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = _run(inputs, out)
    assert first == {
        "label": "ran", "select": "ran", "synthesize": "ran", "train": "ran",
        "evaluate": "ran", "export": "ran", "review": "ran",
    }  # fmt: skip
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["config"]["train"]["encoder"]["name"] == "hashing"
    assert resolved["config"]["train"]["decision"]["target_precision"] == 0.9
    for stage in ("label", "select", "synthesize", "train", "evaluate", "export", "review"):
        assert read_manifest(out / stage)["hash"], stage
    table = json.loads((out / "evaluate" / "comparison.json").read_text())
    assert set(table["n"]) == {"llm_heldout", "real_sample"}
    row = next(r for r in table["rows"] if r["metric"] == "L1 accuracy")
    assert row["gap"] == pytest.approx(row["real_sample"] - row["llm_heldout"])
    assert "gap (real - LLM)" in (out / "evaluate" / "report.md").read_text()
    before = {s: read_manifest(out / s)["finished_at"] for s in ("label", "train", "review")}
    second = _run(inputs, out)
    assert {s for s, status in second.items() if status == "ran"} == set()
    assert {s: read_manifest(out / s)["finished_at"] for s in before} == before


def test_sample_queries_never_train_and_split_is_by_text(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(inputs, out)
    train = pd.read_csv(out / "select" / "train.csv")
    valid = pd.read_csv(out / "select" / "valid.csv")
    sample = set(pd.read_csv(inputs["sample"])["text"].str.lower())
    assert not (set(train["text"]) | set(valid["text"])) & sample
    assert not set(train["text"]) & set(valid["text"])
    assert len(valid) > 0 and len(train) > 3 * len(valid) / 2


def test_changed_config_reruns_that_stage_and_every_later_one(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _run(inputs, out)
    statuses = _run(inputs, out, "train.head.C=0.5")
    assert [s for s, v in statuses.items() if v == "ran"] == ["train", "evaluate", "export", "review"]
    statuses = _run(inputs, out, "train.head.C=0.5", "select.valid_fraction=0.3")
    assert [s for s, v in statuses.items() if v == "ran"] == [
        "select",
        "synthesize",
        "train",
        "evaluate",
        "export",
        "review",
    ]


def test_from_forces_a_restart_from_that_stage(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(inputs, out)
    statuses = _run(inputs, out, start_from="evaluate")
    assert statuses["train"] == "skipped" and statuses["evaluate"] == statuses["review"] == "ran"
    with pytest.raises(ConfigError, match="--from 'fit' is not a stage; stages: label, select, synthesize"):
        _run(inputs, out, start_from="fit")
    statuses = _run(inputs, out, start_from="synthesize")
    assert statuses["select"] == "skipped" and statuses["synthesize"] == statuses["train"] == "ran"


def test_reviewed_queries_come_back_as_human_labels(inputs: dict[str, Path], tmp_path: Path) -> None:
    from shelver.labeling import LabelStore
    from shelver.labeling.review import import_reviews

    out = tmp_path / "run"
    _run(inputs, out)
    review = pd.read_csv(out / "review" / "review.csv", keep_default_na=False)
    assert len(review) > 0 and (review["human_path"] == "").all()
    counts = review["count"].tolist()
    doubtful = review["decision"] != "full"
    assert counts[: doubtful.sum()] == sorted(counts[: doubtful.sum()], reverse=True)  # most frequent first
    # two reviewed queries outside the labeled sample (select never trains on the sample's queries)
    sample = set(pd.read_csv(inputs["sample"])["text"].str.lower())
    reviewed = review.index[~review["text"].isin(sample)][:2]
    review.loc[reviewed, "human_path"] = "Tops > Tops"
    review.to_csv(out / "reviewed.csv", index=False)
    with LabelStore(out / "label" / "labels.sqlite", create=False) as store:
        assert import_reviews(store, out / "reviewed.csv") == 2
    statuses = _run(inputs, out)
    assert statuses["label"] == "skipped" and statuses["select"] == "ran"
    train = pd.concat([pd.read_csv(out / "select" / f) for f in ("train.csv", "valid.csv")])
    assert (train["source"] == "human").sum() == 2
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and rounds[1]["human_rows"] > rounds[0]["human_rows"]  # each round recorded
    assert not set(review["text"][reviewed]) & set(pd.read_csv(out / "review" / "review.csv")["text"])


def test_review_reads_the_label_store_once_whatever_the_log_size(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shelver.labeling import LabelStore

    out = tmp_path / "run"
    _run(inputs, out)
    reads: list[str] = []
    for name in ("__init__", "labels", "human_queries", "_all", "_one"):
        original = getattr(LabelStore, name)
        monkeypatch.setattr(LabelStore, name, _counted(original, name, reads))
    ctx = RunContext(
        inputs["taxonomy"], inputs["log"], out, load_bootstrap_config(None, FAST), progress=False
    )
    (tmp_path / "review").mkdir()
    summary = STAGES["review"].run(ctx, tmp_path / "review")
    assert summary["log_queries"] > 20  # reading per query would show as that many opens
    assert reads.count("__init__") == 1 and reads.count("human_queries") == 1
    assert "labels" not in reads


def _counted(method, name: str, calls: list[str]):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return method(*args, **kwargs)

    return wrapper


def test_review_leaves_out_the_labeled_sample_queries(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(inputs, out, "synthesize.enabled=false")
    sample = set(pd.read_csv(inputs["sample"])["text"].str.lower())
    logged = set(pd.read_csv(inputs["log"])["text"].str.lower())
    assert logged & sample  # the log holds some of the sample's queries: they could be listed
    review = pd.read_csv(out / "review" / "review.csv")
    assert len(review) > 0 and not set(review["text"]) & sample  # they have real labels already
    summary = read_manifest(out / "review")["summary"]
    assert summary["labeled_sample_queries_left_out"] == len(logged & sample)
    assert summary["log_queries"] == len(logged - sample)


def test_synthesize_fills_only_the_tail_without_leaks_and_counts_real_rows_only(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    from shelver.model_dir import load_model
    from shelver.text_keys import text_key, word_sequence_key

    out = tmp_path / "run"
    _run(inputs, out)
    taxonomy = Taxonomy.load(inputs["taxonomy"])
    counts = read_labeled(out / "select" / "train.csv", taxonomy).y.tolist()
    per_leaf = pd.Series([" > ".join(p) for p in counts]).value_counts()
    threshold = int(per_leaf.median())
    statuses = _run(inputs, out, f"synthesize.min_examples={threshold}")
    assert statuses["select"] == "skipped" and statuses["synthesize"] == statuses["train"] == "ran"
    summary = read_manifest(out / "synthesize")["summary"]
    synthetic = read_labeled(out / "synthesize" / "synthetic.csv", taxonomy)  # checks every path
    assert summary["kept"] == len(synthetic) > 0 and "judge" in summary["removed"]
    assert all(source.startswith("synthetic:") for source in synthetic.source)
    tail = set(per_leaf[per_leaf < threshold].index) | {" > ".join(p) for p in taxonomy.paths} - set(
        per_leaf.index
    )
    assert {" > ".join(p) for p in synthetic.y.tolist()} <= tail < {" > ".join(p) for p in taxonomy.paths}
    held_out = pd.concat([pd.read_csv(out / "select" / "valid.csv"), pd.read_csv(inputs["sample"])])["text"]
    assert not {word_sequence_key(t) for t in synthetic.texts} & {
        word_sequence_key(text_key(t)) for t in held_out
    }
    train = read_manifest(out / "train")["summary"]
    assert train["synthetic_rows"] == len(synthetic)
    assert train["train_rows"] == len(counts) and train["sample_rows"] == len(pd.read_csv(inputs["sample"]))
    assert (
        load_model(out / "train" / "model").train_counts_.sum() == train["train_rows"] + train["sample_rows"]
    )


def test_synthesize_disabled_trains_on_the_selected_rows_only(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    statuses = _run(inputs, out, "synthesize.enabled=false")
    assert statuses["synthesize"] == "ran"
    assert read_manifest(out / "synthesize")["summary"] == {"enabled": False, "kept": 0}
    assert not (out / "synthesize" / "synthetic.csv").exists()
    assert read_manifest(out / "train")["summary"]["synthetic_rows"] == 0


def test_synthesize_llm_writes_with_the_label_backend(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shelver.labeling.backends.fake import FakeBackend

    with pytest.raises(ConfigError, match="writes with the label stage's LLM backend, but label.backends is"):
        load_bootstrap_config(None, ("synthesize.generators=llm",))
    with pytest.raises(ConfigError, match="synthesize.generators has 'gpt'; use some of attributes, titles"):
        load_bootstrap_config(None, ('synthesize.generators=["titles", "gpt"]',))
    labeling = FakeBackend._next
    written = "cheap boots\nwarm winter boots\nnavy hiking boots"
    monkeypatch.setattr(FakeBackend, "_next", lambda self, r: labeling(self, r) if r.choices else written)
    out = tmp_path / "run"
    _run(inputs, out, 'label.backends=["fake"]', "synthesize.generators=llm")
    sources = set(pd.read_csv(out / "synthesize" / "synthetic.csv")["source"])
    assert sources == {"synthetic:llm:fake-first"}


def test_bad_config_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown bootstrap config section 'labels'; valid sections: label"):
        load_bootstrap_config(None, ("labels.encoder=hashing",))
    with pytest.raises(ConfigError, match="unknown config key 'select.min_conf'"):
        load_bootstrap_config(None, ("select.min_conf=0.3",))


# ---- a real process, killed mid-stage ------------------------------------------------------------
def _command(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    sets = [arg for item in FAST for arg in ("--set", item)]
    return [
        sys.executable, "-m", "shelver.cli", "bootstrap", "--taxonomy", str(inputs["taxonomy"]),
        "--log", str(inputs["log"]), "--out", str(out), "--labeled-sample", str(inputs["sample"]),
        "--backend", "fake", "--quiet", *sets, *extra,
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}


def _kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the stage never started"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_mid_stage_resumes_and_equals_a_clean_run(inputs: dict[str, Path], tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    subprocess.run(_command(inputs, clean), env=_env(), check=True, capture_output=True)

    out, calls = tmp_path / "killed", tmp_path / "calls.txt"
    slow = ("--option", "delay=0.05", "--option", f"call_log={calls}")
    process = subprocess.Popen(_command(inputs, out, *slow), env=_env(), stderr=subprocess.PIPE)
    _kill_when(process, lambda: calls.is_file() and len(calls.read_text().splitlines()) >= 10)
    assert read_manifest(out / "label") is None  # killed in the middle of labeling

    # killed again in the middle of train: label and select finish, train has its model but no manifest
    process = subprocess.Popen(
        _command(inputs, out, *slow),
        env=_env(SHELVER_BOOTSTRAP_SLOW_STAGE="train:120"),
        stderr=subprocess.PIPE,
    )
    _kill_when(process, lambda: (out / "train" / "model").is_dir())
    assert read_manifest(out / "label") and read_manifest(out / "select") and not read_manifest(out / "train")
    queries = len(set(pd.read_csv(inputs["log"])["text"].str.lower()))
    assert (
        queries <= len(calls.read_text().splitlines()) <= queries + 16
    )  # resumed: at most in-flight calls repeat

    done = subprocess.run(
        _command(inputs, out, *slow), env=_env(), check=True, capture_output=True, text=True
    )
    assert "[label] up to date" in done.stderr and "[select] up to date" in done.stderr
    assert "[train] running (not finished)" in done.stderr
    assert _results(out) == _results(clean)


# ---- smoothing in select ------------------------------------------------------------------------
def _selected(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(out / "select" / f) for f in ("train.csv", "valid.csv")]).set_index("text")


def test_smoothing_relabels_embedding_rows_counts_changes_and_is_in_the_hash(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _run(inputs, out, "select.smooth=false")
    plain = _selected(out)
    statuses = _run(inputs, out, "select.smooth=true")  # select and every later stage re-run
    assert [s for s, v in statuses.items() if v == "ran"] == [
        "select", "synthesize", "train", "evaluate", "export", "review",
    ]  # fmt: skip
    smoothed = _selected(out).loc[plain.index]
    assert set(plain["source"]) == {"embedding"} and set(smoothed["source"]) == {"embedding+smooth"}
    select = read_manifest(out / "select")["summary"]
    summary, held_out = select["smooth"], select["labeled_sample_queries_left_out"]
    moved = (smoothed[["category", "subcategory"]] != plain[["category", "subcategory"]]).any(axis=1)
    # the labeled sample's log queries are smoothed too (they are neighbours), then held out
    assert summary["enabled"] and summary["mode"] == "on" and summary["rows"] == len(plain) + held_out
    assert int(moved.sum()) <= summary["paths_changed"] <= int(moved.sum()) + held_out
    assert not smoothed["confidence"].equals(plain["confidence"])
    statuses = _run(inputs, out, "select.smooth=true", "select.smooth_k=5")
    assert statuses["label"] == "skipped" and statuses["select"] == statuses["train"] == "ran"


def test_smoothing_never_changes_human_labels(inputs: dict[str, Path], tmp_path: Path) -> None:
    from shelver.labeling import LabelStore

    out = tmp_path / "run"
    _run(inputs, out, "select.smooth=false")
    sample = set(pd.read_csv(inputs["sample"])["text"].str.lower())
    boots = [t for t in _selected(out).index if "boot" in t and t not in sample][:2]
    with LabelStore(out / "label" / "labels.sqlite", create=False) as store:
        # against every neighbour (all boots): smoothing would move them if it touched human labels
        store.record_human([(t, ("Tops", "Tops")) for t in boots], reviewer="test")
    _run(inputs, out, "select.smooth=true", "select.smooth_k=10")
    selected = _selected(out)
    assert selected.loc[boots, "subcategory"].tolist() == ["Tops", "Tops"]
    assert set(selected.loc[boots, "source"]) == {"human"}
    assert (selected.drop(index=boots)["source"] == "embedding+smooth").all()


def test_auto_smoothing_follows_the_labeled_sample(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(inputs, out, "select.smooth=auto")
    summary = read_manifest(out / "select")["summary"]["smooth"]
    sample = summary["sample"]
    assert summary["mode"] == "auto" and sample["rows"] > 0
    assert summary["enabled"] == (sample["smoothed"] > sample["raw"])
    expected = {"embedding+smooth"} if summary["enabled"] else {"embedding"}
    assert set(_selected(out)["source"]) == expected
    without = RunContext(
        inputs["taxonomy"], inputs["log"], tmp_path / "bare", load_bootstrap_config(None, FAST)
    )
    run_pipeline(without, echo=lambda line: None)  # no labeled sample: nothing to decide on, so off
    assert read_manifest(tmp_path / "bare" / "select")["summary"]["smooth"] == {
        "enabled": False,
        "mode": "auto",
    }


def test_sample_agreement_scores_raw_and_smoothed_labels_on_the_sample(tmp_path: Path, tiny_files) -> None:
    from shelver.pipeline.select import sample_agreement
    from shelver.taxonomy import Taxonomy

    tree = Taxonomy.load(tiny_files["taxonomy"])
    (a, b), (c, d) = tree.paths[0], tree.paths[1]
    pd.DataFrame({"text": ["Red Boot", "blue top"], "category": [a, c], "subcategory": [b, d]}).to_csv(
        tmp_path / "sample.csv", index=False
    )
    raw = pd.DataFrame(
        {"text": ["red boot", "blue top", "other"], "category": [a, a, a], "subcategory": [b, b, b]}
    )
    smoothed = raw.assign(category=[a, c, c], subcategory=[b, d, d])
    got = sample_agreement(raw, smoothed, tmp_path / "sample.csv", tree)
    assert got == {"rows": 2, "raw": 0.5, "smoothed": 1.0}


def test_smoothing_modes_are_checked_and_booleans_still_read() -> None:
    assert load_bootstrap_config(None, ("select.smooth=true",)).select.smooth == "on"
    assert load_bootstrap_config(None, ("select.smooth=false",)).select.smooth == "off"
    assert load_bootstrap_config().select.smooth == "auto"
    with pytest.raises(ConfigError, match="select.smooth is 'maybe'; choose one of auto, on, off"):
        load_bootstrap_config(None, ("select.smooth=maybe",))


def test_bad_smoothing_setting_fails_at_load() -> None:
    with pytest.raises(ConfigError, match="got k=0.*fix select.smooth_k"):
        load_bootstrap_config(None, ("select.smooth=true", "select.smooth_k=0"))


def test_labeled_sample_trains_and_fits_thresholds_out_of_fold(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _run(inputs, out)
    sample = pd.read_csv(inputs["sample"])
    summary = read_manifest(out / "train")["summary"]
    assert summary["human_rows"] == len(sample)
    assert summary["thresholds"].startswith(f"thresholds fitted on {len(sample):,} human-labeled rows")
    fitted_on = json.loads((out / "train" / "model" / "calibration.json").read_text())["fitted_on"]
    assert fitted_on["human"] and fitted_on["cross_fitted_folds"] == 5
    assert fitted_on["rows"] == len(sample) and set(fitted_on["levels"]) == {"level1", "level2"}
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 1 and rounds[0]["human_rows"] == len(sample) and rounds[0]["verified"]
    assert set(rounds[0]["level2"]) == {"coverage", "precision", "lower_bound", "certified"}
    table = json.loads((out / "evaluate" / "comparison.json").read_text())
    assert table["thresholds"]["cross_fitted"] and table["thresholds"]["verified"]


def test_without_human_labels_the_thresholds_say_they_are_unverified(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = load_bootstrap_config(None, FAST)
    ctx = RunContext(inputs["taxonomy"], inputs["log"], out, config, None, progress=False)
    run_pipeline(ctx, None, echo=lambda line: None)
    summary = read_manifest(out / "train")["summary"]
    assert summary["human_rows"] == 0
    assert summary["thresholds"].startswith("thresholds unverified: fitted on machine labels")
    assert "thresholds unverified" in (out / "evaluate" / "report.md").read_text()


def test_calibration_sample_is_traffic_weighted_and_stratified(tiny_xy, taxonomy) -> None:
    import numpy as np

    from shelver import HierarchicalClassifier
    from shelver.pipeline.review import calibration_sample, predicted_frame

    texts, y = tiny_xy
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", target_precision=0.8).fit(texts, y)
    model.calibrate(texts, y)
    log = [(f"{t} {i}", 1000 if i % 10 == 0 else 1) for i, t in enumerate(texts * 5)]
    frame = calibration_sample(predicted_frame(model, log), 40, 4, seed=0, threshold=model.thresholds_.level2)
    assert len(frame) == 40 and frame["text"].is_unique and (frame["human_path"] == "").all()
    assert sorted(frame["stratum"].value_counts().tolist()) == [10, 10, 10, 10]
    frequent = np.mean([c == 1000 for _, c in log])
    assert (frame["count"] == 1000).mean() > 3 * frequent  # drawn in proportion to traffic
    near = (frame["confidence"] - min(model.thresholds_.level2, 1.0)).abs()
    assert near.is_monotonic_increasing  # the rows nearest the threshold come first
