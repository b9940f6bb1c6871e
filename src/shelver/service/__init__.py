"""The HTTP service (FastAPI + uvicorn): ``create_app(settings)``, settings from ``SHELVER_*``.

Serving imports neither torch nor sentence-transformers: the model runs its ONNX export (or a
torch-free encoder) and NumPy heads.
"""

from __future__ import annotations

from shelver.service.app import create_app
from shelver.service.settings import Settings, get_settings

__all__ = ["Settings", "create_app", "get_settings"]
