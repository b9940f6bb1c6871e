"""Representation learning: fine-tune the encoder on the taxonomy, then throw its head away.

Two objectives, chosen by ``encoder.objective``:

- ``classification``: a cosine-softmax head over subcategories (plus, with ``category_weight``,
  a category term that sums each category's leaves), initialised at the class centroids of
  the base encoder so the first steps already pull in a sensible direction. The head is not
  saved with the encoder; it survives only as the *end-to-end* baseline (``end_to_end_model``).
- ``contrastive``: MultipleNegativesRankingLoss on (anchor, positive, negative) triples: the
  positive shares the anchor's subcategory and, with ``hard_negatives``, the negative is from a
  sibling subcategory (same category), the pairs a per-group head must tell apart.

Training runs on sentence-transformers' trainer: tqdm with ETA, seeded, early stopping on
``valid`` loss, an optional wall-clock budget, and checkpoints in ``OUT.checkpoints/`` that a
rerun of the same command resumes from. The output is a plain sentence-transformers directory.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shelver.config import EncoderConfig
from shelver.data import LabeledData
from shelver.errors import ConfigError
from shelver.heads import LinearSoftmax
from shelver.taxonomy import Taxonomy

if TYPE_CHECKING:
    from shelver.classifier import HierarchicalClassifier

OBJECTIVES = ("classification", "contrastive")
# cosine logits are in [-1, 1]; a fixed scale turns them into confident softmax logits
# (the value MultipleNegativesRankingLoss uses too)
COSINE_SCALE = 20.0
# the head starts at the class centroids: this many rows per class are enough to place them
CENTROID_ROWS = 16
HEAD_FILE = "classification_head.safetensors"


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run produced: the encoder directory and, for ``classification``, its head."""

    encoder_dir: Path
    objective: str
    steps: int
    seconds: float
    best_eval_loss: float | None
    head: LinearSoftmax | None = None


def finetune_encoder(
    config: EncoderConfig,
    taxonomy: Taxonomy,
    train: LabeledData,
    out: str | Path,
    valid: LabeledData | None = None,
    seed: int = 0,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``config.name`` on ``train`` and save the encoder (no head) to ``out``."""
    _check(config)
    out = Path(out)
    model = _load_base(config)
    leaves = _leaf_indices(train, taxonomy)
    rng = np.random.default_rng(seed)
    loss = _make_loss(config, model, taxonomy, train.texts, leaves, rng)
    train_set = _dataset(config, train.texts, leaves, taxonomy, rng)
    eval_set = _eval_dataset(config, valid, taxonomy, rng) if valid is not None else None
    trainer = _trainer(config, model, loss, train_set, eval_set, _checkpoint_dir(out), seed, progress)
    start = time.perf_counter()
    _train(trainer, loss, _checkpoint_dir(out), config, seed)
    seconds = time.perf_counter() - start
    return _save(config, trainer, loss, out, taxonomy, seconds, seed)


def _check(config: EncoderConfig) -> None:
    if config.objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown fine-tuning objective {config.objective!r}; choose one of {', '.join(OBJECTIVES)}"
        )
    if config.name.startswith("hashing"):
        raise ConfigError(
            "the hashing encoder has no weights to fine-tune; set encoder.name to 'minilm' or a "
            "sentence-transformers directory, or encoder.finetune=false"
        )


def _load_base(config: EncoderConfig):
    from sentence_transformers import SentenceTransformer

    from shelver.encoders import resolve_model_path

    model = SentenceTransformer(resolve_model_path(config.name), device="cpu")
    model.max_seq_length = config.max_seq_length
    return model


def _leaf_indices(data: LabeledData, taxonomy: Taxonomy) -> np.ndarray:
    return np.array([taxonomy.leaf_index[tuple(row)] for row in data.y], dtype=np.int64)


# ---- objectives: datasets and losses -------------------------------------------------------
def _dataset(config: EncoderConfig, texts: list[str], leaves: np.ndarray, taxonomy: Taxonomy, rng):
    from datasets import Dataset

    if config.objective == "classification":
        return Dataset.from_dict({"text": list(texts), "label": leaves.tolist()})
    return Dataset.from_dict(_triples(texts, leaves, taxonomy, rng, config.hard_negatives))


def _eval_dataset(config: EncoderConfig, valid: LabeledData, taxonomy: Taxonomy, rng):
    leaves = _leaf_indices(valid, taxonomy)
    rows = rng.permutation(len(leaves))[: config.max_eval_rows]
    return _dataset(config, [valid.texts[i] for i in rows], leaves[rows], taxonomy, rng)


def _triples(
    texts: list[str], leaves: np.ndarray, taxonomy: Taxonomy, rng, hard_negatives: bool
) -> dict[str, list[str]]:
    """One (anchor, positive[, negative]) row per text whose subcategory has another text."""
    by_leaf = {leaf: np.flatnonzero(leaves == leaf) for leaf in np.unique(leaves)}
    leaf_category = np.asarray(taxonomy.leaf_category)
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], "negative": []}
    for i in rng.permutation(len(texts)):
        mates = by_leaf[leaves[i]]
        if len(mates) < 2:  # a subcategory with one text has no positive to learn from
            continue
        positive = rng.choice(mates[mates != i])
        columns["anchor"].append(texts[i])
        columns["positive"].append(texts[positive])
        columns["negative"].append(texts[_negative(i, leaves, leaf_category, by_leaf, rng)])
    if not hard_negatives:
        del columns["negative"]  # in-batch negatives only
    return columns


def _negative(i: int, leaves: np.ndarray, leaf_category: np.ndarray, by_leaf: dict, rng) -> int:
    """A text of a sibling subcategory when there is one, else of any other subcategory."""
    others = [leaf for leaf in by_leaf if leaf != leaves[i]]
    siblings = [leaf for leaf in others if leaf_category[leaf] == leaf_category[leaves[i]]]
    return int(rng.choice(by_leaf[rng.choice(siblings or others)]))


def _make_loss(config: EncoderConfig, model, taxonomy: Taxonomy, texts: list[str], leaves: np.ndarray, rng):
    if config.objective == "classification":
        centroids = _centroids(model, texts, leaves, len(taxonomy), rng)
        return ClassificationLoss(model, centroids, taxonomy.leaf_category, config.category_weight)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, scale=COSINE_SCALE)


def _centroids(model, texts: list[str], leaves: np.ndarray, n_leaves: int, rng) -> np.ndarray:
    """Unit-length mean embedding of up to ``CENTROID_ROWS`` texts per subcategory."""
    rows = np.concatenate(
        [rng.permutation(np.flatnonzero(leaves == leaf))[:CENTROID_ROWS] for leaf in np.unique(leaves)]
    )
    vectors = model.encode([texts[i] for i in rows], batch_size=128, normalize_embeddings=True)
    centroids = rng.normal(size=(n_leaves, vectors.shape[1])).astype(np.float32)  # unseen: random
    for leaf in np.unique(leaves):
        centroids[leaf] = vectors[leaves[rows] == leaf].mean(axis=0)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def _classification_loss_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class _ClassificationLoss(nn.Module):
        """Cosine softmax over subcategories plus a category term; the head is discarded later."""

        def __init__(self, model, centroids: np.ndarray, leaf_category: list[int], category_weight: float):
            super().__init__()
            self.model = model
            self.classifier = nn.Parameter(torch.tensor(centroids, dtype=torch.float32))
            parents = np.asarray(leaf_category)
            members = torch.tensor(np.eye(parents.max() + 1)[parents].T, dtype=torch.float32)
            self.register_buffer("category_mask", torch.log(members))  # 0 for children, -inf otherwise
            self.register_buffer("leaf_category", torch.tensor(parents, dtype=torch.long))
            self.category_weight = category_weight

        def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
            return COSINE_SCALE * F.normalize(embeddings, dim=-1) @ F.normalize(self.classifier, dim=-1).T

        def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
            logits = self.logits(self.model(sentence_features[0])["sentence_embedding"])
            loss = F.cross_entropy(logits, labels)
            if self.category_weight > 0:  # a category's logit is the log-sum of its leaves'
                category_logits = torch.logsumexp(logits[:, None, :] + self.category_mask[None], dim=-1)
                loss = loss + self.category_weight * F.cross_entropy(
                    category_logits, self.leaf_category[labels]
                )
            return loss

        def head(self) -> LinearSoftmax:
            """The head as a NumPy classifier over unit-length embeddings (what SentenceEncoder gives)."""
            weights = F.normalize(self.classifier.detach(), dim=-1).cpu().numpy() * COSINE_SCALE
            n = weights.shape[0]
            return LinearSoftmax(np.arange(n), weights.astype(np.float32), np.zeros(n, np.float32))

    return _ClassificationLoss


def ClassificationLoss(model, centroids: np.ndarray, leaf_category: list[int], category_weight: float):
    """The classification objective's loss module (torch is imported only when it is built)."""
    return _classification_loss_class()(model, centroids, leaf_category, category_weight)


# ---- the trainer: budget, early stopping, checkpoints --------------------------------------
def _checkpoint_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.checkpoints"


def _trainer(config: EncoderConfig, model, loss, train_set, eval_set, checkpoints: Path, seed: int, progress):
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback

    callbacks: list = [_HeadCheckpoints(loss), _TimeBudget(config.time_budget_s)]
    if eval_set is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.patience))
    return SentenceTransformerTrainer(
        model=model,
        args=_arguments(config, checkpoints, seed, progress, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        loss=loss,
        callbacks=callbacks,
    )


def _arguments(config: EncoderConfig, checkpoints: Path, seed: int, progress: bool, evaluate: bool):
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    contrastive = config.objective == "contrastive"
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        per_device_train_batch_size=config.train_batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        # the head starts at the centroids but still has to move faster than the encoder
        learning_rate_mapping={} if contrastive else {r"^classifier$": config.learning_rate * 20},
        warmup_steps=0.1,
        seed=seed,
        data_seed=seed,
        # duplicate texts in one batch would be false in-batch negatives
        batch_sampler=BatchSamplers.NO_DUPLICATES if contrastive else BatchSamplers.BATCH_SAMPLER,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=evaluate,
        metric_for_best_model="eval_loss" if evaluate else None,
        greater_is_better=False if evaluate else None,
        logging_steps=config.eval_steps,
        report_to="none",
        disable_tqdm=not progress,
        use_cpu=True,
    )


def _train(trainer, loss, checkpoints: Path, config: EncoderConfig, seed: int) -> None:
    """Train, resuming from the last checkpoint of an interrupted run with the same settings."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = json.dumps({"config": asdict(config), "seed": seed}, sort_keys=True)
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume and (checkpoints / "run.json").read_text() != stamp:
        raise ConfigError(
            f"{checkpoints} holds checkpoints of a run with other settings; delete it to start "
            "afresh, or rerun with the settings in its run.json to resume"
        )
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / "run.json").write_text(stamp)
    if resume:
        _load_head(loss, Path(resume))
    trainer.train(resume_from_checkpoint=resume)
    best = trainer.state.best_model_checkpoint
    if best:  # the trainer reloads the best encoder; the head lives outside it
        _load_head(loss, Path(best))


def _save(config: EncoderConfig, trainer, loss, out: Path, taxonomy: Taxonomy, seconds: float, seed: int):
    """The encoder alone goes to ``out``; checkpoints are removed once it is safely written."""
    shutil.rmtree(out, ignore_errors=True)
    trainer.model.save(str(out))
    head = loss.head() if hasattr(loss, "head") else None
    best = trainer.state.best_metric
    result = FinetuneResult(out, config.objective, trainer.state.global_step, seconds, best, head)
    summary = {
        "base": config.name,
        "taxonomy": {"name": taxonomy.name, "hash": taxonomy.hash},
        "config": asdict(config),
        "seed": seed,
        "steps": result.steps,
        "seconds": round(seconds, 1),
        "best_eval_loss": best,
    }
    (out / "shelver_finetune.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(_checkpoint_dir(out), ignore_errors=True)
    return result


def _save_head(loss, folder: Path) -> None:
    from safetensors.torch import save_file

    if hasattr(loss, "classifier"):
        save_file({"classifier": loss.classifier.detach().contiguous()}, str(folder / HEAD_FILE))


def _load_head(loss, folder: Path) -> None:
    from safetensors.torch import load_file

    if hasattr(loss, "classifier") and (folder / HEAD_FILE).is_file():
        loss.classifier.data.copy_(load_file(str(folder / HEAD_FILE))["classifier"])


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _HeadCheckpoints(_callback_base()):
    """Saves the training head beside each encoder checkpoint, so resuming restores it too."""

    def __init__(self, loss) -> None:
        self.loss = loss

    def on_save(self, args, state, control, **kwargs):
        _save_head(self.loss, Path(args.output_dir) / f"checkpoint-{state.global_step}")


class _TimeBudget(_callback_base()):
    """Stops training (after a final evaluation and checkpoint) once ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds > 0 and time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"
        return control


# ---- the end-to-end baseline ---------------------------------------------------------------
def end_to_end_model(
    result: FinetuneResult, taxonomy: Taxonomy, train: LabeledData, config: EncoderConfig
) -> HierarchicalClassifier:
    """The fine-tuned encoder predicting with its own head: a flat model, no per-group classifiers.

    Saved and loaded like any model directory (``heads.safetensors``); note that refitting a
    clone of it trains a logistic-regression flat head instead of fine-tuning again.
    """
    from shelver.classifier import FittedState, HierarchicalClassifier, training_fingerprint
    from shelver.heads import FlatHead

    if result.head is None:
        raise ConfigError(
            f"the {result.objective!r} objective has no classification head; "
            "fine-tune with encoder.objective=classification for the end-to-end baseline"
        )
    options = {"max_seq_length": config.max_seq_length, "batch_size": config.batch_size}
    model = HierarchicalClassifier(
        taxonomy=taxonomy,
        encoder=str(result.encoder_dir),
        encoder_options=options,
        head="flat",
        lexical=False,  # end to end: the fine-tuned network's own head, nothing beside it
    )
    head = FlatHead(taxonomy)
    head.leaf_model = result.head
    counts = np.bincount(_leaf_indices(train, taxonomy), minlength=len(taxonomy))
    # identity calibration until calibrate() sees a validation split
    return model.set_fitted(FittedState(head, counts, training_fingerprint(train.texts, train.y)))


def describe(result: FinetuneResult) -> dict[str, Any]:
    return {
        "encoder_dir": str(result.encoder_dir),
        "objective": result.objective,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "best_eval_loss": result.best_eval_loss,
    }
