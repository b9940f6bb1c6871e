"""Candidate paths for a query, retrieved with the encoder, and the texts that describe paths.

A small model reads five or ten candidates well and two hundred badly: the shortlist is what
the LLM chooses from, and the same similarities are the ``embedding`` backend's whole answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shelver.encoders import CachedEncoder, Encoder, make_encoder
from shelver.taxonomy import Path_, Taxonomy, format_path, parse_path


def describe(path: Sequence[str], descriptions: Mapping[str, str] | None = None) -> str:
    """The text a path is embedded as: its own description if given, else ``leaf (parent)``.

    The leaf name first: it says what the thing is; the parent only disambiguates.
    """
    key = format_path(path)
    if descriptions and key in descriptions:
        return descriptions[key]
    return f"{path[-1]} ({', '.join(reversed(path[:-1]))})" if len(path) > 1 else path[0]


class PathIndex:
    """Every leaf's description embedded once; cosine top-k for queries."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        encoder: str | Encoder = "minilm",
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        self.taxonomy = taxonomy
        inner = make_encoder(encoder)
        self.encoder = inner if isinstance(inner, CachedEncoder) else CachedEncoder(inner)
        self.descriptions = dict(descriptions or {})
        texts = [describe(p, self.descriptions) for p in taxonomy.paths]
        self.vectors = self.encoder.encode(texts)

    def similarities(self, queries: Sequence[str]) -> np.ndarray:
        """``(len(queries), n_leaves)`` cosine similarities."""
        return self.encoder.encode(list(queries)) @ self.vectors.T

    def shortlist(self, queries: Sequence[str], k: int) -> list[tuple[Path_, ...]]:
        """The ``k`` most similar leaves of each query, best first."""
        sims = self.similarities(queries)
        k = min(k, sims.shape[1])
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return [tuple(self.taxonomy.paths[i] for i in row) for row in top]

    def score_choices(self, query: str, choices: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``query`` to each choice (a formatted path)."""
        index = self.taxonomy.leaf_index
        rows = [index.get(parse_path(c)) for c in choices]
        sims = self.similarities([query])[0]
        return np.array([sims[r] if r is not None else -1.0 for r in rows], dtype=np.float32)
