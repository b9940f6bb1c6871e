"""Labeling backends behind one protocol, built by name: ``make_backend("openai", model=...)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shelver.config import BACKENDS
from shelver.errors import ConfigError
from shelver.labeling.backends.base import NONE_ANSWER, Backend, Reply, Request

# what --model means when it is not given
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "llamacpp": "smollm2", "fake": "first", "embedding": None}


def make_backend(
    name: str, model: str | None = None, options: Mapping[str, Any] | None = None, index: Any = None
) -> Backend:
    """Build a backend; ``index`` (a ``PathIndex``) is what the embedding backend scores with."""
    options = dict(options or {})
    model = model or DEFAULT_MODELS.get(name)
    try:
        return _build(name, model, options, index)
    except TypeError as err:  # an unknown keyword in --option
        raise ConfigError(
            f"backend {name!r} does not take that option ({err}); see 'shelver label --help'"
        ) from None


def _build(name: str, model: str | None, options: dict[str, Any], index: Any) -> Backend:
    if name == "openai":
        from shelver.labeling.backends.openai import OpenAIBackend

        return OpenAIBackend(model=model, **options)
    if name == "llamacpp":
        from shelver.labeling.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model=model, **options)
    if name == "fake":
        from shelver.labeling.backends.fake import FakeBackend

        return FakeBackend(model=model, **options)
    if name == "embedding":
        from shelver.labeling.backends.embedding import EmbeddingBackend

        if index is None:
            raise ConfigError("the embedding backend needs the path index (shortlist) it scores with")
        return EmbeddingBackend(index, **options)
    raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "NONE_ANSWER", "Backend", "Reply", "Request", "make_backend"]
