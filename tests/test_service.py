"""The HTTP service: a real ``shelver serve`` process over HTTP, fuzzed, reloaded under load."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelver.errors import ConfigError
from shelver.model_dir import load_model
from shelver.service import Settings, create_app, get_settings


@pytest.fixture(scope="module")
def onnx_server(onnx_model_dir):
    server = ServerProcess(onnx_model_dir).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(onnx_server):
    with httpx.Client(base_url=onnx_server.url, timeout=10.0) as http:
        yield http


# ---- the contract -------------------------------------------------------------------------
def test_classify_one_and_many_match_the_library(client, onnx_model_dir, taxonomy):
    local = load_model(onnx_model_dir, encoder="serving")
    queries = ["red sneakers", "laptop backpack", "linen shirt"]
    one = client.post("/v1/classify", json={"query": queries[0]})
    assert one.status_code == 200
    assert one.json() == local.classify(queries[:1])[0].to_dict()
    assert one.headers["x-shelver-model"] == client.get("/v1/model").json()["version"]
    many = client.post("/v1/classify", json={"queries": queries}).json()["predictions"]
    assert [p["text"] for p in many] == queries
    for p in many:
        assert tuple(p["path"]) in taxonomy and p["confidence"][1] <= p["confidence"][0] + 1e-6
    assert [p["path"] for p in many] == [p.to_dict()["path"] for p in local.classify(queries)]


def test_model_info_probes_and_metrics(client, taxonomy):
    info = client.get("/v1/model").json()
    assert info["taxonomy"]["hash"] == taxonomy.hash and info["taxonomy"]["tree"]["Shoes"][0] == "Sneakers"
    assert len(info["training"]["fingerprint"]) == 64 and info["encoder"]["serving"] == "onnx"
    assert info["export"]["check"]["agreement"] >= 0.995
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/classify", json={"queries": ["boots", "tote bag"]})
    metrics = client.get("/metrics").text
    assert 'shelver_http_requests_total{method="POST",route="/v1/classify",status="200"}' in metrics
    assert "shelver_http_request_duration_seconds_bucket" in metrics
    assert 'shelver_decisions_total{decision="full"}' in metrics
    assert float(_metric(metrics, "shelver_queries_total")) >= 2


def test_serving_process_never_loads_torch(onnx_server):
    maps = Path(f"/proc/{onnx_server.process.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    libraries = maps.read_text()
    assert "onnxruntime" in libraries
    assert "libtorch" not in libraries


# ---- hardening ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "   \t "}, 422, "query: the query is empty or whitespace only"),
        ({"queries": ["ok", ""]}, 422, r"queries.1: String should have at least 1 character"),
        ({"query": "x" * 513}, 422, "query: String should have at most 512 characters"),
        ({"queries": ["x"] * 257}, 422, "queries: List should have at most 256 items"),
        ({"queries": []}, 422, "queries: List should have at least 1 item"),
        ({"query": "a", "top_k": 3}, 422, "top_k: Extra inputs are not permitted"),
        ({"query": 42}, 422, "query: Input should be a valid string"),
        ({"query": "a", "queries": ["b"]}, 422, "send either 'query'"),
        ({}, 422, "send either 'query'"),
        ([1, 2], 422, "Input should be an object"),
    ],
)
def test_client_mistakes_get_4xx_with_a_message(client, body, status, message):
    response = client.post("/v1/classify", json=body)
    assert response.status_code == status
    assert re.search(message, response.json()["detail"]), response.json()["detail"]


def test_raw_bodies_that_are_not_json(client):
    for raw in (b"\xff\xfe\x00", b'{"query": "\xc3\x28"}', b"not json", b'{"query": "a"', b""):
        response = client.post("/v1/classify", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, raw
        assert "Invalid JSON" in response.json()["detail"] or "EOF" in response.json()["detail"]


def test_body_size_limit_is_413(client):
    big = json.dumps({"query": "a" * 2_000_000}).encode()
    response = client.post("/v1/classify", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than 1,000,000 bytes" in response.json()["detail"]


def test_strange_but_valid_queries_are_answered(client):
    queries = ["👟👟 running", "bag\x00strap\x1b[31m", "\u200bcrop top", "ÇAĞRI çanta", "鞋子", "a\r\nb"]
    predictions = client.post("/v1/classify", json={"queries": queries}).json()["predictions"]
    assert len(predictions) == len(queries)
    assert predictions[1]["text"] == "bag strap [31m"  # control characters become spaces
    assert all(len(p["path"]) == 2 for p in predictions)


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TEXTS = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
BODIES = st.one_of(
    st.builds(lambda q: {"query": q}, TEXTS),
    st.builds(lambda qs: {"queries": qs}, st.lists(TEXTS, max_size=6)),
    st.dictionaries(st.sampled_from(["query", "queries", "extra"]), JSON_VALUES, max_size=3),
    JSON_VALUES,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES, raw=st.binary(max_size=64), use_raw=st.booleans())
def test_fuzzed_requests_never_get_a_5xx(client, body, raw, use_raw):
    content = raw if use_raw else json.dumps(body).encode()
    response = client.post("/v1/classify", content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        payload = response.json()
        predictions = payload.get("predictions", [payload])
        assert all(len(p["path"]) == 2 for p in predictions)
    else:
        assert response.json()["detail"]


# ---- reload -------------------------------------------------------------------------------
def test_reload_under_load_never_fails_a_request(hashing_model_dir, tmp_path, taxonomy, tiny_xy):
    from shelver import HierarchicalClassifier

    texts, y = tiny_xy
    HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing:256").fit(texts, y).save(tmp_path / "b")
    served = Path(shutil.copytree(hashing_model_dir, tmp_path / "a"))
    broken = Path(shutil.copytree(hashing_model_dir, tmp_path / "broken"))
    (broken / "heads.safetensors").write_bytes(b"tampered")
    server = ServerProcess(served, env={"SHELVER_ADMIN_TOKEN": "s3cret"}).wait_ready()
    try:
        failures, versions, stop = [], set(), threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=server.url, timeout=10.0) as http:
                while not stop.is_set():
                    response = http.post("/v1/classify", json={"queries": ["red boots", "tote bag"] * 8})
                    if response.status_code != 200:
                        failures.append(response.text)
                    versions.add(response.headers.get("x-shelver-model"))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        auth = {"authorization": "Bearer s3cret"}
        with httpx.Client(base_url=server.url, timeout=30.0, headers=auth) as admin:
            first = admin.get("/v1/model").json()["version"]
            swapped = admin.post("/admin/reload", json={"model": "b"})
            refused = admin.post("/admin/reload", json={"model": "broken"})
            still = admin.get("/v1/model").json()["version"]
            time.sleep(0.3)
            back = admin.post("/admin/reload", json={"model": "a"})
            time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        log = server.stop()
    assert swapped.status_code == 200 and swapped.json()["previous"] == first
    assert refused.status_code == 422
    assert "reload refused, still serving version" in refused.json()["detail"]
    assert "modified after the model was saved" in refused.json()["detail"]
    assert still == swapped.json()["version"] != first
    assert back.json()["version"] == first
    assert not failures, failures[:3]
    assert {first, swapped.json()["version"]} <= versions
    assert "Traceback" not in log


def test_a_stalled_body_gets_408(hashing_model_dir):
    import socket

    server = ServerProcess(hashing_model_dir, env={"SHELVER_BODY_TIMEOUT": "0.5"}).wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            sock.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"query": "bo')
            answer = b""
            while b"}" not in answer:  # headers and body may come in separate segments
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.5 s" in answer
    finally:
        server.stop()


def test_sighup_reloads_the_served_directory(hashing_model_dir):
    server = ServerProcess(hashing_model_dir).wait_ready()
    try:
        os.kill(server.process.pid, signal.SIGHUP)
        deadline, reloads = time.monotonic() + 20, 0.0
        while time.monotonic() < deadline and not reloads:
            metrics = httpx.get(f"{server.url}/metrics").text
            reloads = float(_metric(metrics, 'shelver_reloads_total{result="ok"}') or 0)
            time.sleep(0.1)
        assert reloads == 1
        assert httpx.post(f"{server.url}/v1/classify", json={"query": "boots"}).status_code == 200
    finally:
        server.stop()


def test_admin_token_guards_reload(hashing_model_dir):
    from fastapi.testclient import TestClient

    app = create_app(Settings(model=hashing_model_dir, admin_token="s3cret"))
    with TestClient(app) as http:
        assert http.post("/admin/reload").status_code == 401
        ok = http.post("/admin/reload", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["reloaded"]
    with TestClient(create_app(Settings(model=hashing_model_dir))) as http:  # no token: admin is off
        assert http.post("/admin/reload").status_code == 403


# ---- settings and timeouts (in process) ---------------------------------------------------
def test_settings_from_the_environment(tmp_path):
    settings = get_settings(
        {"SHELVER_MODEL": str(tmp_path), "SHELVER_MAX_BATCH": "8", "SHELVER_REQUEST_TIMEOUT": "0.5"}
    )
    assert settings.model == tmp_path and settings.max_batch == 8 and settings.request_timeout == 0.5
    with pytest.raises(ConfigError, match="set SHELVER_MODEL=DIR"):
        get_settings({})
    with pytest.raises(ConfigError, match="SHELVER_MAX_BATCH must be a int number, got 'many'"):
        get_settings({"SHELVER_MODEL": "m", "SHELVER_MAX_BATCH": "many"})
    with pytest.raises(ConfigError, match="SHELVER_THREADS must be positive"):
        get_settings({"SHELVER_MODEL": "m", "SHELVER_THREADS": "0"})
    assert get_settings({"SHELVER_MODEL": "m", "SHELVER_INLINE_MS": "0"}).inline_ms == 0
    rooted = get_settings({"SHELVER_MODEL": str(tmp_path / "m"), "SHELVER_MODELS_ROOT": str(tmp_path)})
    assert rooted.models_root == tmp_path and rooted.reload_root() == tmp_path.resolve()
    assert settings.reload_root() == tmp_path.resolve().parent  # default: the served model's parent
    off = get_settings(
        {"SHELVER_MODEL": "m", "SHELVER_MICROBATCH_QUERIES": "1", "SHELVER_MICROBATCH_WINDOW_MS": "0"}
    )
    assert create_app(off).state.slot.batcher is None and create_app(settings).state.slot.batcher is not None
    assert get_settings({"SHELVER_MODEL": "m", "SHELVER_MICROBATCH_ANY_MODEL": "yes"}).microbatch_any_model
    with pytest.raises(ConfigError, match="SHELVER_MICROBATCH_ANY_MODEL must be 1/true/yes/on or 0/false"):
        get_settings({"SHELVER_MODEL": "m", "SHELVER_MICROBATCH_ANY_MODEL": "maybe"})
    with pytest.raises(ConfigError, match="SHELVER_INLINE_MS must be 0 or more"):
        get_settings({"SHELVER_MODEL": "m", "SHELVER_INLINE_MS": "-1"})


def _record_calls(app: Any, what: Any) -> list:
    """Wrap the served model's classify: each call first appends ``what(texts)`` to the list returned."""
    model, calls = app.state.slot.current.model, []
    original = model.classify
    model.classify = lambda texts: (calls.append(what(texts)), original(texts))[1]
    return calls


def test_repeated_queries_are_answered_from_the_cache(hashing_model_dir):
    from fastapi.testclient import TestClient

    app = create_app(Settings(model=hashing_model_dir, cache_size=2))
    with TestClient(app) as http:
        seen = _record_calls(app, lambda texts: list(texts))
        first = http.post("/v1/classify", json={"queries": ["boots", "boots", "red dress"]}).json()
        again = http.post("/v1/classify", json={"query": "boots"}).json()
        assert seen == [["boots", "red dress"]]  # each new text once; the repeat came from the cache
        assert again == first["predictions"][0] == first["predictions"][1]
        http.post("/v1/classify", json={"queries": ["scarf", "belt"]})  # the cache holds 2: boots goes
        http.post("/v1/classify", json={"query": "boots"})
        assert seen[-1] == ["boots"]
        assert _metric(http.get("/metrics").text, "shelver_cache_hits_total") == "1.0"  # the 2nd request


def test_no_cache_classifies_every_query(hashing_model_dir):
    from fastapi.testclient import TestClient

    app = create_app(Settings(model=hashing_model_dir, cache_size=0))
    with TestClient(app) as http:
        seen = _record_calls(app, lambda texts: list(texts))
        for _ in range(2):
            assert http.post("/v1/classify", json={"query": "boots"}).status_code == 200
        assert seen == [["boots"], ["boots"]]


@pytest.mark.parametrize(
    ("inline_ms", "queries", "on_pool"), [(1e6, 3, False), (0, 1, True), (1e-6, 1, True)]
)
def test_short_requests_run_inline_and_long_ones_on_the_pool(hashing_model_dir, inline_ms, queries, on_pool):
    from fastapi.testclient import TestClient

    app = create_app(Settings(model=hashing_model_dir, inline_ms=inline_ms))
    with TestClient(app) as http:
        threads = _record_calls(app, lambda texts: threading.current_thread().name)
        response = http.post("/v1/classify", json={"queries": ["boots"] * queries})
        assert response.status_code == 200 and len(response.json()["predictions"]) == queries
        assert threads and threads[0].startswith("classify") is on_pool


def test_a_slow_classification_times_out_with_503(hashing_model_dir):
    from fastapi.testclient import TestClient

    app = create_app(Settings(model=hashing_model_dir, request_timeout=0.05, max_batch=4, inline_ms=0))
    with TestClient(app) as http:
        model = app.state.slot.current.model
        original = model.classify
        model.classify = lambda texts: (time.sleep(0.3), original(texts))[1]
        response = http.post("/v1/classify", json={"query": "boots"})
        assert response.status_code == 503 and "longer than 0.05 s" in response.json()["detail"]
        assert http.post("/v1/classify", json={"queries": ["a"] * 5}).status_code == 422


def test_serve_refuses_a_model_without_export_in_one_line(tmp_path, onnx_model_dir):
    import subprocess

    bare = Path(shutil.copytree(onnx_model_dir, tmp_path / "bare", ignore=shutil.ignore_patterns("onnx")))
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest.pop("exports")
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("onnx/")}
    (bare / "manifest.json").write_text(json.dumps(manifest))
    result = subprocess.run(
        [sys.executable, "-m", "shelver.cli", "serve", "--model", str(bare)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "shelver export --model" in result.stderr
    assert "Traceback" not in result.stderr


def _metric(text: str, name: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line.split()[-1]
    return None


def test_the_service_gives_blas_the_threads_a_call_has(hashing_model_dir):
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    original = max(p["num_threads"] for p in blas)
    try:
        threadpool_limits(limits=2, user_api="blas")
        create_app(Settings(model=hashing_model_dir, threads=1))
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}
    finally:
        threadpool_limits(limits=original, user_api="blas")
