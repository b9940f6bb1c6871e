"""The README and the docs: every bash and Python block runs, the site builds strictly, and the
configuration reference is rendered from the dataclasses.

Each page runs in its own scratch directory holding a small copy of ``examples/fashion`` (two
categories, a few rows per subcategory) and a model trained by the quickstart command at
``runs/fashion``. A ``sitecustomize`` module swaps the MiniLM encoder for the torch-free hashing
encoder in every process the blocks start, so a block is the command a reader pastes and runs in
seconds. A block that starts with ``shelver serve`` runs beside its server. A block that cannot
run here is marked ``<!-- skip: reason -->`` on the line above it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
SERVE = "shelver serve "  # a block starting so runs beside its server
RUN = ("bash", "python")  # the languages of command and code blocks; any other is shown, not run
SHOWN = ("text", "json", "toml")
CATEGORIES = ("Shoes", "Lips")  # 10 subcategories: enough for every command, fast to fit
ROWS = {"train": 8, "valid": 4, "test": 4}  # rows per subcategory and split
BLOCK_TIMEOUT = 180

SITECUSTOMIZE = """
import shelver.encoders as _package
import shelver.encoders.base as _base

_make_encoder = _base.make_encoder


def make_encoder(spec, **options):
    # the docs' examples name MiniLM; the test runs them with the torch-free hashing encoder
    return _make_encoder("hashing" if spec == "minilm" else spec, **options)


# patched before anything imports the name (model_dir imports the classifier, which imports it)
_base.make_encoder = _package.make_encoder = make_encoder

import shelver.model_dir as _model_dir  # noqa: E402

# so the configuration's "minilm", now hashing underneath, needs no ONNX export (bootstrap's export stage)
_model_dir.TORCH_FREE_PREFIXES = (*_model_dir.TORCH_FREE_PREFIXES, "minilm")
"""

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- skip: (.+?) -->\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip: str | None


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, with the skip reason written on the line above it."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page_id(path), line, match.group(1), match.group(2), skip and skip.group(1)))
    return found


def test_block_parser_reads_languages_and_skip_reasons(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n<!-- skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```python\nprint(1)\n```\n"
        "\n```text\nout\n```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.skip, b.line) for b in found] == [
        ("bash", "needs a GPU", 4),
        ("python", None, 8),
        ("text", None, 12),
    ]
    assert found[0].code == "nvidia-smi\n"


@pytest.mark.parametrize("path", pages(), ids=page_id)
def test_every_block_says_what_it_is(path: Path) -> None:
    """A block without a language would be neither run nor knowingly shown: name one."""
    unknown = [(b.line, b.lang) for b in blocks(path) if b.lang not in (*RUN, *SHOWN)]
    assert not unknown, f"{page_id(path)}: blocks at lines {unknown}; use one of {RUN + SHOWN}"
    stray = [b.line for b in blocks(path) if b.skip and b.lang not in RUN]
    assert not stray, f"{page_id(path)}: a skip marker above a block that never runs (lines {stray})"


def test_every_skip_marker_sits_above_a_block() -> None:
    for path in pages():
        markers = len(re.findall(r"^<!-- skip:", path.read_text(), re.MULTILINE))
        assert markers == sum(1 for b in blocks(path) if b.skip), f"{page_id(path)}: a stray skip marker"


def test_readme_stays_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 160


def test_readme_links_resolve() -> None:
    """mkdocs checks the site's links; the README lives outside it."""
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text())
    local = [t for t in targets if "://" not in t]
    assert local, "the README links to no local page"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


# --- running the blocks ---------------------------------------------------------------------


def _small_fashion(out: Path) -> None:
    source = REPO / "examples" / "fashion"
    tree = json.loads((source / "taxonomy.json").read_text())
    tree["tree"] = {name: leaves for name, leaves in tree["tree"].items() if name in CATEGORIES}
    out.mkdir(parents=True)
    (out / "taxonomy.json").write_text(json.dumps(tree, indent=1))
    for split, n in ROWS.items():
        frame = pd.read_csv(source / f"{split}.csv")
        frame = frame[frame["category"].isin(CATEGORIES)]
        frame.groupby(["category", "subcategory"], sort=False).head(n).to_csv(
            out / f"{split}.csv", index=False
        )


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root / ".sitecustomize")
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    return env


def _run(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if block.lang == "bash" and block.code.startswith(SERVE):
        return _run_beside_server(block, cwd, env)
    if block.lang == "python":
        command = [str(BIN / "python"), "-c", block.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False
    )


def _run_beside_server(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A block that starts with ``shelver serve``: the server runs in the background (on a free
    port, which replaces the page's in every line) until the block's other lines are done."""
    written = re.search(r"--port (\d+)", block.code.splitlines()[0])
    assert written, f"{block.page}:{block.line}: a serve block names its --port"
    port = str(_free_port())
    code = block.code.replace(f"--port {written[1]}", f"--port {port}").replace(f":{written[1]}", f":{port}")
    serve, rest = code.split("\n", 1)
    log = cwd / f"serve-{block.line}.log"
    with log.open("w") as out:
        server = subprocess.Popen(["bash", "-c", f"exec {serve}"], cwd=cwd, env=env, stdout=out, stderr=out)
    try:
        if not _ready(f"http://127.0.0.1:{port}/readyz", server):
            return subprocess.CompletedProcess(serve, 1, "", log.read_text())
        return _run(dataclasses.replace(block, code=rest), cwd, env)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ready(url: str, server: subprocess.Popen, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status == 200
        except OSError:
            time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small examples and the quickstart's model at runs/fashion, copied for each page."""
    root = tmp_path_factory.mktemp("docs") / "base"
    _small_fashion(root / "examples" / "fashion")
    shutil.copy(REPO / "examples" / "queries.txt", root / "examples" / "queries.txt")
    (root / ".sitecustomize").mkdir()
    (root / ".sitecustomize" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    train = Block("fixture", 0, "bash", _QUICKSTART_TRAIN, None)
    done = _run(train, root, _env(root))
    assert done.returncode == 0, done.stderr[-2000:]
    return root


_QUICKSTART_TRAIN = (
    "shelver train --taxonomy examples/fashion/taxonomy.json --train examples/fashion/train.csv "
    "--valid examples/fashion/valid.csv --target-precision 0.95 --out runs/fashion --quiet"
)


def test_the_swap_reaches_the_commands(docs_workspace: Path) -> None:
    """The workspace's model really uses the hashing encoder (else the examples ran MiniLM)."""
    config = json.loads((docs_workspace / "runs" / "fashion" / "train_config.json").read_text())
    assert config["encoder"]["name"] == "minilm"  # the command as written
    params = json.loads((docs_workspace / "runs" / "fashion" / "config.json").read_text())["params"]
    assert params["encoder"].startswith("hashing")  # what ran


@dataclass(frozen=True)
class PageRun:
    ran: int
    skipped: int
    failure: str | None  # the first failing block, its code and its output


def run_page(path: Path, workspace: Path, scratch: Path) -> PageRun:
    """Every runnable block of ``path`` in order, in a copy of ``workspace``; stops at a failure."""
    cwd = scratch / "work"
    shutil.copytree(workspace, cwd)
    env = _env(cwd)
    runnable = [b for b in blocks(path) if b.lang in RUN]
    for count, block in enumerate(b for b in runnable if not b.skip):
        done = _run(block, cwd, env)
        if done.returncode != 0:
            failure = (
                f"{block.page}:{block.line} ({block.lang}) exited {done.returncode}\n"
                f"{block.code}\n--- stdout\n{done.stdout[-1500:]}\n--- stderr\n{done.stderr[-3000:]}"
            )
            return PageRun(count, sum(1 for b in runnable if b.skip), failure)
    skipped = sum(1 for b in runnable if b.skip)
    return PageRun(len(runnable) - skipped, skipped, None)


RUNNABLE_PAGES = [p for p in pages() if any(b.lang in RUN for b in blocks(p))]


@pytest.fixture(scope="session")
def page_runs(docs_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageRun]:
    """All pages at once, one thread per core: each waits on its own subprocesses."""
    workers = max(1, min(len(RUNNABLE_PAGES), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            page_id(path): pool.submit(run_page, path, docs_workspace, tmp_path_factory.mktemp("page"))
            for path in RUNNABLE_PAGES
        }
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("path", RUNNABLE_PAGES, ids=page_id)
def test_page_examples_run(path: Path, page_runs: dict[str, PageRun]) -> None:
    run = page_runs[page_id(path)]
    assert run.failure is None, run.failure
    assert run.ran == sum(1 for b in blocks(path) if b.lang in RUN and not b.skip)
    print(f"{page_id(path)}: {run.ran} blocks ran, {run.skipped} skipped")


def test_skipped_blocks_are_counted_and_few(page_runs: dict[str, PageRun]) -> None:
    """A skip is for what cannot run here (an endpoint of yours, a server, minutes of work), and
    says so; most blocks run."""
    ran = sum(run.ran for run in page_runs.values())
    skipped = sum(run.skipped for run in page_runs.values())
    reasons = [b.skip for path in pages() for b in blocks(path) if b.skip]
    assert len(reasons) == skipped and all(len(reason.split()) >= 3 for reason in reasons)
    print(f"docs examples: {ran} blocks ran, {skipped} skipped")
    assert ran > 2 * skipped


def test_model_directory_page_lists_every_file_a_model_has(docs_workspace: Path) -> None:
    page = (DOCS / "guides" / "model-directory.md").read_text()
    listing = next(b.code for b in blocks(DOCS / "guides" / "model-directory.md") if b.lang == "text")
    documented = {
        line.split()[0].rstrip("/") for line in listing.splitlines() if line and not line[0].isspace()
    }
    model = docs_workspace / "runs" / "fashion"
    undocumented = sorted(p.name for p in model.iterdir() if p.name not in documented)
    assert not undocumented, f"model-directory.md does not list {undocumented}"
    assert "No pickle anywhere" in page


def test_a_failing_block_fails(docs_workspace: Path, tmp_path: Path) -> None:
    """The runner reports a wrong flag, as it would in a page."""
    block = Block("t", 1, "bash", "shelver predict --model runs/fashion --no-such-flag\n", None)
    shutil.copytree(docs_workspace, tmp_path / "work")
    done = _run(block, tmp_path / "work", _env(tmp_path / "work"))
    assert done.returncode != 0
    assert "no-such-flag" in done.stderr


# --- the configuration reference and the site --------------------------------------------------


def _hook():
    spec = importlib.util.spec_from_file_location("reference_tables", DOCS / "hooks" / "reference_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(instance: object, prefix: str = "") -> list[str]:
    keys = []
    for spec in dataclasses.fields(instance):
        value = getattr(instance, spec.name)
        if dataclasses.is_dataclass(value):
            keys += _keys(value, f"{prefix}{spec.name}.")
        else:
            keys.append(prefix + spec.name)
    return keys


@pytest.mark.parametrize(
    ("module", "name"), [("shelver.config", "TrainConfig"), ("shelver.pipeline.config", "BootstrapConfig")]
)
def test_config_reference_has_every_key_with_its_default_and_reason(module: str, name: str) -> None:
    hook = _hook()
    cls = getattr(importlib.import_module(module), name)
    page = hook.expand(f"<!-- config-reference: {module}:{name} -->")
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `")}
    assert sorted(rows) == sorted(_keys(cls()))
    assert all(line.split("|")[3].strip() for line in rows.values()), "a key without a reason"
    if name == "TrainConfig":
        assert "| `encoder.max_seq_length` | `32` | queries are short: 32 tokens" in page
        assert "| `decision.target_precision` | `none` |" in page
    else:
        assert "| `train.decision.target_precision` | `0.9` |" in page  # bootstrap's own default


def test_config_reference_page_uses_the_hook() -> None:
    text = (DOCS / "guides" / "configuration.md").read_text()
    assert _hook().MARKER.findall(text) == [
        ("shelver.config", "TrainConfig"),
        ("shelver.pipeline.config", "BootstrapConfig"),
    ]


def test_benchmark_table_lists_every_script_with_its_description_and_pages() -> None:
    table = _hook().benchmark_table()
    scripts = sorted(p.name for p in (REPO / "benchmarks").glob("[!_]*.py"))
    assert [line.split("|")[1].strip(" `") for line in table.splitlines()[2:]] == scripts
    heads = next(line for line in table.splitlines() if line.startswith("| `heads.py`"))
    assert "Flat vs masked vs per-group heads" in heads and "`heads.md`" in heads
    assert "<!-- benchmark-scripts -->" in (DOCS / "guides" / "benchmarks.md").read_text()


def test_docs_build_strictly(tmp_path: Path) -> None:
    """mkdocs --strict: every nav entry exists, every link and anchor resolves, every docstring
    of the API reference renders. A few seconds."""
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "HierarchicalClassifier" in api and "certified_threshold" in api


def test_service_settings_table_has_every_variable_with_its_default_and_reason() -> None:
    from shelver.service.settings import Settings

    rows = {line.split("|")[1].strip(" `"): line for line in _hook().settings_table().splitlines()[2:]}
    assert sorted(rows) == sorted(f"SHELVER_{s.name.upper()}" for s in dataclasses.fields(Settings))
    assert all(line.split("|")[3].strip() for line in rows.values()), "a setting without a reason"
    assert "| `SHELVER_MICROBATCH_WINDOW_MS` | 1.0 |" in rows["SHELVER_MICROBATCH_WINDOW_MS"]
    assert "| 0 |" in rows["SHELVER_MICROBATCH_ANY_MODEL"] and "| unset |" in rows["SHELVER_ADMIN_TOKEN"]
    assert "<!-- service-settings -->" in (DOCS / "guides" / "serving.md").read_text()
