"""The labeling run with the fake backend: retries, rejections, resume, votes, store, export, review."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelver import HierarchicalClassifier
from shelver.data import read_labeled
from shelver.errors import (
    BackendError,
    DataError,
    LabelStoreError,
    RequestRefusedError,
    TransientBackendError,
)
from shelver.labeling import (
    LabelConfig,
    Labeler,
    LabelStore,
    PathIndex,
    VoterSpec,
    export_frame,
    read_query_log,
    write_training_file,
)
from shelver.labeling.backends.fake import FakeBackend
from shelver.labeling.retry import retry_delay, with_retries
from shelver.labeling.review import audit_frame, import_reviews
from shelver.taxonomy import Taxonomy, format_path

QUERIES = [
    ("red sneakers", 5),
    ("black boots", 4),
    ("laptop backpack", 3),
    ("linen shirt", 2),
    ("tank top", 1),
]
FAST = LabelConfig(encoder="hashing", shortlist=3, backoff=0.0, max_retries=3, concurrency=2)


@pytest.fixture(scope="module")
def index(taxonomy):
    return PathIndex(taxonomy, "hashing")


def labeler(taxonomy, index, *backends, **config):
    cfg = LabelConfig(**{**FAST.__dict__, **config})
    return Labeler(taxonomy, cfg, backends=list(backends), index=index)


def labels_by_query(store):
    return {row["query"]: row for row in store.labels()}


def test_fake_labels_every_query_with_a_path_of_the_taxonomy(taxonomy, index, tmp_path):
    fake = FakeBackend()
    with LabelStore(tmp_path / "s.db") as store:
        summary = labeler(taxonomy, index, fake).run(store, QUERIES, progress=False)
        rows = labels_by_query(store)
    assert summary.calls == len(QUERIES) == len(fake.calls)
    assert set(rows) == {q for q, _ in QUERIES}
    for query, row in rows.items():
        assert row["status"] == "labeled" and row["source"] == "llm:fake-first"
        assert row["prompt_version"].startswith("label_v1@")
        shortlist = next(r.choices for r in fake.calls if r.query == query)
        assert row["path"] == shortlist[0]  # the fake picks the first candidate
        assert tuple(row["path"].split(" > ")) in taxonomy


def test_transient_failures_are_retried_with_backoff(taxonomy, index, tmp_path):
    script = {
        "red sneakers": [
            TransientBackendError("HTTP 429", retry_after=0.0),
            TransientBackendError("HTTP 500"),
            '{"path": "Shoes > Sneakers"}',
        ],
        "black boots": [TransientBackendError("timed out")] * 10,
        "laptop backpack": [RequestRefusedError("HTTP 400: context too long")],
    }
    fake = FakeBackend(script=script)
    with LabelStore(tmp_path / "s.db") as store:
        summary = labeler(taxonomy, index, fake).run(store, QUERIES[:3], progress=False)
        calls = {
            r[0]: r[1:]
            for r in sqlite3.connect(store.path).execute("SELECT query, status, attempts FROM calls")
        }
        rows = labels_by_query(store)
    assert calls["red sneakers"] == ("ok", 3)
    assert calls["black boots"] == ("error", 4)  # 1 + max_retries, then given up and stored
    assert calls["laptop backpack"] == ("error", 1)  # a refused request is not retried
    assert summary.retries == 2 + 3
    assert (
        rows["black boots"]["status"] == "error"
        and "gave up after 4 attempts" in rows["black boots"]["error"]
    )


def test_with_retries_retries_transient_failures_then_raises_the_last():
    failures = iter([TransientBackendError("HTTP 429", retry_after=2.0), TransientBackendError("HTTP 500")])
    waits: list[float] = []

    def flaky() -> str:
        err = next(failures, None)
        if err is not None:
            raise err
        return "ok"

    assert with_retries(flaky, max_retries=2, backoff=1.0, sleep=waits.append) == "ok"
    assert waits[0] == 2.0 and waits[1] == pytest.approx(2.0, rel=0.26)

    def down() -> str:
        raise TransientBackendError("timed out")

    waits.clear()
    with pytest.raises(TransientBackendError, match="timed out"):
        with_retries(down, max_retries=3, backoff=0.0, sleep=waits.append)
    assert len(waits) == 3

    def refused() -> str:
        raise RequestRefusedError("HTTP 400")

    with pytest.raises(RequestRefusedError):
        with_retries(refused, sleep=waits.append)
    assert len(waits) == 3


def test_retry_delay_honours_retry_after_and_grows_exponentially():
    assert retry_delay(1, 1.0, retry_after=7.0) == 7.0
    assert retry_delay(3, 1.0, retry_after=None) == pytest.approx(4.0, rel=0.26)
    assert retry_delay(20, 1.0, retry_after=None) <= 60.0


def test_bad_replies_are_rejected_with_reasons_and_never_become_labels(taxonomy, index, tmp_path):
    script = {
        "red sneakers": ["{'path': oops"],  # malformed JSON
        "black boots": ['{"path": "Bags > Boots"}'],  # a subcategory from another category
        "laptop backpack": [""],  # an empty reply
        "linen shirt": ['{"path": "tops > SHIRTS"}'],  # repairable
        "tank top": ['{"path": "none"}'],
    }
    with LabelStore(tmp_path / "s.db") as store:
        summary = labeler(taxonomy, index, FakeBackend(script=script)).run(store, QUERIES, progress=False)
        rows = labels_by_query(store)
        frame, skipped = export_frame(store)
    assert summary.by_status == {"rejected": 3, "repaired": 1, "none": 1}
    assert summary.repairs == {"case": 1}
    assert summary.reasons == {"unparseable": 1, "wrong parent": 1, "empty reply": 1}
    assert "'Boots' is not under category 'Bags'; its parent is 'Shoes'" in rows["black boots"]["error"]
    assert rows["linen shirt"]["path"] == "Tops > Shirts"
    assert rows["tank top"]["status"] == "none"
    assert frame["text"].tolist() == ["linen shirt"]
    assert skipped == {"none": 1, "rejected_or_error": 3, "below_threshold": 0, "not_in_taxonomy": 0}


def test_a_backend_that_cannot_work_stops_the_run_and_keeps_what_was_stored(taxonomy, index, tmp_path):
    script = {"linen shirt": [BackendError("HTTP 401: set the API key")]}
    with LabelStore(tmp_path / "s.db") as store:
        with pytest.raises(BackendError, match="HTTP 401"):
            labeler(taxonomy, index, FakeBackend(script=script), concurrency=1).run(
                store, QUERIES, progress=False
            )
        stored = set(labels_by_query(store))
    # calls already in flight are waited for and kept; the failed one is not a label
    assert {"red sneakers", "black boots", "laptop backpack"} <= stored and "linen shirt" not in stored


def test_all_calls_failing_is_an_error_naming_the_first_failure(taxonomy, index, tmp_path):
    fake = FakeBackend(script=lambda request: TransientBackendError("connection refused"))
    with (
        LabelStore(tmp_path / "s.db") as store,
        pytest.raises(BackendError, match=r"all 2 calls failed .*connection refused"),
    ):
        labeler(taxonomy, index, fake, max_retries=0).run(store, QUERIES[:2], progress=False)


def test_rerun_skips_finished_queries_and_retries_only_failed_calls(taxonomy, index, tmp_path):
    flaky = FakeBackend(script={"black boots": [TransientBackendError("HTTP 503")] * 5})
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, flaky, max_retries=1).run(store, QUERIES, progress=False)
        again = FakeBackend()
        summary = labeler(taxonomy, index, again).run(store, QUERIES, progress=False)
        assert [r.query for r in again.calls] == ["black boots"]
        assert summary.calls == 1
        assert labels_by_query(store)["black boots"]["status"] == "labeled"
        third = FakeBackend()
        assert labeler(taxonomy, index, third).run(store, QUERIES, progress=False).calls == 0
        assert third.calls == []


def test_a_second_voter_adds_only_its_own_calls_and_agreement(taxonomy, index, tmp_path):
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, FakeBackend("first")).run(store, QUERIES, progress=False)
        first, last = FakeBackend("first"), FakeBackend("last")
        labeler(taxonomy, index, first, last).run(store, QUERIES, progress=False)
        rows = labels_by_query(store)
    assert first.calls == [] and len(last.calls) == len(QUERIES)
    for row in rows.values():  # first and last candidates differ: the votes split
        assert row["agreement"] == 0.5 and row["source"] == "llm:fake-first"


def test_several_samples_vote(taxonomy, index, tmp_path):
    answers = iter(['{"path": "Shoes > Boots"}', '{"path": "Shoes > Boots"}', '{"path": "Shoes > Sandals"}'])
    fake = FakeBackend(script=lambda request: next(answers))
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, fake, samples=3, concurrency=1).run(
            store, [("black boots", 1)], progress=False
        )
        row = labels_by_query(store)["black boots"]
    assert [r.temperature for r in fake.calls] == [0.0, 0.7, 0.7]
    assert row["path"] == "Shoes > Boots" and row["agreement"] == pytest.approx(2 / 3)


def test_calls_stored_before_a_kill_are_decided_without_calling_again(taxonomy, index, tmp_path):
    lab = labeler(taxonomy, index, FakeBackend())
    with LabelStore(tmp_path / "s.db") as store:
        store.bind_taxonomy(taxonomy)
        store.add_queries([("red sneakers", 1)])
        voter = lab.voters[0]
        store.record_call(
            {
                "query": "red sneakers",
                "voter": voter.key,
                "sample": 0,
                "backend": "fake",
                "model": "fake-first",
                "prompt_version": voter.prompt.version,
                "status": "ok",
                "path": ("Shoes", "Sneakers"),
                "raw": '{"path": "Shoes > Sneakers"}',
            }
        )
        summary = lab.run(store, progress=False)
        assert summary.calls == 0 and lab.voters[0].backend.calls == []
        assert labels_by_query(store)["red sneakers"]["path"] == "Shoes > Sneakers"


STORE_THEN_DIE = """
import os, signal, sys
from shelver.labeling import LabelStore
store = LabelStore(sys.argv[1])
store.add_queries([("red sneakers", 1)])
store.record_human([("red sneakers", ("Shoes", "Sneakers"))], "test")
os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: only the WAL holds the commit
"""


def test_the_store_syncs_normally_in_wal_and_a_killed_writer_loses_no_commit(tmp_path):
    path = tmp_path / "s.db"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    died = subprocess.run([sys.executable, "-c", STORE_THEN_DIE, str(path)], env=env, capture_output=True)
    assert died.returncode == -9, died.stderr.decode()[-2000:]
    with LabelStore(path, create=False) as store:
        assert store.human_queries() == {"red sneakers"}
        assert store._one("PRAGMA journal_mode")[0] == "wal"
        assert store._one("PRAGMA synchronous")[0] == 1  # NORMAL (FULL is 2): one fsync per checkpoint


def test_the_store_refuses_another_taxonomy(taxonomy, index, tmp_path):
    other = Taxonomy.from_tree({"Hats": ["Caps"]})
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, FakeBackend()).run(store, QUERIES[:1], progress=False)
        with pytest.raises(LabelStoreError, match="labeled against a different taxonomy"):
            store.bind_taxonomy(other)
    with pytest.raises(LabelStoreError, match="does not exist; create it with 'shelver label"):
        LabelStore(tmp_path / "missing.db", create=False)


# ---- export: zero invalid paths, by construction and by test ----------------------------------
REPLY = st.one_of(
    st.sampled_from(
        [
            "Shoes > Sneakers",
            "bags>BACKPACKS",
            "Tops / Shirts",
            "Sandals",
            "Bags > Sneakers",
            "Accessories",
            "Hats > Caps",
            "none",
            "Tops > Tops > Tops",
        ]
    ).map(lambda p: f'{{"path": "{p}"}}'),
    st.text(max_size=40),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replies=st.lists(REPLY, min_size=5, max_size=5))
def test_exported_training_files_hold_only_valid_paths(taxonomy, index, tmp_path_factory, replies):
    tmp = tmp_path_factory.mktemp("export")
    script = {q: [r] for (q, _), r in zip(QUERIES, replies, strict=True)}
    with LabelStore(tmp / "s.db") as store:
        labeler(taxonomy, index, FakeBackend(script=script)).run(store, QUERIES, progress=False)
        frame, _ = export_frame(store)
    out = write_training_file(frame, tmp / "train.csv")
    if len(frame):
        data = read_labeled(out, taxonomy)  # raises on any invalid path
        assert all(tuple(row) in taxonomy for row in data.y)
        assert set(data.source) == {"llm:fake-first"}


def test_export_refuses_a_store_edited_into_an_invalid_path(taxonomy, index, tmp_path):
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, FakeBackend()).run(store, QUERIES[:2], progress=False)
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE labels SET path = 'Bags > Sneakers' WHERE query = 'red sneakers'")
        with pytest.raises(LabelStoreError, match="'red sneakers' is 'Bags > Sneakers', which is not a path"):
            export_frame(store)


def test_export_against_a_new_taxonomy_drops_and_counts_missing_paths(taxonomy, index, tmp_path):
    smaller = Taxonomy.from_paths([p for p in taxonomy.paths if p != ("Shoes", "Boots")])
    script = {"black boots": ['{"path": "Shoes > Boots"}'], "red sneakers": ['{"path": "Shoes > Sneakers"}']}
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, FakeBackend(script=script)).run(store, QUERIES[:2], progress=False)
        frame, skipped = export_frame(store, taxonomy=smaller)
    assert frame["text"].tolist() == ["red sneakers"] and skipped["not_in_taxonomy"] == 1


def test_min_confidence_filters_machine_labels_only(taxonomy, index, tmp_path, tiny_files):
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, FakeBackend("first"), FakeBackend("last")).run(
            store, QUERIES, progress=False
        )
        review = tmp_path / "review.csv"
        pd.DataFrame({"text": ["tank top"], "human_path": ["Tops > Tops"]}).to_csv(review, index=False)
        import_reviews(store, review)
        frame, skipped = export_frame(store, min_confidence=0.9)
    assert frame["text"].tolist() == ["tank top"] and frame["source"].tolist() == ["human"]
    assert skipped["below_threshold"] == len(QUERIES) - 1


# ---- the human loop ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(taxonomy, tiny_xy):
    texts, y = tiny_xy
    return HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head="flat").fit(texts, y)


def test_audit_puts_the_labels_the_model_doubts_first_and_humans_outrank_machines(
    taxonomy, index, trained, tiny_frames, tmp_path
):
    test = tiny_frames["test"].drop_duplicates("text")
    truth = {
        t: f"{c} > {s}" for t, c, s in zip(test["text"], test["category"], test["subcategory"], strict=True)
    }
    wrong = dict(list(truth.items())[:5])
    wrong = {t: "Bags > Handbags" if p != "Bags > Handbags" else "Shoes > Boots" for t, p in wrong.items()}
    script = lambda request: f'{{"path": "{wrong.get(request.query, truth[request.query])}"}}'  # noqa: E731
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, FakeBackend(script=script)).run(
            store, [(t, 1) for t in truth], progress=False
        )
        review = audit_frame(store, trained)
        assert set(review["text"].head(5)) == set(wrong)  # the five wrong labels are the most doubted
        assert review["disagreement"].is_monotonic_decreasing
        review.loc[review.index[:5], "human_path"] = [truth[t] for t in review["text"].head(5)]
        review.loc[review.index[5], "human_path"] = "="
        review.loc[review.index[6], "human_path"] = "none"
        review.to_csv(tmp_path / "review.csv", index=False)
        assert import_reviews(store, tmp_path / "review.csv") == 7
        labeler(taxonomy, index, FakeBackend("last")).run(store, [(t, 1) for t in truth], progress=False)
        frame, _ = export_frame(store)
    humans = frame[frame["source"] == "human"]
    assert len(humans) == 6  # 'none' is a human answer too, and not a training row
    for text, cat, sub in zip(humans["text"], humans["category"], humans["subcategory"], strict=True):
        assert f"{cat} > {sub}" == truth[text]


def test_import_refuses_invalid_review_rows_naming_row_and_fix(taxonomy, index, tmp_path):
    with LabelStore(tmp_path / "s.db") as store:
        labeler(taxonomy, index, FakeBackend()).run(store, QUERIES[:2], progress=False)
        bad = tmp_path / "bad.csv"
        pd.DataFrame(
            {"text": ["red sneakers", "black boots"], "human_path": ["Shoes > Sneakers", "Bags > Boots"]}
        ).to_csv(bad, index=False)
        with pytest.raises(DataError, match="row 3 \\('black boots'\\): subcategory 'Boots' is not under"):
            import_reviews(store, bad)
        assert all(r["source"] != "human" for r in store.labels())  # all or nothing
        pd.DataFrame({"query": ["x"]}).to_csv(bad, index=False)
        with pytest.raises(DataError, match="has no human_path, text column"):
            import_reviews(store, bad)


# ---- the log ----------------------------------------------------------------------------------
def test_query_log_is_normalized_deduplicated_and_most_frequent_first(tmp_path):
    (tmp_path / "log.csv").write_text("text,count\nRed  Sneakers,2\nboots,5\nred sneakers,4\n  ,3\n")
    assert read_query_log(tmp_path / "log.csv") == [("red sneakers", 6), ("boots", 5)]
    (tmp_path / "log.txt").write_text("b\na\nB\n")
    assert read_query_log(tmp_path / "log.txt") == [("b", 2), ("a", 1)]
    (tmp_path / "log.jsonl").write_text('{"text": "x", "count": 1}\n{"text": "y", "count": 3}\n')
    assert read_query_log(tmp_path / "log.jsonl") == [("y", 3), ("x", 1)]
    (tmp_path / "bad.csv").write_text("text,count\nx,many\n")
    with pytest.raises(DataError, match="row 1 has 'count' = 'many'"):
        read_query_log(tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("query\nx\n")
    with pytest.raises(DataError, match="has no 'text' column"):
        read_query_log(tmp_path / "nocol.csv")


def test_embedding_backend_labels_offline_and_scores_its_answer(taxonomy, index, tmp_path):
    config = LabelConfig(voters=(VoterSpec("embedding"),), encoder="hashing", shortlist=3)
    with LabelStore(tmp_path / "s.db") as store:
        Labeler(taxonomy, config, index=index).run(store, [("sneakers", 1), ("backpack", 1)], progress=False)
        rows = labels_by_query(store)
    assert rows["sneakers"]["path"] == format_path(("Shoes", "Sneakers"))
    assert rows["backpack"]["path"] == format_path(("Bags", "Backpacks"))
    assert all(0 < r["confidence"] <= 1 and r["source"] == "embedding" for r in rows.values())
