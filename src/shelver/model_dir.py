"""A model directory: JSON config and manifest, arrays in safetensors. Never pickle.

```
MODEL_DIR/
  manifest.json      versions, taxonomy hash, training fingerprint and counts, file hashes
  config.json        the estimator's parameters and the encoder spec
  taxonomy.json      the tree the model was trained on
  heads.safetensors  every head's weights
  calibration.json   temperatures and decision thresholds (fitted on the validation split)
  lexical.json       the TF-IDF vocabularies and options, when the model uses lexical features
  lexical.safetensors  their idf weights
  selection.json     how train_model chose the head on valid: every candidate's score (when it chose)
  encoder/           a copy of a local encoder (fine-tuned, or a static table), when not built in
  onnx/              the encoder exported by 'shelver export' (listed under "exports" and hashed)
  README.md          the model card (model_card.py): rewritten on save, export and refresh_model_card
```
Loading re-hashes every file and refuses a model whose files changed, or whose taxonomy is
not the one the caller expects. ``load_model(..., encoder="serving")`` loads without torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shelver.classifier import FittedDecisions, FittedState, HierarchicalClassifier
from shelver.errors import ModelDirError
from shelver.heads import HEADS
from shelver.taxonomy import Taxonomy, format_path

FORMAT_VERSION = 1
HASHED_FILES = ("config.json", "taxonomy.json", "heads.safetensors", "calibration.json")
LEXICAL_FILES = ("lexical.json", "lexical.safetensors")
SELECTION_FILE = "selection.json"
ONNX_DIR = "onnx"
# which encoder a loaded model runs: as trained, the ONNX export, or whichever is torch-free
ENCODER_CHOICES = ("saved", "onnx", "serving")
TORCH_FREE_PREFIXES = ("hashing", "onnx:", "static:")
# where a local encoder directory is copied inside the model
ENCODER_DIR = "encoder"


def save_model(model: HierarchicalClassifier, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (created; an existing model there is replaced)."""
    from safetensors.numpy import save_file

    model._check_fitted()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_manifest(out)
    model.taxonomy_.save(out / "taxonomy.json")
    arrays = {k: np.ascontiguousarray(v) for k, v in model.head_.to_arrays().items()}
    save_file(arrays, str(out / "heads.safetensors"))
    _write_json(out / "config.json", {"params": _params(model), "encoder": _encoder_entry(model, out)})
    _write_json(out / "calibration.json", _calibration_entry(model))
    extra = _save_lexical(model, out) + _save_selection(model, out)
    manifest = _manifest(model, out, extra)
    _keep_exports(manifest, previous, out, model.encoder_.fingerprint())
    _write_card(out, manifest)
    _write_json(out / "manifest.json", manifest)
    return out


def _previous_manifest(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _keep_exports(manifest: dict[str, Any], previous: dict[str, Any], out: Path, fingerprint: str) -> None:
    """Re-saving in place (``shelver calibrate``) keeps an ONNX export made from the same encoder."""
    exports = {
        name: info
        for name, info in previous.get("exports", {}).items()
        if info.get("source_fingerprint") == fingerprint
    }
    if not exports:
        return
    manifest["exports"] = exports
    for name, digest in previous.get("files", {}).items():
        if name.startswith(f"{ONNX_DIR}/") and (out / name).is_file():
            manifest["files"].setdefault(name, digest)


def _calibration_entry(model: HierarchicalClassifier) -> dict[str, Any]:
    from shelver.calibration import decisions_to_dict

    return {
        "multi_label": model.multi_label_,
        **decisions_to_dict(model.calibration_, model.thresholds_, model.taxonomy_, model.calibrated_on_),
    }


def _params(model: HierarchicalClassifier) -> dict[str, Any]:
    params = model.get_params(deep=False)
    params.pop("taxonomy")
    params["encoder"] = model.encoder_.spec
    return params


def _encoder_entry(model: HierarchicalClassifier, out: Path) -> dict[str, Any]:
    """Built-in encoders are stored by name; a local directory (a fine-tuned model, a static
    table) is copied into the model as ``encoder/``, its spec kept relative (``static:encoder``)."""
    spec = model.encoder_.spec
    entry = {"spec": spec, "fingerprint": model.encoder_.fingerprint()}
    prefix, source = _local_encoder_dir(spec)
    if source is not None and source.resolve() != (out / ENCODER_DIR).resolve():
        shutil.rmtree(out / ENCODER_DIR, ignore_errors=True)
        shutil.copytree(source, out / ENCODER_DIR)
    if source is not None:
        entry["spec"] = prefix + ENCODER_DIR
    return entry


def _local_encoder_dir(spec: str) -> tuple[str, Path | None]:
    """``("static:", DIR)`` for a static table, ``("", DIR)`` for a model directory, else no directory."""
    prefix, rest = _split_static(spec)
    source = Path(rest)
    return prefix, source if source.is_dir() else None


def _split_static(spec: str) -> tuple[str, str]:
    """``("static:", rest)`` for a static table's spec, ``("", spec)`` for any other."""
    prefix = "static:" if spec.startswith("static:") else ""
    return prefix, spec.removeprefix(prefix)


def _save_lexical(model: HierarchicalClassifier, out: Path) -> tuple[str, ...]:
    """Lexical features, when the model has them; stale files of an earlier model are removed."""
    lexical = getattr(model, "lexical_", None)
    for name in LEXICAL_FILES:
        (out / name).unlink(missing_ok=True)
    return tuple(lexical.save(out)) if lexical is not None else ()


def _save_selection(model: HierarchicalClassifier, out: Path) -> tuple[str, ...]:
    """``selection_`` (set by ``train_model`` when it chose the head) as ``selection.json``."""
    selection = getattr(model, "selection_", None)
    (out / SELECTION_FILE).unlink(missing_ok=True)
    if selection is None:
        return ()
    _write_json(out / SELECTION_FILE, selection)
    return (SELECTION_FILE,)


def _manifest(model: HierarchicalClassifier, out: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    from shelver import __version__

    counts = {format_path(p): int(n) for p, n in zip(model.taxonomy_.paths, model.train_counts_, strict=True)}
    return {
        "format_version": FORMAT_VERSION,
        "shelver_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "taxonomy": {"name": model.taxonomy_.name, "hash": model.taxonomy_.hash},
        "training": {
            "n": int(model.train_counts_.sum()),
            "fingerprint": model.train_fingerprint_,
            "counts": counts,
            "sources": getattr(model, "train_sources_", None),
        },
        "files": {name: _sha256(out / name) for name in (*HASHED_FILES, *extra) if (out / name).is_file()},
    }


def load_model(
    path: str | Path, taxonomy: Taxonomy | None = None, encoder: str = "saved", threads: int | None = None
) -> HierarchicalClassifier:
    """Read a model directory, checking file hashes and (if given) the expected taxonomy.

    ``encoder``: ``"saved"`` runs the encoder the model was trained with; ``"onnx"`` its export
    (``shelver export``); ``"serving"`` the export, or the saved encoder if that is torch-free
    already, and never imports torch. ``threads`` limits onnxruntime's threads.
    """
    root = Path(path)
    manifest = read_manifest(root)
    # the files are hashed on other threads (hashlib lets go of the GIL) while the model loads:
    # start-up pays for the slower of the two, not their sum. The saved encoder never reads the
    # export, so a model whose export is lost still loads, and 'shelver export' writes it again.
    checked = _without_export(manifest) if encoder == "saved" else manifest
    with HashCheck(root, checked) as check:
        try:
            model = _build(root, manifest, taxonomy, encoder, threads)
        except Exception:
            check.wait()  # a tampered file explains the failure better than its parser does
            raise
    return model


def _build(
    root: Path, manifest: dict[str, Any], taxonomy: Taxonomy | None, encoder: str, threads: int | None
) -> HierarchicalClassifier:
    from safetensors.numpy import load_file

    config = json.loads((root / "config.json").read_text())
    trained_on = Taxonomy.load(root / "taxonomy.json")
    if taxonomy is not None:
        check_same_taxonomy(trained_on, taxonomy)
    params = dict(config["params"], encoder=_encoder_spec(root, config["encoder"]))
    # the runtime encoder replaces the saved one before it is built: serving never needs torch's weights
    runtime = None if encoder == "saved" else _runtime_encoder(root, manifest, config, encoder, threads)
    if runtime is not None:
        params["encoder"] = runtime
    head = HEADS[params["head"]].from_arrays(trained_on, load_file(str(root / "heads.safetensors")))
    training = manifest["training"]
    state = FittedState(
        head=head,
        train_counts=np.array([training["counts"].get(format_path(p), 0) for p in trained_on.paths]),
        train_fingerprint=training["fingerprint"],
        encoder=runtime,  # None: the model builds its saved encoder
        lexical=_load_lexical(root, params),
        train_sources=training.get("sources"),
        decisions=_load_decisions(root, trained_on),
        selection=_load_selection(root),
    )
    return HierarchicalClassifier(taxonomy=trained_on, **params).set_fitted(state)


def _load_decisions(root: Path, taxonomy: Taxonomy) -> FittedDecisions | None:
    """Temperatures and thresholds; a model saved before calibration existed gets the defaults."""
    from shelver.calibration import decisions_from_dict

    file = root / "calibration.json"
    if not file.is_file():
        return None
    payload = json.loads(file.read_text())
    calibration, thresholds = decisions_from_dict(payload, taxonomy)
    multi_label = bool(payload.get("multi_label", False))
    return FittedDecisions(multi_label, calibration, thresholds, payload.get("fitted_on"))


def _load_selection(root: Path) -> dict[str, Any] | None:
    selection = root / SELECTION_FILE
    return json.loads(selection.read_text()) if selection.is_file() else None


def _load_lexical(root: Path, params: dict[str, Any]):
    if not params.get("lexical"):
        return None
    from shelver.features import LexicalFeatures

    if not all((root / name).is_file() for name in LEXICAL_FILES):
        raise ModelDirError(
            f"{root} is incomplete: the model uses lexical features but lexical.json is missing"
        )
    return LexicalFeatures.load(root)


def _runtime_encoder(
    root: Path, manifest: dict[str, Any], config: dict[str, Any], choice: str, threads: int | None
) -> Any:
    """The exported encoder, uncached: a service sees unbounded distinct queries."""
    from shelver.encoders import make_encoder

    if choice not in ENCODER_CHOICES:
        raise ModelDirError(f"unknown encoder choice {choice!r}; use one of {', '.join(ENCODER_CHOICES)}")
    spec = _encoder_spec(root, config["encoder"])
    export = manifest.get("exports", {}).get("onnx")
    if export is None and choice == "serving" and spec.startswith(TORCH_FREE_PREFIXES):
        return make_encoder(spec)
    if export is None:
        raise ModelDirError(
            f"{root} has no ONNX export of its encoder ({spec!r}), which serving needs to run "
            f"without torch; create it with 'shelver export --model {root}'"
        )
    if export.get("source_fingerprint") != config["encoder"].get("fingerprint"):
        raise ModelDirError(
            f"the ONNX export in {root / ONNX_DIR} was made from another encoder than the model's "
            f"(stale after retraining); run 'shelver export --model {root}' again"
        )
    return make_encoder(f"onnx:{root / ONNX_DIR}", threads=threads)


def record_export(root: Path, name: str, files: list[str], info: dict[str, Any]) -> None:
    """Add an export's files (hashed, so loading notices tampering) and figures to the manifest."""
    manifest = read_manifest(root)
    for file in files:
        manifest["files"][file] = _sha256(root / file)
    manifest.setdefault("exports", {})[name] = info
    _write_card(root, manifest)
    _replace_manifest(root, manifest)


def refresh_model_card(root: str | Path) -> Path:
    """Re-render ``README.md`` after a file it reads changed, e.g. an evaluation written into
    ``root/valid``; the manifest records its new hash. Returns the card's path."""
    from shelver.model_card import CARD_FILE

    root = Path(root)
    manifest = read_manifest(root)
    _write_card(root, manifest)
    _replace_manifest(root, manifest)
    return root / CARD_FILE


def _write_card(root: Path, manifest: dict[str, Any]) -> None:
    """``README.md``, the model card, rendered from the directory's files and hashed into
    ``manifest`` (which the caller writes) like every other file."""
    from shelver.model_card import CARD_FILE, render_model_card

    (root / CARD_FILE).write_text(render_model_card(root, manifest), encoding="utf-8")
    manifest["files"][CARD_FILE] = _sha256(root / CARD_FILE)


def _replace_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / "manifest.json.tmp"
    _write_json(tmp, manifest)
    tmp.replace(root / "manifest.json")  # atomic: a reader sees the old or the new manifest


def model_version(root: Path) -> str:
    """A short id that changes whenever any file of the model changes (the manifest hashes them)."""
    return hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()[:16]


def describe_model_dir(root: Path) -> dict[str, Any]:
    """What the directory's files say about its model (the service's ``/v1/model`` shows it):
    version, provenance, head, the encoder it was trained with, its export and its thresholds."""
    manifest = json.loads((root / "manifest.json").read_text())
    params = json.loads((root / "config.json").read_text())["params"]
    return {
        "version": model_version(root),
        "created": manifest.get("created"),
        "shelver_version": manifest.get("shelver_version"),
        "training": {k: manifest["training"].get(k) for k in ("n", "fingerprint")},
        "head": params.get("head"),
        "trained_with": params.get("encoder"),
        "export": manifest.get("exports", {}).get("onnx"),
        "thresholds": _thresholds(params, manifest),
    }


def _thresholds(params: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Decision thresholds, wherever the model keeps them (estimator parameters or the manifest)."""
    found = {k: v for k, v in params.items() if "threshold" in k and v is not None}
    found.update(manifest.get("thresholds") or {})
    return found or None


def read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise ModelDirError(
            f"model directory {str(root)!r} does not exist; train one with 'shelver train ... --out DIR'"
        )
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ModelDirError(
            f"{root} is not a shelver model directory (no manifest.json); "
            "pass the --out directory of 'shelver train'"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{manifest_path} is corrupt ({err.msg}); retrain the model") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{root} has model format {manifest.get('format_version')!r}; this "
            f"shelver reads format {FORMAT_VERSION}: retrain with this version"
        )
    return manifest


def _without_export(manifest: dict[str, Any]) -> dict[str, Any]:
    files = {n: h for n, h in manifest["files"].items() if not n.startswith(f"{ONNX_DIR}/")}
    return {**manifest, "files": files}


def _restore(root: Path, name: str) -> str:
    """How to get a missing file back."""
    if name.startswith(f"{ONNX_DIR}/"):
        return (
            f"export the model again ('shelver export --model {root}', which needs the encoder it "
            "was trained with), or copy the model directory whole"
        )
    return "copy the model directory whole, or train it again"


class HashCheck:
    """The manifest's files hashed on worker threads; ``wait`` (and leaving the block) raises
    ``ModelDirError`` for the first missing or modified file."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.root, self.expected = root, manifest["files"]
        for name in self.expected:
            if not (root / name).is_file():
                raise ModelDirError(f"{root} is incomplete: {name} is missing; {_restore(root, name)}")
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shelver-hash")
        self.digests = {name: self.pool.submit(_sha256, root / name) for name in self.expected}

    def __enter__(self) -> HashCheck:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is None:
            self.wait()
        self.pool.shutdown(wait=True)

    def wait(self) -> None:
        for name, digest in self.digests.items():
            if digest.result() != self.expected[name]:
                raise ModelDirError(
                    f"{self.root / name} was modified after the model was saved (its SHA-256 no "
                    "longer matches manifest.json); restore it or retrain the model"
                )


def check_same_taxonomy(trained_on: Taxonomy, expected: Taxonomy) -> None:
    if trained_on.hash == expected.hash:
        return
    added = set(expected.paths) - set(trained_on.paths)
    removed = set(trained_on.paths) - set(expected.paths)
    example = format_path(sorted(added or removed)[0]) if added or removed else "the level names"
    raise ModelDirError(
        f"the model was trained on a different taxonomy ({len(added)} path(s) added, "
        f"{len(removed)} removed since, e.g. {example!r}; or reordered); retrain it with "
        "'shelver train --taxonomy ...' on the new taxonomy"
    )


def _encoder_spec(root: Path, entry: dict[str, Any]) -> str:
    prefix, rest = _split_static(entry["spec"])
    return f"{prefix}{root / ENCODER_DIR}" if rest == ENCODER_DIR else entry["spec"]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
