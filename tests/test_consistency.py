"""Label consistency: near-identical texts with different labels (shelver.consistency, `labels conflicts`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from shelver.cli import main
from shelver.consistency import find_twins, nearest_other
from shelver.encoders import HashingEncoder
from shelver.text_keys import word_set_key

TEXTS = ["red sneaker", "Red  Sneaker", "blue tote bag", "tote bag blue", "green hiking boot", "cufflinks"]
PATHS = [
    ("Shoes", "Sneakers"),
    ("Shoes", "Boots"),
    ("Bags", "Handbags"),
    ("Bags", "Handbags"),
    ("Shoes", "Boots"),
    ("Tops", "Accessories"),
]


def twins(where: list[str], min_similarity: float = 0.95):
    return find_twins(TEXTS, PATHS, HashingEncoder().encode(TEXTS), where, min_similarity)


def test_repeats_with_other_labels_are_reported_and_agreeing_ones_counted() -> None:
    found = twins([f"f.csv:{i}" for i in range(1, 7)])
    assert (found.rows, found.with_twin, found.agreeing) == (6, 4, 2)
    assert found.agreement == 0.5
    (pair,) = found.conflicts.itertuples()
    assert (pair.kind, pair.text, pair.twin_text) == ("same text", "red sneaker", "Red  Sneaker")
    assert {pair.path, pair.twin_path} == {"Shoes > Sneakers", "Shoes > Boots"}
    assert (pair.origin, pair.twin_origin) == ("f.csv:1", "f.csv:2")
    assert found.label_pairs() == [("Shoes > Boots", "Shoes > Sneakers", 1)]


def test_the_rows_of_one_multi_label_cell_are_not_twins() -> None:
    found = twins(["f.csv:1", "f.csv:1", "f.csv:3", "f.csv:4", "f.csv:5", "f.csv:6"])
    assert found.conflicts.empty
    assert (found.with_twin, found.agreeing) == (2, 2)


def test_a_stricter_similarity_finds_fewer_twins() -> None:
    where = [f"f.csv:{i}" for i in range(1, 7)]
    loose, strict = twins(where, 0.0), twins(where, 1.0 - 1e-6)
    assert loose.with_twin == 6 and strict.with_twin <= 4
    assert len(loose.conflicts) >= len(strict.conflicts)


def test_nearest_other_skips_the_row_itself_and_its_group() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    best, sims = nearest_other(vectors, np.array([0, 0, 1, 2]))
    assert best.tolist()[:3] == [2, 2, 0]
    assert sims[0] < 1.0  # row 1, identical to row 0, is in its group


def test_word_key_ignores_case_order_and_punctuation() -> None:
    assert word_set_key("Tote bag, BLUE") == word_set_key("blue tote bag") != word_set_key("blue bag")


def test_labels_conflicts_command(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    pd.DataFrame(
        {
            "text": ["red sneaker", "blue tote bag"],
            "path": ["Shoes > Sneakers | Shoes > Boots", "Bags > Handbags"],
        }
    ).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(
        {"text": ["Red Sneaker", "tote bag blue"], "path": ["Shoes > Boots", "Bags > Backpacks"]}
    ).to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "conflicts.csv"
    args = ["labels", "conflicts", "--taxonomy", tiny_files["taxonomy"], "--data", tmp_path / "a.csv"]
    args += ["--data", tmp_path / "b.csv", "--out", out, "--encoder", "hashing", "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pairs = pd.read_csv(out)
    assert set(pairs.kind) == {"same text", "same words"}
    assert set(pairs.origin) | set(pairs.twin_origin) == {"a.csv:1", "a.csv:2", "b.csv:1", "b.csv:2"}
    assert (
        "carry their twin's label" in result.output
        and "Bags > Backpacks  vs  Bags > Handbags" in result.output
    )


def _write_pairs(tmp_path: Path) -> list[str]:
    pd.DataFrame({"text": TEXTS, "path": [" > ".join(p) for p in PATHS]}).to_csv(
        tmp_path / "a.csv", index=False
    )
    return ["labels", "conflicts", "--data", str(tmp_path / "a.csv"), "--out", str(tmp_path / "c.csv")]


def test_a_sample_checks_only_that_many_rows(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    args = _write_pairs(tmp_path) + ["--taxonomy", str(tiny_files["taxonomy"]), "--encoder", "hashing"]
    result = CliRunner().invoke(main, [*args, "--sample", "3", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "random sample of 3 of 6 rows" in result.output and "\n3 rows: " in result.output


def test_too_many_rows_without_a_sample_is_refused_with_the_fix(
    tmp_path: Path, tiny_files: dict[str, Path], monkeypatch
) -> None:
    monkeypatch.setattr("shelver.consistency.MAX_ROWS", 5)
    args = _write_pairs(tmp_path) + ["--taxonomy", str(tiny_files["taxonomy"]), "--encoder", "hashing"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "6 labeled rows" in result.output and "--sample 2" in result.output
    assert not (tmp_path / "c.csv").exists()


def test_the_three_query_keys_each_ignore_more_than_the_last():
    from shelver.text_keys import text_key, word_sequence_key

    assert (
        text_key("Red  T-Shirt\u00a0") == text_key("red t-shirt") == "red t-shirt" != text_key("red t shirt")
    )
    assert (
        word_sequence_key("Red T-Shirt!")
        == word_sequence_key("red t shirt")
        != word_sequence_key("shirt t red")
    )
    assert word_set_key("shirt, t red") == word_set_key("Red T-Shirt") != word_set_key("red shirt")
