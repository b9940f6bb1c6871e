"""Encoders turn texts into L2-normalised float32 vectors, behind one protocol.

``make_encoder("minilm")`` gives the default sentence-transformers model, offline;
``make_encoder("hashing")`` a torch-free deterministic encoder for fast tests;
``make_encoder("onnx:DIR")`` the exported encoder of ``shelver export``, run by onnxruntime;
``make_encoder("static:DIR")`` token embeddings distilled by ``shelver distill`` (the fastest on CPU);
any path to a sentence-transformers directory works too. ``CachedEncoder`` computes each text once.
"""

from __future__ import annotations

from shelver.encoders.base import CachedEncoder, Encoder, make_encoder, resolve_model_path
from shelver.encoders.hashing import HashingEncoder

__all__ = ["CachedEncoder", "Encoder", "HashingEncoder", "make_encoder", "resolve_model_path"]
