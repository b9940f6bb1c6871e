"""Cold start: a taxonomy and an unlabeled search log to a served model, in one resumable run.

```
label     the log -> a SQLite label store (LLM or embedding voters; resumable after any kill)
select    the embedding labeler's labels smoothed over the log (labeling/smoothing.py), then labels
          at or above a confidence -> train.csv / valid.csv, split by a hash of the text
synthesize  queries for leaves still under synthesize.min_examples training rows, filtered
train     train_model on train.csv, calibrated (thresholds) on valid.csv
evaluate  held-out LLM-labeled valid and, when given, a real labeled sample: side by side
export    the serving model (ONNX encoder when it has a transformer; optional)
review    the real queries the model abstained on or doubted, most frequent first, to label
```

Each stage writes into ``RUN_DIR/<stage>/`` and finishes by writing ``manifest.json`` (atomically,
last) with the hash of its inputs: its configuration section, the files it reads and the hashes of
the stages before it. A re-run skips a stage whose manifest holds the same hash, so a changed
setting re-runs that stage and every later one; a stage killed midway has no manifest and runs
again (the label store keeps every finished call, so labeling resumes where it stopped).
"""

from __future__ import annotations

from shelver.pipeline import evaluate, export, label, review, select, synthesize, train
from shelver.pipeline.config import (
    BootstrapConfig,
    ExportStage,
    LabelStage,
    ReviewStage,
    SelectStage,
    SynthesizeStage,
    load_bootstrap_config,
)
from shelver.pipeline.evaluate import comparison, render_comparison
from shelver.pipeline.review import REVIEW_FILE, review_frame
from shelver.pipeline.runner import (
    MANIFEST,
    ORDER,
    SLOW_STAGE_ENV,
    STAGES,
    RunContext,
    Stage,
    StageResult,
    file_hash,
    read_manifest,
    register,
    run_pipeline,
)
from shelver.pipeline.select import store_path, text_bucket
from shelver.pipeline.synthesize import SYNTHETIC_FILE

__all__ = [
    "MANIFEST",
    "ORDER",
    "REVIEW_FILE",
    "SLOW_STAGE_ENV",
    "STAGES",
    "SYNTHETIC_FILE",
    "BootstrapConfig",
    "ExportStage",
    "LabelStage",
    "ReviewStage",
    "RunContext",
    "SelectStage",
    "Stage",
    "StageResult",
    "SynthesizeStage",
    "comparison",
    "file_hash",
    "load_bootstrap_config",
    "read_manifest",
    "register",
    "render_comparison",
    "review_frame",
    "run_pipeline",
    "store_path",
    "text_bucket",
]

# registered in pipeline order (STAGES keeps it); run_pipeline walks ORDER
for _stage in (
    Stage("label", label.inputs, label.run, keep_dir=True),
    Stage("select", select.inputs, select.run),
    Stage("synthesize", synthesize.inputs, synthesize.run),
    Stage("train", train.inputs, train.run),
    Stage("evaluate", evaluate.inputs, evaluate.run),
    Stage("export", export.inputs, export.run),
    Stage("review", review.inputs, review.run),
):
    register(_stage)
