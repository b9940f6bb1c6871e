"""``HierarchicalClassifier``: an sklearn estimator from query texts to ``(n, 2)`` label paths.

Body and head, as in setfit: an encoder turns texts into embeddings once (cached by text),
and a head (flat, masked or per-group) is trained on them. ``__init__`` only stores
parameters; everything learned ends in ``_`` and is set in one method, ``set_fitted`` (which
``fit``, loading a model directory and the end-to-end baseline call), or by ``calibrate``;
training data is not kept.

Serving loads this module, so it imports neither scikit-learn nor pandas: the estimator
contract comes from ``ParamsMixin`` below (``sklearn.base.clone`` and ``is_classifier`` work on
it), and training imports what it needs when it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from shelver import drift
from shelver.calibration import (
    HUMAN,
    Calibration,
    check_decision_params,
    choose_thresholds,
    default_thresholds,
    provenance,
    served_rows,
)
from shelver.config import (
    AUTO_CLASS_WEIGHTS,
    AUTO_HEADS,
    AUTO_LEXICAL,
    AUTO_ROUTER,
    DecisionConfig,
    EncoderConfig,
    HeadConfig,
    TrainConfig,
)
from shelver.decisions import (
    Prediction,
    Scores,
    Thresholds,
    answered_paths,
    decide,
    multi_label_predictions,
    single_label_predictions,
    withhold,
)
from shelver.encoders import CachedEncoder, Encoder, make_encoder
from shelver.errors import ConfigError, DataError, NotFittedError
from shelver.features import LexicalFeatures, LexicalOptions, join_features
from shelver.heads import Head, LinearOptions, make_head
from shelver.taxonomy import Taxonomy, format_path


class _Unset(Enum):
    UNSET = "unset"


# a fit knows nothing of a selection (no ``selection_``); a loaded model knows it had none (None)
UNSET = _Unset.UNSET


@dataclasses.dataclass(frozen=True)
class FittedDecisions:
    """What ``calibrate`` learns: the calibration, the thresholds and what they were fitted on."""

    multi_label: bool
    calibration: Calibration
    thresholds: Thresholds
    calibrated_on: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class FittedState:
    """Everything a fitted ``HierarchicalClassifier`` learned, set at once by ``set_fitted``.

    ``encoder`` None builds the ``encoder`` parameter; ``decisions`` None is the identity
    calibration with thresholds from the parameters; ``selection`` is how ``train_model`` chose
    the head (``UNSET``: leave ``selection_`` as it is).
    """

    head: Head
    train_counts: np.ndarray
    train_fingerprint: str
    encoder: Encoder | None = None
    lexical: LexicalFeatures | None = None
    train_sources: dict[str, int] | None = None
    decisions: FittedDecisions | None = None
    selection: dict[str, Any] | _Unset | None = UNSET


class ParamsMixin:
    """scikit-learn's estimator contract without importing scikit-learn.

    ``get_params`` / ``set_params`` read and write the ``__init__`` parameters (``a__b`` reaches
    into a nested estimator), which is all ``sklearn.base.clone`` needs; ``_estimator_type`` and
    ``__sklearn_tags__`` make ``sklearn.base.is_classifier`` true. Tags are built only when
    scikit-learn asks for them, so it is imported only by callers that already use it.
    """

    _estimator_type = "classifier"

    @classmethod
    def _get_param_names(cls) -> list[str]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in parameters if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> ParamsMixin:
        valid = self._get_param_names()
        for key, value in params.items():
            name, _, inner = key.partition("__")
            if name not in valid:
                raise ConfigError(
                    f"invalid parameter {name!r} for {type(self).__name__}; "
                    f"valid parameters: {', '.join(valid)}"
                )
            if inner:
                getattr(self, name).set_params(**{inner: value})
            else:
                setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True, multi_output=True, single_output=False),
            classifier_tags=ClassifierTags(),
            input_tags=InputTags(one_d_array=True, two_d_array=False, string=True),
        )

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params(deep=False).items() if not _same(v, defaults[k])]
        return f"{type(self).__name__}({', '.join(changed)})"


def _same(value: Any, default: Any) -> bool:
    return value is default or (isinstance(value, str | int | float | tuple) and value == default)


class HierarchicalClassifier(ParamsMixin):
    """Two-level query classifier.

    Parameters
    ----------
    taxonomy : the explicit tree every prediction must belong to (never inferred from ``y``).
    encoder : ``"minilm"`` (default), ``"hashing"``, a sentence-transformers path, or an
        ``Encoder`` instance (shared instances share their embedding cache).
    encoder_options : keyword options for the encoder (``max_seq_length``, ``batch_size``).
    Every default is the configuration's (``shelver.config``); where the configuration says
    "auto" (chosen on validation data by ``shelver train`` / ``train_model``), the default is the
    first candidate, the simplest: a flat head with lexical features, no class weights.

    head : ``"flat"`` (default), ``"per_group"`` or ``"masked"``.
    router : how ``per_group`` scores categories: ``"leaves"`` (default), a softmax over
        subcategories summed per category, or ``"categories"``, a softmax over categories.
    C, class_weight, max_iter : passed to every logistic-regression head.
    random_state : seed of every fitted component.
    progress : show progress bars while encoding and fitting.
    thresholds : ``(level1, level2)`` confidence thresholds set by hand: below the level-2
        threshold the subcategory is withheld, below the level-1 one the category too. ``None``
        (default) answers every level (``(0.25, 0.25)`` for a multi-label model).
    target_precision : instead of hand thresholds, choose them on the validation split given
        to ``calibrate`` so that each level reaches this precision (per class if multi-label).
    delta : with ``target_precision``, each level's threshold is certified: its precision on new
        rows of the calibration distribution reaches the target with probability ``1 - delta``
        (``shelver.certify``). ``None`` takes the point estimate, with no guarantee.
    multi_label : identical texts with different labels are one text with several paths;
        predictions are every path above its class threshold.
    lexical : also give the heads sparse TF-IDF word and character n-grams beside the embedding (default)
        (``shelver.features``); product names carry brands and exact words an encoder blurs.
    lexical_options : ``LexicalOptions`` fields as a dict (vocabulary caps, n-gram ranges, weight).
    """

    def __init__(
        self,
        taxonomy: Taxonomy | None = None,
        encoder: str | Encoder = EncoderConfig.name,
        encoder_options: dict[str, Any] | None = None,
        head: str = AUTO_HEADS[0],
        router: str = AUTO_ROUTER,
        C: float = HeadConfig.C,
        class_weight: str | None = AUTO_CLASS_WEIGHTS[0],
        max_iter: int = HeadConfig.max_iter,
        random_state: int = TrainConfig.seed,
        progress: bool = False,
        thresholds: tuple[float, float] | None = None,
        target_precision: float | None = DecisionConfig.target_precision,
        delta: float | None = DecisionConfig.delta,
        multi_label: bool = DecisionConfig.multi_label,
        lexical: bool = AUTO_LEXICAL,
        lexical_options: dict[str, Any] | None = None,
    ) -> None:
        self.taxonomy = taxonomy
        self.encoder = encoder
        self.encoder_options = encoder_options
        self.head = head
        self.router = router
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.progress = progress
        self.thresholds = thresholds
        self.target_precision = target_precision
        self.delta = delta
        self.multi_label = multi_label
        self.lexical = lexical
        self.lexical_options = lexical_options

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, X: Sequence[str], y: Any, source: Sequence[str] | None = None) -> HierarchicalClassifier:
        """Fit on texts ``X`` and ``(n, depth)`` paths ``y``. Rows whose ``source`` starts with
        ``synthetic`` train like any other but are left out of ``train_counts_``, so the
        head/torso/tail bands of a report count real training rows only."""
        if self.taxonomy is None:
            raise ConfigError(
                "HierarchicalClassifier needs taxonomy=Taxonomy.load(...); "
                "the tree is never inferred from the labels"
            )
        check_decision_params(self.thresholds, self.target_precision, self.delta)
        texts, labels = _as_texts(X), _as_labels(y, self.taxonomy)
        if len(texts) != len(labels):
            raise DataError(f"X has {len(texts):,} texts but y has {len(labels):,} rows")
        real = _real_rows(source, len(texts))
        # the training rows by provenance, synthetic included; the model card shows them
        sources = None if source is None else _source_counts(_as_source(source, len(texts)))
        if self.multi_label:
            texts, labels, real = _merged(texts, labels, real)
        leaves = np.array([self.taxonomy.leaf_index[tuple(row)] for row in labels])
        encoder = self.build_encoder()
        embeddings = encoder.encode(texts, progress=self.progress)
        lexical = self._fit_lexical(texts)
        head = make_head(self.head, self.taxonomy).fit(
            _joined(embeddings, texts, lexical), leaves, self._options(), progress=self.progress
        )
        counts = np.bincount(leaves[real], minlength=len(self.taxonomy))
        state = FittedState(head, counts, training_fingerprint(texts, labels), encoder, lexical, sources)
        return self.set_fitted(state)

    def set_fitted(self, state: FittedState) -> HierarchicalClassifier:
        """Set every learned attribute from ``state``: ``fit``, loading a model directory, the
        end-to-end fine-tuning baseline and the head selection all come through here."""
        self.taxonomy_ = self.taxonomy
        self.encoder_ = state.encoder if state.encoder is not None else self.build_encoder()
        self.head_: Head = state.head
        self.lexical_ = state.lexical
        self.train_counts_ = state.train_counts
        self.train_fingerprint_ = state.train_fingerprint
        self.train_sources_ = state.train_sources
        self.classes_ = level_classes(self.taxonomy)
        self._init_decisions()
        if state.decisions is not None:
            decisions = state.decisions
            self.multi_label_, self.calibration_ = decisions.multi_label, decisions.calibration
            self.thresholds_, self.calibrated_on_ = decisions.thresholds, decisions.calibrated_on
        if state.selection is not UNSET:
            self.selection_ = state.selection
        return self

    def fitted_state(self) -> FittedState:
        """What ``set_fitted`` set (and ``calibrate`` since): ``dataclasses.replace`` it to derive
        a model that differs in one part, e.g. another head on the same encoder and rows."""
        self._check_fitted()
        decisions = FittedDecisions(
            self.multi_label_, self.calibration_, self.thresholds_, self.calibrated_on_
        )
        return FittedState(
            self.head_,
            self.train_counts_,
            self.train_fingerprint_,
            self.encoder_,
            self.lexical_,
            self.train_sources_,
            decisions,
            getattr(self, "selection_", UNSET),
        )

    def build_encoder(self) -> Encoder:
        """The ``encoder`` parameter as a ``CachedEncoder`` (each distinct text embedded once)."""
        encoder = make_encoder(self.encoder, **(self.encoder_options or {}))
        return encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder)

    def _fit_lexical(self, texts: list[str]) -> LexicalFeatures | None:
        if not self.lexical:
            return None
        return LexicalFeatures(LexicalOptions.from_dict(self.lexical_options)).fit(texts)

    def join(self, embeddings: np.ndarray, texts: list[str]) -> Any:
        """The heads' input for ``texts`` given their embeddings (from any encoder of this model)."""
        return _joined(embeddings, texts, getattr(self, "lexical_", None))

    def _options(self) -> LinearOptions:
        return LinearOptions(
            C=self.C,
            class_weight=self.class_weight,
            max_iter=self.max_iter,
            random_state=self.random_state,
            router=self.router,
        )

    # ---- predicting ---------------------------------------------------------------------
    def predict_proba(self, X: Sequence[str]) -> list[np.ndarray]:
        """Calibrated ``[P1 (n, n_categories), P2 (n, n_leaves)]``; ``P2`` is the joint leaf
        probability. Before ``calibrate`` the calibration is the identity."""
        return list(self.calibrate_proba(*self.head_proba(self.features(X))))

    def features(self, X: Sequence[str]) -> Any:
        """What the heads see: the embeddings, joined with the lexical block when ``lexical``."""
        texts = _as_texts(X)
        return self.join(self.embed(texts), texts)

    def embed(self, X: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        return self.encoder_.encode(_as_texts(X), progress=self.progress)

    def head_proba(self, features: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw (uncalibrated) head probabilities from ``features(X)`` (embeddings unless ``lexical``)."""
        self._check_fitted()
        return self.head_.proba(features)

    def calibrate_proba(self, P1: np.ndarray, P2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.calibration_.apply(P1, P2, self.taxonomy_.leaf_category_array)

    def decode(self, P1: np.ndarray, P2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the predicted category and leaf of each row, as the head decodes them
        (``Head.decode``: flat leaf first, the others top-down)."""
        return self.head_.decode(P1, P2)

    def scores(self, X: Sequence[str]) -> Scores:
        """Raw and calibrated probabilities, the arg-max path and its calibrated confidences."""
        raw = self.head_proba(self.features(X))
        return self._scores(raw)

    def _scores(self, raw: tuple[np.ndarray, np.ndarray]) -> Scores:
        # the path is decoded from the raw probabilities: calibration never changes the arg-max
        categories, leaves = self.head_.decode(*raw)
        P1, P2 = self.calibrate_proba(*raw)
        rows = np.arange(len(leaves))
        return Scores(raw, P1, P2, categories, leaves, P1[rows, categories], P2[rows, leaves])

    def predict(self, X: Sequence[str]) -> np.ndarray:
        """``(n, 2)`` array of ``[category, subcategory]`` strings, ``""`` where withheld."""
        s = self.scores(X)
        if self.multi_label_:
            answered, _ = answered_paths(s, self.thresholds_, self.taxonomy_)
            return np.array([p[0] if p else ("", "") for p in answered]).reshape(-1, 2)
        paths = np.array([self.taxonomy_.paths[i] for i in s.leaves], dtype=object).reshape(-1, 2)
        return withhold(paths, decide(s.conf1, s.conf2, self.thresholds_))

    def predict_paths(self, X: Sequence[str]) -> list[list[tuple[str, ...]]]:
        """Every answered path of each text (several for a multi-label model, none if abstaining)."""
        return [list(p.paths) for p in self.classify(X)]

    def classify(self, X: Sequence[str]) -> list[Prediction]:
        """One ``Prediction`` per text: the decision, its reason, the answered path(s) and the
        calibrated confidence at each level."""
        texts = _as_texts(X)
        s = self.scores(texts)
        if self.multi_label_:
            return multi_label_predictions(texts, s, self.thresholds_, self.taxonomy_)
        paths = np.array([self.taxonomy_.paths[i] for i in s.leaves], dtype=object).reshape(-1, 2)
        return single_label_predictions(texts, paths, s.conf1, s.conf2, self.thresholds_)

    # ---- calibration and thresholds -----------------------------------------------------
    def calibrate(
        self, X: Sequence[str], y: Any, source: Sequence[str] | None = None
    ) -> HierarchicalClassifier:
        """Fit temperatures on validation data and, with ``target_precision``, the thresholds.

        ``source`` is each row's provenance (``data.source``; ``None``: every row is a person's
        label). Where some rows are human-labeled, only those fit: machine labels never set a
        threshold when real labels exist. Re-tunes a fitted model without retraining it; the
        arg-max prediction never changes.
        """
        self._check_fitted()
        texts, labels = _as_texts(X), _as_labels(y, self.taxonomy_)
        source = [HUMAN] * len(texts) if source is None else _as_source(source, len(texts))
        if self.multi_label_:
            texts, labels, source = _merged_sources(texts, labels, source)
        return self.calibrate_scores(self.head_proba(self.features(texts)), texts, labels, source)

    def calibrate_scores(
        self, raw: tuple[np.ndarray, np.ndarray], texts: list[str], labels: np.ndarray, source: Sequence[str]
    ) -> HierarchicalClassifier:
        """``calibrate`` from raw head probabilities of the rows (e.g. scored out of fold)."""
        check_decision_params(self.thresholds, self.target_precision, self.delta)
        used = served_rows(source)
        texts_used = [t for t, u in zip(texts, used, strict=True) if u]
        leaves = np.array([self.taxonomy_.leaf_index[tuple(row)] for row in labels[used]])
        raw = (raw[0][used], raw[1][used])
        leaf_category = self.taxonomy_.leaf_category_array
        self.calibration_ = Calibration.fit(*raw, leaves, leaf_category, self.head_.leaf_first)
        scores = self._scores(raw)
        self.thresholds_, fits = choose_thresholds(
            scores,
            texts_used,
            leaves,
            self.taxonomy_,
            self.multi_label_,
            self.thresholds,
            self.target_precision,
            self.delta,
        )
        fitted_on = provenance(texts, source, used, self.target_precision, self.delta, fits)
        codes = decide(scores.conf1, scores.conf2, self.thresholds_)
        self.calibrated_on_ = {
            "fingerprint": training_fingerprint(texts_used, labels[used]),
            **fitted_on,
            "reference": drift.reference(scores.conf1, scores.conf2, codes),  # what live traffic is held to
        }
        return self

    def _init_decisions(self) -> None:
        """After ``fit``: identity calibration, thresholds from the parameters."""
        check_decision_params(self.thresholds, self.target_precision, self.delta)
        self.multi_label_ = bool(self.multi_label)
        self.calibration_ = Calibration(leaf_first=self.head_.leaf_first)
        self.thresholds_ = default_thresholds(self.thresholds, self.multi_label_, self.taxonomy_)
        self.calibrated_on_: dict[str, Any] | None = None

    def score(self, X: Sequence[str], y: Any, sample_weight: Any = None) -> float:
        """Leaf (level-2) accuracy."""
        predicted = self.predict(X)
        truth = _as_labels(y, self.taxonomy_)
        return float(np.mean((predicted == truth).all(axis=1)))

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise NotFittedError(
                "this HierarchicalClassifier is not fitted yet: call fit(X, y) "
                "or load a model directory with shelver.load_model(path)"
            )

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from shelver.model_dir import save_model

        return save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, taxonomy: Taxonomy | None = None) -> HierarchicalClassifier:
        from shelver.model_dir import load_model

        return load_model(path, taxonomy=taxonomy)


def level_classes(taxonomy: Taxonomy) -> list[np.ndarray]:
    """sklearn's multi-output ``classes_``: category names, then leaf paths ``"A > B"``."""
    return [np.array(taxonomy.categories), np.array([format_path(p) for p in taxonomy.paths])]


def _joined(embeddings: np.ndarray, texts: list[str], lexical: LexicalFeatures | None) -> Any:
    return join_features(embeddings, lexical.rows(texts) if lexical is not None else None)


def _as_texts(X: Any) -> list[str]:
    if isinstance(X, str):
        raise DataError("X must be a sequence of texts, not one string: wrap it in a list")
    return [str(x) for x in X]


def merge_multi_label(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``shelver.data.merge_multi_label``, imported when training needs it (data.py loads pandas)."""
    from shelver.data import merge_multi_label as merge

    return merge(texts, labels)


def _as_labels(y: Any, taxonomy: Taxonomy) -> np.ndarray:
    from shelver.data import check_labels  # training and scoring only: data.py loads pandas

    labels = np.asarray(y, dtype=object)
    if labels.ndim != 2 or labels.shape[1] != taxonomy.depth:
        raise DataError(
            f"y must be an (n, {taxonomy.depth}) array of [{', '.join(taxonomy.levels)}] "
            f"strings, got shape {labels.shape}"
        )
    labels = labels.astype(str)
    check_labels(labels, taxonomy, "y")
    return labels


def _as_source(source: Sequence[str], n: int) -> list[str]:
    if isinstance(source, str) or len(source) != n:
        got = "one string" if isinstance(source, str) else f"{len(source):,} values"
        raise DataError(f"source must hold one value per row of X ({n:,}), got {got}; pass data.source")
    return [str(s) for s in source]


def _source_counts(source: list[str]) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(source).items()))


def _real_rows(source: Sequence[str] | None, n: int) -> np.ndarray:
    """True for each row that is not synthetic (every row when there is no ``source``)."""
    if source is None:
        return np.ones(n, dtype=bool)
    return np.array([not s.startswith("synthetic") for s in _as_source(source, n)], dtype=bool)


def _merged_sources(
    texts: list[str], labels: np.ndarray, source: list[str]
) -> tuple[list[str], np.ndarray, list[str]]:
    """``merge_multi_label``; a merged (text, path) is human-labeled when any of its rows was."""
    human = {(t, tuple(p)) for t, p, s in zip(texts, labels, source, strict=True) if s == HUMAN}
    texts, labels = merge_multi_label(texts, labels)
    merged = [HUMAN if (t, tuple(p)) in human else "machine" for t, p in zip(texts, labels, strict=True)]
    return texts, labels, merged


def _merged(
    texts: list[str], labels: np.ndarray, real: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``merge_multi_label``, and a merged (text, path) is real when any of its rows was."""
    real_pairs = {(t, tuple(p)) for t, p, r in zip(texts, labels, real, strict=True) if r}
    texts, labels = merge_multi_label(texts, labels)
    merged_real = [(t, tuple(p)) in real_pairs for t, p in zip(texts, labels, strict=True)]
    return texts, labels, np.array(merged_real, dtype=bool)


def training_fingerprint(texts: Sequence[str], labels: np.ndarray) -> str:
    """Order-independent digest of the training rows."""
    rows = sorted(f"{t}\t{' > '.join(row)}" for t, row in zip(texts, labels, strict=True))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()
