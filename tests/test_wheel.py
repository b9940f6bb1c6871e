"""The wheel installs where it serves: ``python -m build``, then ``pip install 'shelver[serve]'`` into
a fresh virtual environment (no torch), then ``shelver serve`` answers over HTTP with an exported
ONNX model. Slow (a real install from the package index, ~1 min): ``pytest -m slow tests/test_wheel.py``.

The environment's size is printed (``-s``); the README's serving section quotes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, free_port

pytestmark = pytest.mark.slow
# a serving process must load none of these: they would make the serve extra a lie (torch is not
# even installed), or cost start-up time and memory for nothing (base dependencies of training)
NOT_SERVING = ("torch", "sentence_transformers", "transformers", "pandas", "sklearn", "scipy")


def _run(*command: str | Path, timeout: float = 600) -> str:
    done = subprocess.run(
        list(map(str, command)), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the built wheel and its serve extra only."""
    root = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", root / "dist", REPO)
    (wheel,) = (root / "dist").glob("shelver-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[serve]")
    return venv


def _site_packages(venv: Path) -> Path:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return site


def _sizes(venv: Path) -> tuple[int, list[tuple[int, str]]]:
    """Bytes of the whole environment, and the largest top-level entries of site-packages."""

    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())

    site = _site_packages(venv)
    biggest = sorted(((size(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:8]
    return size(venv), biggest


def _get(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"shelver serve exited with {process.returncode}")
        try:
            if _get(f"{url}/readyz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"shelver serve was not ready within {timeout}s")


def _loaded_from(pid: int, site: Path) -> set[str]:
    """Top-level packages of ``site`` with a native library mapped into the process: pandas,
    scikit-learn and SciPy load theirs on import, so an import anywhere shows here."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    prefix = f"{site}/"
    return {line.split(prefix, 1)[1].split("/")[0] for line in maps.splitlines() if prefix in line}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
def test_the_wheel_with_the_serve_extra_alone_serves_an_exported_model(serve_venv, onnx_model_dir, tmp_path):
    python = serve_venv / "bin" / "python"
    missing = _run(python, "-c", "import importlib.util as u; print(u.find_spec('torch'))")
    assert missing.strip() == "None"  # the serve extra did not pull torch
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the wheel, not src/
    command = [serve_venv / "bin" / "shelver", "serve", "--model", onnx_model_dir, "--port", str(port)]
    process = subprocess.Popen(list(map(str, command)), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(url, process)
        status, answer = _get(f"{url}/v1/classify", {"query": "red sneakers"})
        assert status == 200 and answer["path"] == ["Shoes", "Sneakers"], answer
        assert _get(f"{url}/v1/model")[1]["encoder"]["serving"] == "onnx"
        loaded = _loaded_from(process.pid, _site_packages(serve_venv))
        assert "onnxruntime" in loaded  # the check sees what serving does load
        assert not loaded & set(NOT_SERVING), loaded
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    total, biggest = _sizes(serve_venv)
    print(f"\nfresh venv with shelver[serve]: {total / 2**20:.0f} MiB; largest: ", end="")
    print(", ".join(f"{name} {n / 2**20:.0f} MiB" for n, name in biggest))
