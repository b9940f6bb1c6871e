"""From a resolved ``TrainConfig`` to a fitted ``HierarchicalClassifier``.

Later stages (fine-tuning the encoder, calibration) plug in here, so ``shelver train`` and the
Python API build models the same way.
"""

from __future__ import annotations

from shelver.classifier import HierarchicalClassifier
from shelver.config import TrainConfig
from shelver.data import LabeledData
from shelver.taxonomy import Taxonomy


def build_model(config: TrainConfig, taxonomy: Taxonomy, progress: bool = True) -> HierarchicalClassifier:
    """An unfitted estimator with every parameter taken from ``config``."""
    encoder_options = (
        {}
        if config.encoder.name.startswith("hashing")
        else {"max_seq_length": config.encoder.max_seq_length, "batch_size": config.encoder.batch_size}
    )
    return HierarchicalClassifier(
        taxonomy=taxonomy,
        encoder=config.encoder.name,
        encoder_options=encoder_options,
        head=config.head.kind,
        C=config.head.C,
        class_weight=config.head.class_weight,
        max_iter=config.head.max_iter,
        random_state=config.seed,
        progress=progress,
    )


def train_model(
    config: TrainConfig, taxonomy: Taxonomy, data: LabeledData, progress: bool = True
) -> HierarchicalClassifier:
    return build_model(config, taxonomy, progress).fit(data.texts, data.y)
