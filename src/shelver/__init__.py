"""shelver: put every e-commerce search query on the right shelf, or say honestly it can't."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use, so the CLI and the service start without loading sklearn or torch.
_LAZY = {
    "HierarchicalClassifier": "shelver.classifier",
    "Prediction": "shelver.decisions",
    "Taxonomy": "shelver.taxonomy",
    "load_model": "shelver.model_dir",
    "save_model": "shelver.model_dir",
}

if TYPE_CHECKING:
    from shelver.classifier import HierarchicalClassifier
    from shelver.decisions import Prediction
    from shelver.model_dir import load_model, save_model
    from shelver.taxonomy import Taxonomy


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'shelver' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["HierarchicalClassifier", "Prediction", "Taxonomy", "__version__", "load_model", "save_model"]
