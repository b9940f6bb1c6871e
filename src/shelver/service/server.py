"""``shelver serve``: uvicorn in front of ``create_app``, with one process or several workers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shelver.service.settings import get_settings
from shelver.service.slot import load_served


def run_server(model: Path, host: str, port: int, workers: int, log_level: str = "info") -> None:
    """Serve ``model``; its errors surface before the port opens, as one line from the CLI."""
    import uvicorn

    os.environ["SHELVER_MODEL"] = str(model)  # the other SHELVER_* settings come from the environment
    settings = get_settings()
    served = load_served(settings.model, settings.threads, settings.cache_size)
    options = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "timeout_keep_alive": 30,
        "log_config": _log_config(),
    }
    if workers <= 1:
        from shelver.service.app import create_app

        uvicorn.run(create_app(settings, served), **options)
        return
    # each worker loads the model itself; their metrics are summed through files in this folder
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="shelver-metrics-"))
    del served
    uvicorn.run("shelver.service.app:create_app", factory=True, workers=workers, **options)


def _log_config() -> dict:
    """uvicorn's logging, plus shelver's own lines through the same handler: at INFO whatever
    --log-level says, since every reload attempt must leave its audit line."""
    from copy import deepcopy

    from uvicorn.config import LOGGING_CONFIG

    config = deepcopy(LOGGING_CONFIG)
    config["loggers"]["shelver"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
