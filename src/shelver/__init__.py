"""shelver: put every e-commerce search query on the right shelf, or say honestly it can't."""

from __future__ import annotations

__version__ = "0.1.0"

from shelver.classifier import HierarchicalClassifier
from shelver.decisions import Prediction
from shelver.model_dir import load_model, save_model
from shelver.taxonomy import Taxonomy

__all__ = ["HierarchicalClassifier", "Prediction", "Taxonomy", "__version__", "load_model", "save_model"]
