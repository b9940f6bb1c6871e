"""What "the same query" means, in three strengths; each caller picks the one its question needs.

Each key ignores more than the one before it:

- ``text_key``: Unicode form, case and spacing. "Red  T-Shirt" and "red t-shirt" share it.
- ``word_sequence_key``: also punctuation. "red t-shirt" and "red t shirt" share it.
- ``word_set_key``: also word order and repeats. "shirt, blue" and "blue shirt" share it.

They are not merged because their callers need different answers: the label store keys a query
by ``text_key`` (a stored label must not shift when the key changes), synthesis calls a generated
query a duplicate or a leak by ``word_sequence_key``, and the consistency check tells "same text"
from "same words" twins by ``text_key`` and ``word_set_key``.
"""

from __future__ import annotations

import re
import unicodedata


def text_key(text: str) -> str:
    """NFKC, lower case, single spaces: the same text as typed. The query log's and label store's key."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).lower().split())


def word_sequence_key(text: str) -> str:
    """Case-folded words in order, punctuation read as a space: synthesis's duplicates and leaks."""
    return " ".join(re.sub(r"[^\w]+", " ", str(text).casefold()).split())


def word_set_key(text: str) -> str:
    """The set of a text's words, lower-cased and sorted: "Blue Shirt" and "shirt, blue" share it."""
    return " ".join(sorted(set(re.findall(r"\w+", text.lower()))))
