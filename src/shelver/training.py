"""From a resolved ``TrainConfig`` to a fitted ``HierarchicalClassifier``.

Later stages (fine-tuning the encoder, calibration) plug in here, so ``shelver train`` and the
Python API build models the same way.
"""

from __future__ import annotations

from shelver.classifier import HierarchicalClassifier
from shelver.config import TrainConfig
from shelver.data import LabeledData
from shelver.errors import ConfigError
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
        target_precision=config.decision.target_precision,
        multi_label=config.decision.multi_label,
    )


def train_model(
    config: TrainConfig,
    taxonomy: Taxonomy,
    data: LabeledData,
    progress: bool = True,
    valid: LabeledData | None = None,
) -> HierarchicalClassifier:
    """Fit on ``data``; with ``valid``, calibrate on it (temperatures, and thresholds when a
    target precision is set)."""
    if config.decision.target_precision is not None and valid is None:
        raise ConfigError(
            "a target precision needs validation data to choose thresholds on "
            "(never the training data): pass --valid FILE"
        )
    model = build_model(config, taxonomy, progress).fit(data.texts, data.y)
    return model.calibrate(valid.texts, valid.y) if valid is not None else model
