"""Resolving, validating and voting: every label is a real path, every repair and rejection counted."""

from __future__ import annotations

import pytest

from shelver.labeling.backends.base import answer_grammar, answer_schema
from shelver.labeling.prompts import Prompt
from shelver.labeling.resolver import PathResolver
from shelver.labeling.validation import extract_answer, validate
from shelver.labeling.votes import Vote, decide


@pytest.fixture(scope="module")
def resolver(taxonomy):
    return PathResolver(taxonomy, synonyms={"trainers": "Sneakers"})


@pytest.mark.parametrize(
    ("text", "path", "repairs"),
    [
        ("Shoes > Sneakers", ("Shoes", "Sneakers"), ()),
        ("Shoes>Sneakers", ("Shoes", "Sneakers"), ("spacing",)),
        ("shoes > SNEAKERS", ("Shoes", "Sneakers"), ("case",)),
        ("Shoes / Sneakers", ("Shoes", "Sneakers"), ("separator",)),
        ("Shoes -> Boots", ("Shoes", "Boots"), ("separator",)),
        ("Shoes > Sneaker", ("Shoes", "Sneakers"), ("synonym",)),
        ("Shoes > trainers", ("Shoes", "Sneakers"), ("synonym",)),
        ("Backpacks", ("Bags", "Backpacks"), ("parent",)),
        ("Tops > Tops", ("Tops", "Tops"), ()),
    ],
)
def test_variants_resolve_to_the_canonical_path_with_the_repair_named(resolver, text, path, repairs):
    resolution = resolver.resolve(text)
    assert resolution.path == path
    assert resolution.repairs == repairs


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Bags > Sneakers", "'Sneakers' is not under category 'Bags'; its parent is 'Shoes'"),
        ("Accessories", "ambiguous: 'Accessories' is under 'Bags' and 'Tops'"),
        ("Hats > Caps", "category 'Hats' is not in the taxonomy"),
        ("Shoes > Sneakers > Red", "has 3 level"),
        ("", "empty path"),
    ],
)
def test_invalid_paths_are_rejected_with_the_reason(resolver, text, reason):
    resolution = resolver.resolve(text)
    assert resolution.path is None
    assert reason in resolution.reason


@pytest.mark.parametrize(
    ("raw", "status", "repairs", "reason"),
    [
        ('{"path": "Shoes > Sneakers"}', "ok", (), ""),
        ('```json\n{"path": "Shoes > Sneakers"}\n```', "ok", (), ""),
        ('Sure! {"path": "shoes > sneakers"} hope it helps', "repaired", ("json", "case"), ""),
        ('{"path": "Shoes > Sneakers"', "repaired", ("json",), ""),
        ('{"category": "Shoes > Boots"}', "repaired", ("json",), ""),
        ("Shoes > Boots", "repaired", ("json",), ""),
        ('{"path": "none"}', "none", (), ""),
        ('{"path": null}', "none", (), ""),
        ('{"path": "Bags > Sneakers"}', "rejected", (), "is not under category 'Bags'"),
        ("", "rejected", (), "empty reply"),
        ("   ", "rejected", (), "empty reply"),
        ('{"path": 3}', "rejected", (), "'path' is int"),
        ('{"answer_is": "x"}', "rejected", (), "no 'path' key"),
        ('["Shoes > Boots"]', "rejected", (), "JSON list"),
        ("I think this one is\nprobably { a shoe", "rejected", (), "unparseable"),
    ],
)
def test_validate_parses_repairs_and_rejects(resolver, raw, status, repairs, reason):
    verdict = validate(raw, resolver)
    assert verdict.status == status
    assert verdict.repairs == repairs
    assert reason in verdict.reason
    assert (verdict.path is not None) == (status in ("ok", "repaired"))


def test_a_valid_path_off_the_shortlist_is_kept_and_flagged(resolver):
    verdict = validate('{"path": "Tops > Shirts"}', resolver, choices=(("Shoes", "Boots"),))
    assert verdict.status == "ok" and verdict.off_shortlist
    assert not validate('{"path": "Shoes > Boots"}', resolver, choices=(("Shoes", "Boots"),)).off_shortlist


def test_extract_answer_never_raises_on_junk():
    for junk in ("{", "}{", '{"path": ', "null", "[]", "\x00\x01", "{" * 100):
        answer, _, problem = extract_answer(junk)
        assert answer is None or isinstance(answer, str)
        assert isinstance(problem, str)


def _vote(voter, status, path=None, score=None):
    return Vote(voter, status, path, score)


def test_votes_agreement_becomes_confidence():
    a, b = ("Shoes", "Boots"), ("Shoes", "Sneakers")
    unanimous = decide([_vote("x", "ok", a), _vote("y", "repaired", a)])
    assert (unanimous.status, unanimous.path, unanimous.confidence, unanimous.agreement) == (
        "labeled",
        a,
        1.0,
        1.0,
    )
    split = decide([_vote("x", "ok", a), _vote("y", "ok", b), _vote("z", "ok", b)])
    assert split.path == b and split.agreement == pytest.approx(2 / 3)
    tie = decide([_vote("x", "ok", a), _vote("y", "ok", b)])
    assert tie.path == a and tie.confidence == 0.5  # ties go to the first voter
    scored = decide([_vote("llm", "ok", a), _vote("emb", "ok", a, score=0.6)])
    assert scored.confidence == pytest.approx(0.8)


def test_rejected_votes_count_against_the_label_and_none_is_an_outcome():
    a = ("Shoes", "Boots")
    partly = decide([_vote("x", "ok", a), _vote("y", "rejected")])
    assert partly.path == a and partly.agreement == 0.5
    assert decide([_vote("x", "none"), _vote("y", "none")]).status == "none"
    assert decide([_vote("x", "rejected"), _vote("y", "rejected")]).status == "rejected"
    assert decide([_vote("x", "rejected"), _vote("y", "error")]).status == "error"


def test_constrained_output_formats_admit_exactly_the_answers():
    answers = ("Shoes > Sneakers", 'Odd "quoted" > name', "none")
    grammar = answer_grammar(answers)
    assert grammar.startswith('root ::= "{\\"path\\": " answer "}"')
    assert '"\\"Odd \\\\\\"quoted\\\\\\" > name\\""' in grammar
    assert answer_schema(answers)["properties"]["path"]["enum"] == list(answers)


def test_prompt_version_follows_the_text(tmp_path, taxonomy):
    builtin = Prompt.load("label_v1")
    assert builtin.version.startswith("label_v1@")
    custom = tmp_path / "mine.txt"
    custom.write_text("[system]\nBe brief.\n[user]\nQuery: {query}\n{candidates}\n")
    first = Prompt.load(str(custom))
    custom.write_text("[system]\nBe very brief.\n[user]\nQuery: {query}\n{candidates}\n")
    assert Prompt.load(str(custom)).version != first.version
    messages = first.messages("red boots", taxonomy.paths[:2])
    assert messages[1]["content"] == "Query: red boots\n- Shoes > Sneakers\n- Shoes > Boots"


def test_bad_prompts_are_refused_with_the_fix(tmp_path):
    with pytest.raises(Exception, match="no prompt 'label_v9'"):
        Prompt.load("label_v9")
    bad = tmp_path / "bad.txt"
    bad.write_text("[user]\nQuery: {query}\n")
    with pytest.raises(Exception, match="needs a \\[system\\] section followed by a \\[user\\] section"):
        Prompt.load(str(bad))
