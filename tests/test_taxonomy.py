"""Taxonomy loading and validation; messages are pinned."""

from __future__ import annotations

import json

import pytest

from shelver.errors import TaxonomyError
from shelver.taxonomy import Taxonomy, format_path, parse_path


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_three_formats_give_the_same_tree(tmp_path, taxonomy):
    as_json = taxonomy.save(tmp_path / "t.json") or tmp_path / "t.json"
    as_yaml = write(
        tmp_path,
        "t.yaml",
        "".join(
            f"{c}:\n" + "".join(f"  - {s}\n" for s in taxonomy.children((c,))) for c in taxonomy.categories
        ),
    )
    as_text = write(tmp_path, "t.txt", "# comment\n\n" + "\n".join(format_path(p) for p in taxonomy.paths))
    hashes = {Taxonomy.load(p).hash for p in (as_json, as_yaml, as_text)}
    assert hashes == {taxonomy.hash}


def test_paths_not_names_identify_nodes(taxonomy):
    assert ("Bags", "Accessories") in taxonomy and ("Tops", "Accessories") in taxonomy
    assert taxonomy.children(("Tops",)) == ("Shirts", "Accessories", "Tops")
    assert taxonomy.leaf_category[taxonomy.leaf_index[("Tops", "Tops")]] == 2


def test_shared_fashion_taxonomy_loads():
    from conftest import FASHION

    taxonomy = Taxonomy.load(FASHION / "taxonomy.json")
    assert (len(taxonomy.categories), len(taxonomy)) == (39, 138)
    assert ("Belts", "Belts") in taxonomy


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "dup.txt",
            "Shoes > Boots\nShoes > Boots\n",
            "duplicate subcategory 'Boots' under 'Shoes'; sibling names must be unique",
        ),
        ("dup.json", '{"tree": {"Shoes": ["Boots"], "Shoes": ["Sandals"]}}', "duplicate key 'Shoes'"),
        ("dup.yaml", "Shoes: [Boots]\nShoes: [Sandals]\n", "duplicate key 'Shoes'"),
        ("empty.json", '{"tree": {"Shoes": ["Boots"], "Bags": []}}', "'Bags' has no children"),
        ("ragged.txt", "Shoes > Boots\nBags\n", "path 'Bags' has 1 level"),
        ("blank.txt", "Shoes >  \n", "line 1: empty name"),
        ("bad.json", "{not json", "not valid JSON"),
        ("none.txt", "# nothing\n", "the taxonomy is empty"),
        ("list.json", '["Shoes"]', "expected a mapping"),
    ],
)
def test_invalid_taxonomies_name_the_problem(tmp_path, name, text, message):
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy.load(write(tmp_path, name, text))


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(TaxonomyError, match="does not exist; pass --taxonomy PATH"):
        Taxonomy.load(tmp_path / "nope.json")


def test_check_path_hints_at_the_right_parent(taxonomy):
    with pytest.raises(TaxonomyError, match="'Sneakers' is not under category 'Bags'; its parent is 'Shoes'"):
        taxonomy.check_path(("Bags", "Sneakers"))
    with pytest.raises(
        TaxonomyError, match=r"category 'shoes' is not in the taxonomy \(did you mean 'Shoes'\?\)"
    ):
        taxonomy.check_path(("shoes", "Boots"))
    assert taxonomy.check_path(["Shoes", "Boots"]) == ("Shoes", "Boots")


def test_json_round_trip_and_depth_three(tmp_path):
    tree = {"Men": {"Shoes": ["Boots", "Sneakers"], "Tops": ["Shirts"]}, "Women": {"Bags": ["Totes"]}}
    deep = Taxonomy.from_tree(tree, levels=("gender", "category", "subcategory"))
    deep.save(tmp_path / "deep.json")
    again = Taxonomy.load(tmp_path / "deep.json")
    assert again.hash == deep.hash and again.depth == 3
    assert json.loads((tmp_path / "deep.json").read_text())["tree"] == tree
    assert parse_path("Men>Shoes > Boots") == ("Men", "Shoes", "Boots")
