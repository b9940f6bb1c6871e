"""Sparse lexical features next to the encoder's embedding: TF-IDF over words and characters.

Product titles and queries carry strong lexical signal (brands, exact product words) that a
small sentence encoder blurs; a linear head that sees both the embedding and TF-IDF n-grams
gets the best of each. What is learned is a vocabulary and its idf weights: saved as JSON and
arrays (never pickle). scikit-learn fits the vocabulary; applying it is plain Python and NumPy
that computes what ``TfidfVectorizer`` computes, so serving imports neither scikit-learn nor
SciPy, and the features -- and every prediction -- are identical after a round trip.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shelver.errors import ConfigError, DataError, ModelDirError

Arrays = dict[str, np.ndarray]
BLOCKS = ("word", "char")
# scikit-learn's default token_pattern: words of two or more word characters
TOKEN = re.compile(r"(?u)\b\w\w+\b")
# rows per step of a batch product: bounds the (non-zeros x classes) block gathered at once
ROWS_PER_STEP = 256


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
    """Fitted TF-IDF vocabularies; ``rows`` gives the unit-norm blocks of each text.

    scikit-learn fits the vocabulary; transforming is plain Python and NumPy, term for term what
    ``TfidfVectorizer`` computes (sublinear tf, the saved idf, l2 per block), at a fraction of
    its per-call cost: a service answers one query at a time, where that cost dominates.
    """

    options: LexicalOptions = field(default_factory=LexicalOptions)
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    idf: dict[str, np.ndarray] = field(default_factory=dict)

    def fit(self, texts: Sequence[str]) -> LexicalFeatures:
        for block in BLOCKS:
            vectorizer = _vectorizer(self.options, block).fit(list(texts))
            terms = vectorizer.get_feature_names_out()
            self.vocabularies[block] = [str(t) for t in terms]
            self.idf[block] = vectorizer.idf_.astype(np.float64)
        self._tables = None
        return self

    @property
    def n_features(self) -> int:
        return sum(len(v) for v in self.vocabularies.values())

    def rows(self, texts: Sequence[str]) -> SparseRows:
        """The lexical block of each text: word then character n-grams, each block of unit norm."""
        tables = self._compiled()
        columns: list[int] = []
        counts: list[int] = []
        starts: list[int] = []  # where each non-empty (text, block) segment begins
        indptr = [0]
        for text in texts:
            tables.count(str(text).lower(), columns, counts, starts)
            indptr.append(len(columns))
        indices = np.array(columns, np.int32)
        data = tables.weigh(counts, indices, starts)
        if self.options.weight != 1.0:
            data *= self.options.weight
        return SparseRows(np.array(indptr, np.int64), indices, data.astype(np.float32), self.n_features)

    def transform(self, texts: Sequence[str]) -> Any:
        """``rows(texts)`` as a SciPy CSR matrix (float32), for fitting and inspection."""
        return self.rows(texts).tocsr()

    def _compiled(self) -> _Tables:
        if getattr(self, "_tables", None) is None:
            self._tables = _Tables.of(self.options, self.vocabularies, self.idf)
        return self._tables

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


def join_features(embeddings: np.ndarray, lexical: Any | None) -> np.ndarray | Features:
    """The representation a head sees: the embedding, and the lexical block beside it if any."""
    if lexical is None:
        return embeddings
    return Features(embeddings, lexical)


def training_matrix(X: Any) -> Any:
    """One matrix for scikit-learn's solvers: the blocks of ``Features`` joined as SciPy CSR."""
    return X.tocsr() if isinstance(X, Features) else X


def word_ngrams(text: str, low: int, high: int) -> list[str]:
    """scikit-learn's ``analyzer="word"`` n-grams of an already lower-cased text."""
    tokens = TOKEN.findall(text)
    if high == 1:
        return tokens
    out = list(tokens) if low == 1 else []
    for n in range(max(low, 2), min(high, len(tokens)) + 1):
        out.extend([" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)])
    return out


def char_wb_ngrams(text: str, low: int, high: int) -> list[str]:
    """scikit-learn's ``analyzer="char_wb"`` n-grams: inside words padded with one space."""
    out: list[str] = []
    for word in text.split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if size <= n:  # a word shorter than n counts once, whole (as scikit-learn does)
                out.append(padded)
                break
            out.extend([padded[i : i + n] for i in range(size - n + 1)])
    return out


@dataclass(frozen=True)
class _Tables:
    """Term -> column lookups (the char block's columns follow the word block's) and the idf."""

    word: dict[str, int]
    char: dict[str, int]
    word_ngrams: tuple[int, int]
    char_ngrams: tuple[int, int]
    idf: np.ndarray  # float64, both blocks in column order

    @classmethod
    def of(cls, options: LexicalOptions, vocabularies: dict[str, list[str]], idf: Arrays) -> _Tables:
        word = {term: i for i, term in enumerate(vocabularies["word"])}
        char = {term: len(word) + i for i, term in enumerate(vocabularies["char"])}
        idf_all = np.concatenate([idf["word"], idf["char"]]).astype(np.float64)
        return cls(word, char, tuple(options.word_ngrams), tuple(options.char_ngrams), idf_all)

    def count(self, text: str, columns: list[int], counts: list[int], starts: list[int]) -> None:
        """Append the text's known terms, per block: sorted columns and their counts."""
        for terms, lookup in (
            (word_ngrams(text, *self.word_ngrams), self.word),
            (char_wb_ngrams(text, *self.char_ngrams), self.char),
        ):
            found = Counter(map(lookup.get, terms))
            found.pop(None, None)
            if found:
                starts.append(len(columns))
                keys = sorted(found)
                columns.extend(keys)
                counts.extend(map(found.__getitem__, keys))

    def weigh(self, counts: list[int], columns: np.ndarray, starts: list[int]) -> np.ndarray:
        """Sublinear tf times idf, each (text, block) segment scaled to unit l2 norm (float64)."""
        data = self.idf[columns]
        if not len(data):
            return data
        if max(counts) > 1:  # most query terms occur once, and log(1) + 1 is 1
            data *= np.log(np.array(counts, np.float64)) + 1.0
        norms = np.sqrt(np.add.reduceat(data * data, starts))
        ends = [*starts[1:], len(data)]
        data /= np.repeat(norms, [end - start for start, end in zip(starts, ends, strict=True)])
        return data


@dataclass(frozen=True)
class SparseRows:
    """CSR rows as plain arrays: what the heads multiply, with no SciPy on the serving path."""

    indptr: np.ndarray  # (n + 1,) int64
    indices: np.ndarray  # (nnz,) int32 columns
    data: np.ndarray  # (nnz,) float32
    n_columns: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.indptr) - 1, self.n_columns)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __matmul__(self, weights: np.ndarray) -> np.ndarray:
        """``rows @ weights`` for ``(n_columns, k)`` weights, reading only the weight rows it needs."""
        if weights.shape[0] != self.n_columns:
            raise DataError(
                f"the lexical block has {self.n_columns:,} columns but the weights have "
                f"{weights.shape[0]:,} rows; the features and the head come from different models"
            )
        if len(self) == 1:  # the request path: one gather, one vector-matrix product
            return (self.data @ weights[self.indices])[None, :]
        out = np.zeros((len(self), weights.shape[1]), dtype=np.result_type(self.data, weights))
        for start in range(0, len(self), ROWS_PER_STEP):
            self._product_into(out, weights, start, min(start + ROWS_PER_STEP, len(self)))
        return out

    def _product_into(self, out: np.ndarray, weights: np.ndarray, start: int, stop: int) -> None:
        rows = start + np.flatnonzero(np.diff(self.indptr[start : stop + 1]))
        if not len(rows):
            return
        begin, end = self.indptr[start], self.indptr[stop]
        products = weights[self.indices[begin:end]] * self.data[begin:end, None]
        out[rows] = np.add.reduceat(products, self.indptr[rows] - begin, axis=0)

    def tocsr(self) -> Any:
        import scipy.sparse as sp

        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)


@dataclass(frozen=True)
class Features:
    """What a head sees with lexical features: the embedding block and the lexical block, kept
    apart so each is multiplied as it is (no joined sparse matrix built per call)."""

    dense: np.ndarray
    lexical: Any  # SparseRows (or any sparse matrix with ``@`` and ``shape``)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dense.shape[0], self.dense.shape[1] + self.lexical.shape[1])

    def __len__(self) -> int:
        return self.dense.shape[0]

    def __matmul__(self, weights: np.ndarray) -> np.ndarray:
        split = self.dense.shape[1]
        return self.dense @ weights[:split] + self.lexical @ weights[split:]

    def tocsr(self) -> Any:
        import scipy.sparse as sp

        return sp.hstack([sp.csr_matrix(self.dense), self.lexical.tocsr()], format="csr")
