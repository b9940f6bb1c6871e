"""Running the stages in order: the run context, the stage registry, hashes, skips and manifests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelver.errors import ConfigError
from shelver.pipeline.config import BootstrapConfig
from shelver.taxonomy import Taxonomy

MANIFEST = "manifest.json"
# a test hook: "STAGE:SECONDS" sleeps inside STAGE (after it started, before it finishes), so a
# test can kill the run midway through a stage that is otherwise too quick to catch
SLOW_STAGE_ENV = "SHELVER_BOOTSTRAP_SLOW_STAGE"


@dataclass
class RunContext:
    taxonomy_path: Path
    log_path: Path
    out: Path
    config: BootstrapConfig
    labeled_sample: Path | None = None
    progress: bool = True
    hashes: dict[str, str] = field(default_factory=dict)
    _taxonomy: Taxonomy | None = None

    @property
    def taxonomy(self) -> Taxonomy:
        if self._taxonomy is None:
            self._taxonomy = Taxonomy.load(self.taxonomy_path)
        return self._taxonomy

    def stage_dir(self, name: str) -> Path:
        return self.out / name


@dataclass(frozen=True)
class Stage:
    name: str
    # what the stage's hash covers besides the hashes of the stages before it
    inputs: Callable[[RunContext], dict[str, Any]]
    # does the work into its directory; returns a summary for the manifest
    run: Callable[[RunContext, Path], dict[str, Any]]
    # keep the directory when re-running (the label store resumes); others start empty
    keep_dir: bool = False


STAGES: dict[str, Stage] = {}
# the order of every stage the pipeline knows; one that is not registered is skipped and named as such
ORDER = ("label", "select", "synthesize", "train", "evaluate", "export", "review")


def register(stage: Stage) -> Stage:
    if stage.name not in ORDER:
        raise ConfigError(f"stage {stage.name!r} has no place in the pipeline order {', '.join(ORDER)}")
    STAGES[stage.name] = stage
    return stage


@dataclass
class StageResult:
    name: str
    status: str  # "ran", "skipped" (hash unchanged) or "unavailable" (not registered yet)
    seconds: float = 0.0


def run_pipeline(
    ctx: RunContext, start_from: str | None = None, echo: Callable[[str], None] = print
) -> list[StageResult]:
    """Run every stage in order; a stage whose manifest matches its hash is skipped."""
    _check_from(start_from)
    ctx.out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(ctx.out / "config.json", _resolved(ctx))  # before anything runs
    forced = False
    results = []
    for name in ORDER:
        forced = forced or name == start_from
        if name not in STAGES:
            echo(f"[{name}] not available in this version: skipped")
            results.append(StageResult(name, "unavailable"))
            continue
        results.append(_run_stage(ctx, STAGES[name], forced, echo))
    return results


def _check_from(start_from: str | None) -> None:
    if start_from is None:
        return
    if start_from not in ORDER:
        raise ConfigError(f"--from {start_from!r} is not a stage; stages: {', '.join(ORDER)}")
    if start_from not in STAGES:
        raise ConfigError(f"--from {start_from!r}: that stage is not available in this version")


def _resolved(ctx: RunContext) -> dict[str, Any]:
    return {
        "taxonomy": str(ctx.taxonomy_path),
        "log": str(ctx.log_path),
        "labeled_sample": str(ctx.labeled_sample) if ctx.labeled_sample else None,
        "stages": [n for n in ORDER if n in STAGES],
        "config": ctx.config.to_dict(),
    }


def _run_stage(ctx: RunContext, stage: Stage, forced: bool, echo: Callable[[str], None]) -> StageResult:
    inputs = {"stage": stage.name, "upstream": dict(ctx.hashes), **stage.inputs(ctx)}
    digest = payload_hash(inputs)
    ctx.hashes[stage.name] = digest
    directory = ctx.stage_dir(stage.name)
    old = read_manifest(directory)
    if not forced and old is not None and old.get("hash") == digest:
        echo(f"[{stage.name}] up to date ({digest[:12]}): skipped")
        return StageResult(stage.name, "skipped")
    _prepare(directory, stage.keep_dir)
    echo(f"[{stage.name}] running ({'forced' if forced else 'inputs changed' if old else 'not finished'})")
    started = time.perf_counter()
    summary = stage.run(ctx, directory)
    _slow_down(stage.name)
    seconds = time.perf_counter() - started
    manifest = {
        "stage": stage.name,
        "hash": digest,
        "inputs": inputs,
        "summary": summary,
        "outputs": _output_hashes(directory),
        "seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json_atomic(directory / MANIFEST, manifest)  # last: a killed stage has none and re-runs
    echo(f"[{stage.name}] done in {seconds:.1f}s")
    return StageResult(stage.name, "ran", seconds)


def _prepare(directory: Path, keep: bool) -> None:
    (directory / MANIFEST).unlink(missing_ok=True)
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def _slow_down(name: str) -> None:
    spec = os.environ.get(SLOW_STAGE_ENV, "")
    stage, _, seconds = spec.partition(":")
    if stage == name and seconds:
        time.sleep(float(seconds))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # cannot happen with the atomic write, but a broken file must re-run, not crash


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as file:
        file.write(json.dumps(payload, indent=2, default=str) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def payload_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _output_hashes(directory: Path) -> dict[str, str]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    # the label store changes on every open (WAL); its content is what 'select' hashes
    return {str(p.relative_to(directory)): file_hash(p) for p in files if ".sqlite" not in p.name}
