"""Sparse lexical features next to the encoder's embedding: TF-IDF over words and characters.

Product titles and queries carry strong lexical signal (brands, exact product words) that a
small sentence encoder blurs; a linear head that sees both the embedding and TF-IDF n-grams
gets the best of each. What is learned is a vocabulary and its idf weights: saved as JSON and
arrays (never pickle) and turned back into the same scikit-learn vectorizers on load, so the
features -- and every prediction -- are identical after a round trip. No torch is involved.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shelver.errors import ConfigError, ModelDirError

Arrays = dict[str, np.ndarray]
BLOCKS = ("word", "char")


@dataclass(frozen=True)
class LexicalOptions:
    """How the lexical block is built; each default says why."""

    # unigrams and bigrams: brands and two-word product names ("peanut butter")
    word_ngrams: tuple[int, int] = (1, 2)
    # char 2-5 grams inside word boundaries: plurals, typos and compounds of short titles
    char_ngrams: tuple[int, int] = (2, 5)
    # vocabulary caps keep every head's weights serveable (n_classes x n_features float32):
    # a flat head over 138 subcategories is 138 x 50k x 4 B = 28 MB. Fashion train has 13.5k word /
    # 30.4k char n-grams seen twice, grocery 21.5k / 39.6k: the caps bound larger catalogues
    max_word_features: int = 20_000
    max_char_features: int = 30_000
    # an n-gram seen in one training row is noise more often than signal
    min_df: int = 2
    # scale of the lexical block against the unit-length embedding (each block has unit norm)
    weight: float = 1.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> LexicalOptions:
        values = dict(values or {})
        names = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - names
        if unknown:
            raise ConfigError(
                f"unknown lexical option {sorted(unknown)[0]!r}; valid options: {', '.join(sorted(names))}"
            )
        for key in ("word_ngrams", "char_ngrams"):
            if key in values:
                values[key] = tuple(int(n) for n in values[key])
        return cls(**values)


@dataclass
class LexicalFeatures:
    """Fitted TF-IDF vocabularies; ``transform`` gives a CSR matrix of unit-norm blocks."""

    options: LexicalOptions = field(default_factory=LexicalOptions)
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    idf: dict[str, np.ndarray] = field(default_factory=dict)

    def fit(self, texts: Sequence[str]) -> LexicalFeatures:
        for block in BLOCKS:
            vectorizer = _vectorizer(self.options, block).fit(list(texts))
            terms = vectorizer.get_feature_names_out()
            self.vocabularies[block] = [str(t) for t in terms]
            self.idf[block] = vectorizer.idf_.astype(np.float64)
        self._vectorizers = None
        return self

    @property
    def n_features(self) -> int:
        return sum(len(v) for v in self.vocabularies.values())

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        blocks = [vectorizer.transform(list(texts)) for vectorizer in self._fitted_vectorizers()]
        return (sp.hstack(blocks, format="csr") * self.options.weight).astype(np.float32)

    def _fitted_vectorizers(self) -> list:
        if getattr(self, "_vectorizers", None) is None:
            self._vectorizers = [self._rebuild(block) for block in BLOCKS]
        return self._vectorizers

    def _rebuild(self, block: str):
        """The fitted vectorizer, from the vocabulary and idf alone (nothing else is saved)."""
        vocabulary = {term: i for i, term in enumerate(self.vocabularies[block])}
        vectorizer = _vectorizer(self.options, block, vocabulary=vocabulary)
        vectorizer.idf_ = self.idf[block]
        return vectorizer

    # ---- persistence: JSON for the vocabulary, arrays for the idf ------------------------
    def to_json(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "vocabularies": self.vocabularies}

    def to_arrays(self) -> Arrays:
        return {f"lexical.{block}.idf": self.idf[block] for block in BLOCKS}

    @classmethod
    def from_saved(cls, payload: dict[str, Any], arrays: Arrays) -> LexicalFeatures:
        try:
            options = LexicalOptions.from_dict(payload["options"])
            vocabularies = {block: list(payload["vocabularies"][block]) for block in BLOCKS}
            idf = {block: np.asarray(arrays[f"lexical.{block}.idf"]) for block in BLOCKS}
        except KeyError as err:
            raise ModelDirError(
                f"lexical features are incomplete (missing {err}); retrain the model"
            ) from None
        return cls(options, vocabularies, idf)

    def save(self, root: Path) -> list[str]:
        """Write ``lexical.json`` and ``lexical.safetensors``; returns the file names."""
        from safetensors.numpy import save_file

        (root / "lexical.json").write_text(json.dumps(self.to_json(), ensure_ascii=False) + "\n")
        save_file(self.to_arrays(), str(root / "lexical.safetensors"))
        return ["lexical.json", "lexical.safetensors"]

    @classmethod
    def load(cls, root: Path) -> LexicalFeatures:
        from safetensors.numpy import load_file

        payload = json.loads((root / "lexical.json").read_text())
        return cls.from_saved(payload, load_file(str(root / "lexical.safetensors")))


def _vectorizer(options: LexicalOptions, block: str, vocabulary: dict[str, int] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = block == "word"
    cap = options.max_word_features if word else options.max_char_features
    return TfidfVectorizer(
        analyzer="word" if word else "char_wb",
        ngram_range=options.word_ngrams if word else options.char_ngrams,
        max_features=None if vocabulary else cap,
        min_df=1 if vocabulary else options.min_df,
        vocabulary=vocabulary,
        sublinear_tf=True,
        lowercase=True,
        dtype=np.float64,
    )


def join_features(embeddings: np.ndarray, lexical: sp.spmatrix | None) -> np.ndarray | sp.csr_matrix:
    """The representation a head sees: the embedding, and the lexical block beside it if any."""
    if lexical is None:
        return embeddings
    return sp.hstack([sp.csr_matrix(embeddings), lexical], format="csr")
