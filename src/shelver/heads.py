"""Three ways to put a hierarchy on top of one set of embeddings.

- ``flat``: one classifier over all leaves; the category is the predicted leaf's parent.
- ``masked``: a router picks the category, then the flat classifier is restricted to its children.
- ``per_group``: the router, plus one independent classifier per category trained only on that
  category's rows.

Which one serves is chosen on validation data (``shelver.selection``: flat or per_group).

Every head returns the same thing: ``P1`` over categories and ``P2`` over leaves, each row
summing to 1, with ``P2`` the *joint* probability of the leaf (so ``P1`` is ``P2`` summed over
each category's children). Learned weights are plain arrays: prediction is NumPy only, and
saving never needs pickle. Heads take the embeddings, or ``shelver.features.Features`` (the
embedding and lexical blocks, each multiplied as it is); fitting joins them for scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from shelver.errors import ConfigError
from shelver.features import training_matrix
from shelver.taxonomy import Taxonomy

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class LinearOptions:
    """How each linear classifier is fitted (the estimator's parameters, passed down)."""

    C: float = 10.0
    class_weight: str | None = None
    max_iter: int = 300
    random_state: int = 0
    # per_group's router: "categories" (a softmax over categories) or "leaves" (see LeafSumRouter)
    router: str = "categories"


class LinearSoftmax:
    """Multinomial logistic regression as arrays: ``softmax(X @ coef.T + intercept)``.

    ``classes`` are indices into the caller's label space; a single seen class gives a
    constant classifier (its answer is certain). The weights are kept transposed, C-contiguous
    float32 (``weights``, ``(n_features, n_classes)``): ``X @ weights`` then reads them in place,
    where ``X @ coef.T`` made SciPy copy the whole matrix on every call with lexical features.
    """

    def __init__(self, classes: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.classes = np.asarray(classes)
        self.weights = np.ascontiguousarray(np.asarray(coef, dtype=np.float32).T)
        self.intercept = np.asarray(intercept, dtype=np.float32)

    @property
    def coef(self) -> np.ndarray:
        """``(n_classes, n_features)``, as scikit-learn lays it out (a view of ``weights``)."""
        return self.weights.T

    @classmethod
    def fit(
        cls, X: Any, y: np.ndarray, options: LinearOptions, init: LinearSoftmax | None = None
    ) -> LinearSoftmax:
        """``init``: a model whose classes include these, to start the solver from instead of
        zero. The model selection starts the balanced flat fit from the unweighted one, and each
        per-group model from the flat model's rows of its children: near optima, reached sooner."""
        classes = np.unique(y)
        if len(classes) == 1:
            return cls(classes, np.zeros((1, X.shape[1]), np.float32), np.zeros(1, np.float32))
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(
            C=options.C,
            class_weight=options.class_weight,
            max_iter=options.max_iter,
            random_state=options.random_state,
            warm_start=init is not None,
        )
        start = init.start_for(classes) if init is not None else None
        if start is not None:
            model.coef_, model.intercept_ = start
        model.fit(training_matrix(X), y)
        coef, intercept = model.coef_, model.intercept_
        if len(classes) == 2:  # sklearn keeps one row for two classes: make it symmetric
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        # C order, as a loaded model has: BLAS rounds X @ coef.T differently for an F-ordered
        # coef (sklearn's), and a reloaded model's probabilities would differ in the last bit
        return cls(classes, np.ascontiguousarray(coef, np.float32), intercept.astype(np.float32))

    def start_for(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """scikit-learn's ``coef_, intercept_`` for ``classes`` (a subset of ours), float64: our
        logits restricted to them are a softmax over them; two classes keep one row (their
        difference). None when a class is not ours."""
        if not np.isin(classes, self.classes).all():
            return None
        rows = np.searchsorted(self.classes, classes)
        coef, intercept = self.coef[rows].astype(np.float64), self.intercept[rows].astype(np.float64)
        if len(classes) == 2:
            return coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        return coef, intercept

    def proba(self, X: Any) -> np.ndarray:
        """``(n, len(classes))`` probabilities."""
        return softmax(X @ self.weights + self.intercept)

    def proba_over(self, X: np.ndarray, n_labels: int) -> np.ndarray:
        """Probabilities scattered into the full ``(n, n_labels)`` label space."""
        proba = self.proba(X)
        if len(self.classes) == n_labels:  # every label seen: classes are 0 .. n_labels - 1
            return proba
        out = np.zeros((proba.shape[0], n_labels), dtype=np.float32)
        out[:, self.classes] = proba
        return out

    def to_arrays(self, prefix: str) -> Arrays:
        return {
            f"{prefix}.classes": self.classes.astype(np.int64),
            f"{prefix}.coef": np.ascontiguousarray(self.coef),
            f"{prefix}.intercept": self.intercept,
        }

    @classmethod
    def from_arrays(cls, arrays: Arrays, prefix: str) -> LinearSoftmax:
        return cls(arrays[f"{prefix}.classes"], arrays[f"{prefix}.coef"], arrays[f"{prefix}.intercept"])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


class Head:
    """Base of the three heads: ``fit`` on embeddings and leaf indices, ``proba`` -> (P1, P2)."""

    name: ClassVar[str]
    # flat decodes leaf first (category = the leaf's parent); the others decode top-down
    leaf_first: ClassVar[bool] = False

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.leaf_category = np.asarray(taxonomy.leaf_category)
        self.membership = _membership(self.leaf_category, len(taxonomy.categories))

    def fit(self, X: np.ndarray, leaves: np.ndarray, options: LinearOptions, progress: bool = False) -> Head:
        raise NotImplementedError

    def proba(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def to_arrays(self) -> Arrays:
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, taxonomy: Taxonomy, arrays: Arrays) -> Head:
        raise NotImplementedError

    def category_sums(self, P2: np.ndarray) -> np.ndarray:
        """Sum joint leaf probabilities into their categories."""
        return P2 @ self.membership

    def decode(self, P1: np.ndarray, P2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of each row's category and leaf, top-down: the leaf is always a child of the
        category."""
        leaf_category = self.taxonomy.leaf_category_array
        categories = P1.argmax(axis=1)
        masked = np.where(leaf_category[None, :] == categories[:, None], P2, -1.0)
        return categories, masked.argmax(axis=1)


class FlatHead(Head):
    name = "flat"
    leaf_first = True

    def fit(
        self, X: np.ndarray, leaves: np.ndarray, options: LinearOptions, progress: bool = False
    ) -> FlatHead:
        with _steps(1, "flat head", progress):
            self.leaf_model = LinearSoftmax.fit(X, leaves, options)
        return self

    def proba(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P2 = self.leaf_model.proba_over(X, len(self.taxonomy))
        return self.category_sums(P2), P2

    def decode(self, P1: np.ndarray, P2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Leaf first: the category is the best leaf's parent."""
        leaves = P2.argmax(axis=1)
        return self.taxonomy.leaf_category_array[leaves], leaves

    def to_arrays(self) -> Arrays:
        return self.leaf_model.to_arrays("flat")

    @classmethod
    def from_arrays(cls, taxonomy: Taxonomy, arrays: Arrays) -> FlatHead:
        head = cls(taxonomy)
        head.leaf_model = LinearSoftmax.from_arrays(arrays, "flat")
        return head


class MaskedHead(Head):
    """Router for the category, then the global leaf classifier masked to its children."""

    name = "masked"

    def fit(
        self, X: np.ndarray, leaves: np.ndarray, options: LinearOptions, progress: bool = False
    ) -> MaskedHead:
        X = training_matrix(X)  # joined once for both models
        with _steps(2, "masked head (router + flat)", progress) as bar:
            self.router = LinearSoftmax.fit(X, self.leaf_category[leaves], options)
            bar.update()
            self.leaf_model = LinearSoftmax.fit(X, leaves, options)
        return self

    def proba(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P1 = self.router.proba_over(X, len(self.taxonomy.categories))
        flat = self.leaf_model.proba_over(X, len(self.taxonomy))
        within = flat / np.maximum(self.category_sums(flat), 1e-12)[:, self.leaf_category]
        return P1, _fill_unseen(within, self.leaf_category, self.taxonomy) * P1[:, self.leaf_category]

    def to_arrays(self) -> Arrays:
        return {**self.router.to_arrays("router"), **self.leaf_model.to_arrays("flat")}

    @classmethod
    def from_arrays(cls, taxonomy: Taxonomy, arrays: Arrays) -> MaskedHead:
        head = cls(taxonomy)
        head.router = LinearSoftmax.from_arrays(arrays, "router")
        head.leaf_model = LinearSoftmax.from_arrays(arrays, "flat")
        return head


@dataclass
class LeafSumRouter:
    """Category probabilities as a softmax over leaves summed per category.

    On sentence embeddings a category is often a union of unlike children ("pantry" holds
    spices and baking mixes): one linear boundary per category fits it worse than one per
    child. Measured on grocery, frozen MiniLM: router L1 0.758 over categories, 0.813 summed.
    """

    model: LinearSoftmax
    membership: np.ndarray  # (n_leaves, n_categories) one-hot: leaf -> its category

    @classmethod
    def fit(cls, X: np.ndarray, leaves: np.ndarray, leaf_category: np.ndarray, options: LinearOptions):
        return cls(LinearSoftmax.fit(X, leaves, options), _membership(leaf_category))

    def proba_over(self, X: np.ndarray, n_labels: int) -> np.ndarray:
        return self.model.proba_over(X, self.membership.shape[0]) @ self.membership

    def to_arrays(self, prefix: str) -> Arrays:
        return self.model.to_arrays(f"{prefix}_leaves")


def _membership(leaf_category: np.ndarray, n_categories: int | None = None) -> np.ndarray:
    """``(n_leaves, n_categories)`` one-hot float32: ``P2 @ membership`` sums leaves per category."""
    n_categories = int(leaf_category.max()) + 1 if n_categories is None else n_categories
    out = np.zeros((len(leaf_category), n_categories), dtype=np.float32)
    out[np.arange(len(leaf_category)), leaf_category] = 1.0
    return out


def _fit_router(X: np.ndarray, leaves: np.ndarray, leaf_category: np.ndarray, options: LinearOptions):
    if options.router == "leaves":
        return LeafSumRouter.fit(X, leaves, leaf_category, options)
    if options.router != "categories":
        raise ConfigError(f"unknown router {options.router!r}; choose one of categories, leaves")
    return LinearSoftmax.fit(X, leaf_category[leaves], options)


def _load_router(arrays: Arrays, leaf_category: np.ndarray):
    if "router_leaves.coef" in arrays:
        return LeafSumRouter(LinearSoftmax.from_arrays(arrays, "router_leaves"), _membership(leaf_category))
    return LinearSoftmax.from_arrays(arrays, "router")


class PerGroupHead(Head):
    """Router over categories plus an independent classifier per category."""

    name = "per_group"

    def fit(
        self,
        X: np.ndarray,
        leaves: np.ndarray,
        options: LinearOptions,
        progress: bool = False,
        router: LinearSoftmax | LeafSumRouter | None = None,
        init: LinearSoftmax | None = None,
    ) -> PerGroupHead:
        """``router``: one already fitted on the same rows; the model selection passes the flat
        head's leaf model as the leaf-sum router (the same fit) instead of fitting it twice.
        ``init``: a model over leaves whose rows start each group's solver (``LinearSoftmax.fit``)."""
        categories, X = self.leaf_category[leaves], training_matrix(X)
        self.groups: dict[int, LinearSoftmax] = {}
        self._fused = None
        with _steps(1 + len(self.taxonomy.categories), "per-group heads", progress) as bar:
            self.router = (
                router if router is not None else _fit_router(X, leaves, self.leaf_category, options)
            )
            bar.update()
            for c in range(len(self.taxonomy.categories)):
                rows = categories == c
                # a group whose rows all share one child gets a constant model: its answer is certain
                if rows.any():
                    self.groups[c] = LinearSoftmax.fit(X[rows], leaves[rows], options, init=init)
                bar.update()
        return self

    def proba(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P1 = self.router.proba_over(X, len(self.taxonomy.categories))
        fused = self._fused or self._fuse()
        within = np.zeros((X.shape[0], len(self.taxonomy)), dtype=np.float32)
        within[:, fused.classes] = fused.proba(X)
        within[:, fused.unseen] = fused.unseen_share
        return P1, within * P1[:, self.leaf_category]

    _fused: _FusedGroups | None = None

    def _fuse(self) -> _FusedGroups:
        """Every group classifier in one matrix: one product instead of one per category (the
        request path answers one query at a time, where each call's overhead dominates)."""
        self._fused = _FusedGroups.of(list(self.groups.values()), self.leaf_category)
        return self._fused

    def to_arrays(self) -> Arrays:
        arrays = self.router.to_arrays("router")
        for c, model in self.groups.items():
            arrays.update(model.to_arrays(f"group.{c}"))
        return arrays

    @classmethod
    def from_arrays(cls, taxonomy: Taxonomy, arrays: Arrays) -> PerGroupHead:
        head = cls(taxonomy)
        head.router = _load_router(arrays, head.leaf_category)
        head._fused = None
        ids = sorted({int(k.split(".")[1]) for k in arrays if k.startswith("group.")})
        head.groups = {c: LinearSoftmax.from_arrays(arrays, f"group.{c}") for c in ids}
        return head


@dataclass(frozen=True)
class _FusedGroups:
    """Group classifiers stacked column-wise, with a softmax taken within each group's columns."""

    weights: np.ndarray  # (dim, columns)
    bias: np.ndarray  # (columns,)
    classes: np.ndarray  # the leaf of each column
    starts: np.ndarray  # first column of each group
    group_of: np.ndarray  # the group of each column
    unseen: np.ndarray  # leaves of categories with no training rows
    unseen_share: np.ndarray  # 1 / number of children, for those leaves

    @classmethod
    def of(cls, models: list[LinearSoftmax], leaf_category: np.ndarray) -> _FusedGroups:
        sizes = np.array([len(m.classes) for m in models], dtype=np.int64)
        classes = (
            np.concatenate([m.classes for m in models]).astype(np.int64) if models else np.zeros(0, np.int64)
        )
        seen = np.isin(leaf_category, leaf_category[classes])
        return cls(
            weights=np.ascontiguousarray(np.hstack([m.weights for m in models]))
            if models
            else np.zeros((0, 0)),
            bias=np.concatenate([m.intercept for m in models]) if models else np.zeros(0, np.float32),
            classes=classes,
            starts=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
            group_of=np.repeat(np.arange(len(models)), sizes),
            unseen=np.flatnonzero(~seen),
            unseen_share=(1.0 / np.bincount(leaf_category)[leaf_category[~seen]]).astype(np.float32),
        )

    def proba(self, X: np.ndarray) -> np.ndarray:
        if not len(self.classes):
            return np.zeros((X.shape[0], 0), dtype=np.float32)
        logits = X @ self.weights + self.bias
        exp = np.exp(logits - np.maximum.reduceat(logits, self.starts, axis=1)[:, self.group_of])
        return exp / np.add.reduceat(exp, self.starts, axis=1)[:, self.group_of]


def _fill_unseen(within: np.ndarray, leaf_category: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """Categories never seen in training share their mass evenly among their children."""
    totals = np.zeros((within.shape[0], len(taxonomy.categories)), dtype=np.float32)
    np.add.at(totals.T, leaf_category, within.T)
    empty = totals[:, leaf_category] <= 0
    if empty.any():
        sizes = np.bincount(leaf_category)[leaf_category].astype(np.float32)
        within = np.where(empty, 1.0 / sizes, within)
    return within


HEADS: dict[str, type[Head]] = {h.name: h for h in (FlatHead, MaskedHead, PerGroupHead)}


def make_head(name: str, taxonomy: Taxonomy) -> Head:
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    if taxonomy.depth != 2:
        raise ConfigError(
            f"heads support two-level taxonomies today; {taxonomy.source} has "
            f"{taxonomy.depth} levels ({', '.join(taxonomy.levels)})"
        )
    return HEADS[name](taxonomy)


class _steps:
    """A progress bar over a known number of fitting steps (silent when ``progress`` is off)."""

    def __init__(self, total: int, desc: str, progress: bool) -> None:
        from tqdm.auto import tqdm  # fitting only: serving never imports it

        self.bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)

    def __enter__(self) -> Any:
        return self.bar

    def __exit__(self, *exc: object) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
