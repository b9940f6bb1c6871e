"""Issue 20: /admin/* secure by default, tried against a real ``shelver serve`` process.

A models root holds the served model, a sibling on the same taxonomy, one on another taxonomy,
a broken one, and a symlink to a model outside the root; every refusal must leave the old model
answering, name no server path, and leave one JSON audit line in the server's log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import TREE, ServerProcess
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shelver.model_dir import model_version
from shelver.service.slot import redact
from shelver.taxonomy import Taxonomy

TOKEN = "t0ken-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _fit(taxonomy: Taxonomy, texts: list[str], y: np.ndarray, encoder: str, out: Path) -> Path:
    from shelver import HierarchicalClassifier

    return HierarchicalClassifier(taxonomy=taxonomy, encoder=encoder).fit(texts, y).save(out)


@pytest.fixture(scope="module")
def layout(tmp_path_factory, hashing_model_dir, taxonomy, tiny_xy) -> dict[str, Path]:
    texts, y = tiny_xy
    root, outside = tmp_path_factory.mktemp("models-root"), tmp_path_factory.mktemp("outside")
    renamed = {("Footwear" if k == "Shoes" else k): v for k, v in TREE.items()}
    other_y = np.where(y == "Shoes", "Footwear", y)
    paths = {
        "root": root,
        "served": Path(shutil.copytree(hashing_model_dir, root / "served")),
        "same": _fit(taxonomy, texts, y, "hashing:256", root / "same"),
        "other": _fit(Taxonomy.from_tree(renamed, name="other"), texts, other_y, "hashing", root / "other"),
        "outside": _fit(taxonomy, texts, y, "hashing:128", outside / "model"),
        "broken": Path(shutil.copytree(hashing_model_dir, root / "broken")),
    }
    (paths["broken"] / "heads.safetensors").write_bytes(b"tampered")
    (root / "escape").symlink_to(paths["outside"], target_is_directory=True)
    return paths


@pytest.fixture(scope="module")
def admin_server(layout):
    env = {"SHELVER_ADMIN_TOKEN": TOKEN, "SHELVER_CACHE_SIZE": "0"}
    server = ServerProcess(layout["served"], env=env).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(admin_server):
    with httpx.Client(base_url=admin_server.url, timeout=30.0) as http:
        yield http


def _serving(http: httpx.Client) -> str:
    response = http.post("/v1/classify", json={"query": "red boots"})
    assert response.status_code == 200
    return response.headers["x-shelver-model"]


def test_admin_is_off_without_a_token(layout):
    server = ServerProcess(layout["served"]).wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            before = _serving(http)
            for headers in ({}, {"authorization": "Bearer x"}, AUTH):
                response = http.post("/admin/reload", json={"model": "same"}, headers=headers)
                assert response.status_code == 403
                assert (
                    "admin endpoints are off; start the service with SHELVER_ADMIN_TOKEN set"
                    in (response.json()["detail"])
                )
            assert _serving(http) == before
    finally:
        log = server.stop()
    assert log.count('"event": "reload"') == 3 and "Traceback" not in log


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"bearer {TOKEN}", f"Bearer {TOKEN}x", TOKEN, "Basic eA=="]
)
def test_a_wrong_token_is_401_and_swaps_nothing(admin, layout, authorization):
    before = _serving(admin)
    headers = {} if authorization is None else {"authorization": authorization}
    response = admin.post("/admin/reload", json={"model": "same"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "admin endpoints need 'Authorization: Bearer <SHELVER_ADMIN_TOKEN>'"
    assert _serving(admin) == before


@pytest.mark.parametrize(
    ("model", "status", "message"),
    [
        ("../outside/model", 422, r"'model' may not contain '\.\.'"),
        ("same/../same", 422, r"'model' may not contain '\.\.'"),
        ("escape", 422, "'model' resolves outside it; name a model directory under the models root"),
        ("/etc", 422, "'model' resolves outside it"),
        ("OUTSIDE", 422, "'model' resolves outside it"),
        ("bad\x00name", 422, "'model' is not a usable path"),
        ("missing", 422, r"does not exist; train one"),
        ("broken", 422, r"modified after the model was saved"),
        ("other", 409, 'trained on another taxonomy .* send "allow_taxonomy_change": true'),
    ],
)
def test_refused_reloads_keep_the_old_model_and_name_no_server_path(admin, layout, model, status, message):
    before = _serving(admin)
    requested = str(layout["outside"]) if model == "OUTSIDE" else model
    response = admin.post("/admin/reload", json={"model": requested}, headers=AUTH)
    detail = response.json()["detail"]
    assert response.status_code == status, detail
    assert detail.startswith(f"reload refused, still serving version {before}: ")
    assert re.search(message, detail), detail
    for path in (layout["root"], layout["outside"], Path("/tmp")):
        assert str(path) not in detail
    assert _serving(admin) == before


def test_taxonomy_change_needs_an_explicit_yes_and_sibling_swaps_are_allowed(admin, layout):
    first = _serving(admin)
    same = admin.post("/admin/reload", json={"model": "same"}, headers=AUTH)
    assert same.status_code == 200 and same.json() == {
        "reloaded": True,
        "version": model_version(layout["same"]),
        "previous": first,
    }
    absolute = admin.post("/admin/reload", json={"model": str(layout["served"])}, headers=AUTH)
    assert absolute.status_code == 200 and _serving(admin) == first  # absolute, but inside the root
    body = {"model": "other", "allow_taxonomy_change": True}
    assert admin.post("/admin/reload", json=body, headers=AUTH).status_code == 200
    assert "Footwear" in admin.get("/v1/model").json()["taxonomy"]["tree"]
    back = admin.post("/admin/reload", json={"model": "served", "allow_taxonomy_change": True}, headers=AUTH)
    assert back.status_code == 200 and _serving(admin) == first


def test_every_attempt_leaves_one_audit_line(layout):
    server = ServerProcess(layout["served"], env={"SHELVER_ADMIN_TOKEN": TOKEN}).wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            first = _serving(http)
            http.post("/admin/reload", json={"model": "same"})
            http.post("/admin/reload", json={"model": "escape"}, headers=AUTH)
            http.post("/admin/reload", json={"model": "same"}, headers=AUTH)
    finally:
        log = server.stop()
    lines = [json.loads(line[line.index("{") :]) for line in log.splitlines() if '"event": "reload"' in line]
    assert [(r["result"], r["from_version"]) for r in lines] == [
        ("refused", first),
        ("refused", first),
        ("accepted", first),
    ]
    assert lines[0]["reason"].startswith("admin endpoints need") and lines[0]["client"] == "127.0.0.1"
    assert "outside" in lines[1]["reason"] and lines[1]["to_version"] is None
    assert lines[2]["to_version"] == model_version(layout["same"]) and lines[2]["time"].endswith("+00:00")


def test_sighup_never_changes_the_taxonomy(layout, tmp_path):
    served = Path(shutil.copytree(layout["served"], tmp_path / "hup"))
    server = ServerProcess(served).wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            before = _serving(http)
            shutil.rmtree(served)
            shutil.copytree(layout["other"], served)  # the operator's directory now holds another taxonomy
            os.kill(server.process.pid, signal.SIGHUP)
            deadline, refused = time.monotonic() + 20, None
            while time.monotonic() < deadline and not refused:
                refused = re.search(
                    r'^shelver_reloads_total\{result="refused"\} (\S+)', http.get("/metrics").text, re.M
                )
                time.sleep(0.1)
            assert refused and float(refused.group(1)) == 1
            assert _serving(http) == before
    finally:
        log = server.stop()
    assert '"source": "sighup"' in log and "trained on another taxonomy" in log


def test_redact_keeps_the_message_and_drops_the_paths(tmp_path):
    message = f"cannot load {tmp_path}/b: {tmp_path}/b/heads.safetensors was modified; see /etc/x"
    assert redact(message, tmp_path) == (
        "cannot load <models root>/b: <models root>/b/heads.safetensors was modified; see <path>"
    )


# ---- a fuzzer over the admin routes: no 5xx, no swap that was not allowed ---------------------
CANDIDATES = ["same", "served"] * 2 + ["other", "broken", "escape", "missing", "../served", "same/..", "/etc"]
BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(CANDIDATES) | st.text(max_size=20)},
    optional={"allow_taxonomy_change": st.booleans() | st.integers() | st.text(max_size=3), "x": st.none()},
)
# the valid method, route and token come often enough that allowed swaps happen too
METHODS = st.sampled_from(["POST"] * 4 + ["GET", "PUT", "DELETE"])
PATHS = st.sampled_from(["/admin/reload"] * 4 + ["/admin/reload/", "/admin/", "/admin/Reload", "/admin/x"])
AUTHS = st.sampled_from(
    [f"Bearer {TOKEN}"] * 3 + [None, "Bearer nope", f"Bearer {TOKEN} ", "bearer"]
) | st.text(max_size=12)


def test_fuzzed_admin_requests_never_5xx_nor_swap_unallowed(admin, layout):
    seen = {"swaps": 0, "accepted": 0, "refusals": 0}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=METHODS, path=PATHS, auth=AUTHS, body=BODY | st.binary(max_size=40))
    @example("POST", "/admin/reload", f"Bearer {TOKEN}", {"model": "same"})  # allowed swaps always tried
    @example("POST", "/admin/reload", f"Bearer {TOKEN}", {"model": "other", "allow_taxonomy_change": True})
    @example("POST", "/admin/reload", f"Bearer {TOKEN}", {"model": "served", "allow_taxonomy_change": True})
    def fuzz(method: str, path: str, auth: str | None, body: dict | bytes) -> None:
        before = admin.get("/v1/model").json()["version"]
        headers = {} if auth is None else {"authorization": auth.encode()}  # any bytes, not only ASCII
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            response = admin.request(method, path, content=content, headers=headers)
        except httpx.LocalProtocolError:  # a header value httpx itself will not send
            return
        assert response.status_code < 500, response.text
        after = admin.get("/v1/model").json()["version"]
        seen["refusals"] += response.status_code >= 400
        seen["accepted"] += response.status_code == 200 and path == "/admin/reload"
        if after != before:
            seen["swaps"] += 1
            assert (method, path, auth, response.status_code) == (
                "POST",
                "/admin/reload",
                f"Bearer {TOKEN}",
                200,
            )
            assert after in _allowed(layout, body)

    fuzz()
    assert seen["swaps"] and seen["accepted"] >= 5 and seen["refusals"] >= 30, (
        seen
    )  # the fuzzer reached both sides


def _allowed(layout: dict[str, Path], body: dict) -> set[str]:
    allowed = {model_version(layout[name]) for name in ("served", "same")}
    if body.get("allow_taxonomy_change") is True:
        allowed.add(model_version(layout["other"]))
    return allowed
