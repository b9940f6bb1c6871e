"""Shared fixtures: a tiny real taxonomy (3 x 3) and ~120 labeled rows, fast hashing encoder."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shelver.taxonomy import Taxonomy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO / "examples" / "fashion"

TREE = {
    "Shoes": ["Sneakers", "Boots", "Sandals"],
    "Bags": ["Backpacks", "Handbags", "Accessories"],
    "Tops": ["Shirts", "Accessories", "Tops"],  # "Accessories" twice, "Tops > Tops": paths, not names
}
WORDS = {
    ("Shoes", "Sneakers"): ["sneaker", "running shoe", "trainers", "canvas sneakers"],
    ("Shoes", "Boots"): ["boots", "ankle boot", "chelsea boots", "hiking boot"],
    ("Shoes", "Sandals"): ["sandals", "flip flop sandal", "strappy sandals", "slides sandal"],
    ("Bags", "Backpacks"): ["backpack", "rucksack", "school backpack", "laptop backpack"],
    ("Bags", "Handbags"): ["handbag", "tote bag", "clutch handbag", "shoulder handbag"],
    ("Bags", "Accessories"): ["bag strap", "bag charm", "purse organizer", "bag keychain"],
    ("Tops", "Shirts"): ["shirt", "oxford shirt", "linen shirt", "flannel shirt"],
    ("Tops", "Accessories"): ["cufflinks", "collar stays", "tie clip", "shirt studs"],
    ("Tops", "Tops"): ["tank top", "crop top", "camisole top", "tube top"],
}
COLOURS = ["red", "blue", "black", "white", "green", "brown", "grey", "pink", "navy", "beige"]


@pytest.fixture(scope="session")
def taxonomy() -> Taxonomy:
    return Taxonomy.from_tree(TREE, name="tiny")


def make_rows(n_per_leaf: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for (category, sub), words in WORDS.items():
        for _ in range(n_per_leaf):
            text = f"{rng.choice(COLOURS)} {rng.choice(words)}"
            rows.append({"text": text, "category": category, "subcategory": sub})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="session")
def tiny_frames() -> dict[str, pd.DataFrame]:
    return {"train": make_rows(14, 0), "valid": make_rows(4, 1), "test": make_rows(4, 2)}


@pytest.fixture(scope="session")
def tiny_files(
    tmp_path_factory: pytest.TempPathFactory, taxonomy: Taxonomy, tiny_frames: dict[str, pd.DataFrame]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    paths = {"taxonomy": root / "taxonomy.json"}
    taxonomy.save(paths["taxonomy"])
    for split, frame in tiny_frames.items():
        paths[split] = root / f"{split}.csv"
        frame.to_csv(paths[split], index=False)
    return paths


@pytest.fixture(scope="session")
def tiny_xy(tiny_frames: dict[str, pd.DataFrame]) -> tuple[list[str], np.ndarray]:
    frame = tiny_frames["train"]
    return frame["text"].tolist(), frame[["category", "subcategory"]].to_numpy().astype(str)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-d BERT with MiniLM's tokenizer, randomly initialised: a real
    sentence-transformers directory in about a second, and nothing downloaded."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from shelver.encoders import resolve_model_path

    root = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    transformer = models.Transformer(str(root / "bert"), max_seq_length=32)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(
        str(root / "st")
    )
    return root / "st"


# ---- production paths: models saved once per session, a real server process --------------------
@pytest.fixture(scope="session")
def hashing_model_dir(tmp_path_factory: pytest.TempPathFactory, taxonomy: Taxonomy, tiny_xy) -> Path:
    """A torch-free model: serves and batches as is, in milliseconds."""
    from shelver import HierarchicalClassifier

    texts, y = tiny_xy
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing").fit(texts, y)
    return model.save(tmp_path_factory.mktemp("models") / "hashing")


@pytest.fixture(scope="session")
def onnx_model_dir(
    tmp_path_factory: pytest.TempPathFactory, taxonomy: Taxonomy, tiny_xy, tiny_frames
) -> Path:
    """MiniLM heads on the tiny taxonomy, exported to ONNX once per session (~20 s)."""
    pytest.importorskip("onnxscript")
    from shelver import HierarchicalClassifier
    from shelver.export import export_onnx

    texts, y = tiny_xy
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="minilm").fit(texts, y)
    root = model.save(tmp_path_factory.mktemp("models") / "minilm")
    export_onnx(root, tiny_frames["valid"]["text"].tolist(), progress=False)
    return root


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``shelver serve`` in its own process on a free port; stopped by its own pid."""

    def __init__(self, model: Path, env: dict[str, str] | None = None) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "shelver.cli",
            "serve",
            "--model",
            str(model),
            "--port",
            str(self.port),
        ]
        environ = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
        self.process = subprocess.Popen(
            command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server not ready in time")

    def stop(self) -> str:
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=15)
        except Exception:
            self.process.kill()
            out, _ = self.process.communicate()
        return out.decode(errors="replace")


@pytest.fixture(scope="session")
def serving_process():
    """Run ``call`` (Python, on ``m``) in a fresh interpreter that loads ``model_dir`` for serving;
    returns its printed result and which of ``modules`` that interpreter had imported."""

    def run(model_dir: Path, call: str, modules: tuple[str, ...]) -> list[str]:
        code = (
            "import sys; from shelver.model_dir import load_model;"
            f"m = load_model({str(model_dir)!r}, encoder='serving');"
            f"print({call});"
            f"print(sorted(k for k in {modules!r} if k in sys.modules))"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    return run
