"""Issue 20: micro-batching. Concurrent requests share model calls, and each still gets exactly
the answer a single-query call gives; a request that finds the model idle never waits."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil

import httpx
import pytest
from conftest import COLOURS, WORDS, ServerProcess
from fastapi.testclient import TestClient

from shelver.model_dir import load_model
from shelver.service import Settings, create_app
from shelver.service.batcher import INVARIANT_GAP, MicroBatcher, batch_gap
from shelver.service.slot import ModelSlot, load_served


def _queries(n: int) -> list[str]:
    words = [w for ws in WORDS.values() for w in ws]
    return [f"{COLOURS[i % len(COLOURS)]} {words[i * 7 % len(words)]} {i}" for i in range(n)]


async def _post_all(url: str, queries: list[str], connections: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as http:
        gate = asyncio.Semaphore(connections)

        async def post(query: str) -> httpx.Response:
            async with gate:
                return await http.post("/v1/classify", json={"query": query})

        return await asyncio.gather(*(post(q) for q in queries))


def test_thousands_of_concurrent_queries_get_their_single_query_answers(hashing_model_dir):
    queries = _queries(3000)
    local = load_model(hashing_model_dir, encoder="serving")
    expected = [local.classify([q])[0].to_dict() for q in queries]
    # inline off: calls go to the classify threads, so requests queue while one runs
    env = {"SHELVER_INLINE_MS": "0", "SHELVER_CACHE_SIZE": "0", "SHELVER_MICROBATCH_WINDOW_MS": "2"}
    server = ServerProcess(hashing_model_dir, env=env).wait_ready()
    try:
        responses = asyncio.run(_post_all(server.url, queries, connections=32))
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert [r.status_code for r in responses] == [200] * len(queries)
    answers = [r.json() for r in responses]
    assert [_without_confidence(a) for a in answers] == [_without_confidence(e) for e in expected]
    # float32 matrix products round a row differently alone than in a batch (BLAS gemv vs gemm),
    # so a confidence may differ in its 6th decimal, never more: the library itself does the same
    pairs = zip(answers, expected, strict=True)
    gaps = [abs(x - y) for a, e in pairs for x, y in zip(a["confidence"], e["confidence"], strict=True)]
    assert max(gaps) <= 1.01e-6, max(gaps)
    calls = float(re.search(r"^shelver_model_call_queries_count (\S+)", metrics, re.M).group(1))
    batched = float(re.search(r"^shelver_model_call_queries_sum (\S+)", metrics, re.M).group(1))
    assert batched == len(queries) and calls < len(queries), (calls, batched)  # calls were shared


def _model_calls(settings: Settings, served, requests: int = 8) -> list[int]:
    """The sizes of the model calls that ``requests`` concurrent one-query requests make."""
    slot, sizes, original = ModelSlot(settings), [], served.model.classify
    served.model.classify = lambda texts: (sizes.append(len(texts)), original(texts))[1]

    async def burst() -> None:
        await asyncio.gather(*(slot.classify(served, [f"red boots {i}"]) for i in range(requests)))

    try:
        asyncio.run(burst())
    finally:
        served.model.classify = original
        slot.close()
    return sizes


def test_a_model_whose_answers_a_batch_changes_is_not_batched(
    hashing_model_dir, onnx_model_dir, dynamic_model_dir
):
    hashing, int8 = load_served(hashing_model_dir), load_served(onnx_model_dir)
    assert hashing.info["batch_invariant"] and hashing.batch_gap <= INVARIANT_GAP
    # the export scales int8 activations per token (shelver.quantize): a batch moves no answer
    assert int8.info["batch_invariant"] and int8.batch_gap <= INVARIANT_GAP
    threads = {"inline_ms": 0, "cache_size": 0, "concurrency": 1}  # one call at a time, on the pool
    assert _model_calls(Settings(model=hashing_model_dir, **threads), hashing) == [1, 7]
    assert _model_calls(Settings(model=onnx_model_dir, **threads), int8) == [1, 7]

    # onnxruntime's dynamic int8 scales activations per call: a neighbour moves a query's answer
    moved = load_served(dynamic_model_dir)
    assert not moved.info["batch_invariant"] and moved.batch_gap > 1e-3
    assert _model_calls(Settings(model=dynamic_model_dir, **threads), moved) == [1] * 8
    forced = Settings(model=dynamic_model_dir, microbatch_any_model=True, **threads)
    assert _model_calls(forced, moved) == [1, 7]


@pytest.fixture(scope="module")
def dynamic_model_dir(onnx_model_dir, tmp_path_factory, tiny_frames):
    """The ONNX test model exported again with onnxruntime's per-call dynamic int8 instead."""
    from shelver.export import export_onnx

    root = tmp_path_factory.mktemp("dynamic") / "model"
    shutil.copytree(onnx_model_dir, root)
    export_onnx(root, tiny_frames["valid"]["text"].tolist(), int8="dynamic", progress=False)
    return root


class _Moving:
    """A model whose confidences shrink by 1% whenever it classifies more than one text."""

    def __init__(self, model) -> None:
        self.model, self.taxonomy_ = model, model.taxonomy_

    def classify(self, texts):
        shrink = 0.99 if len(texts) > 1 else 1.0
        answers = self.model.classify(texts)
        return [dataclasses.replace(a, confidence=tuple(c * shrink for c in a.confidence)) for a in answers]


def test_the_batch_gap_finds_a_model_a_batch_moves(hashing_model_dir):
    model = load_model(hashing_model_dir)
    assert batch_gap(model) <= INVARIANT_GAP < 1e-3 < batch_gap(_Moving(model))


def _without_confidence(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "confidence"}


# ---- the batcher itself, on a real event loop, with a model stand-in that records its calls --------
class Model:
    """Answers each text with its upper case; the first call can be held until released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, served: object, texts: list[str]) -> list[dict]:
        self.calls.append(list(texts))
        if self.gate is not None and len(self.calls) == 1:
            await self.gate.wait()
        return [{"text": t, "served": served, "answer": t.upper()} for t in texts]


async def _started(model: Model, calls: int) -> None:
    while len(model.calls) < calls:
        await asyncio.sleep(0)


def test_an_idle_batcher_runs_the_first_request_at_once():
    async def scenario() -> list[dict]:
        model = Model()
        batcher = MicroBatcher(model, window=60.0, max_queries=64, slots=2)
        return await asyncio.wait_for(batcher.classify("m", ["boots"]), 5)  # never the 60 s window

    assert asyncio.run(scenario()) == [{"text": "boots", "served": "m", "answer": "BOOTS"}]


def test_requests_queued_behind_a_running_call_go_together_in_order():
    async def scenario() -> tuple[list[list[str]], list[list[dict]]]:
        model = Model()
        model.gate = asyncio.Event()
        batcher = MicroBatcher(model, window=0.0, max_queries=64, slots=1)
        first = asyncio.ensure_future(batcher.classify("m", ["a"]))
        await _started(model, 1)
        rest = [asyncio.ensure_future(batcher.classify("m", texts)) for texts in (["b", "c"], ["d"], ["b"])]
        await asyncio.sleep(0)
        model.gate.set()
        return model.calls, [a["answer"] for a in await first], [await r for r in rest]

    calls, first, rest = asyncio.run(scenario())
    assert calls == [["a"], ["b", "c", "d"]]  # the queue drained in one call, "b" classified once
    assert first == ["A"]
    assert [[a["answer"] for a in answers] for answers in rest] == [["B", "C"], ["D"], ["B"]]


def test_a_request_beside_a_running_call_waits_the_window_for_company():
    async def scenario() -> list[list[str]]:
        model = Model()
        model.gate = asyncio.Event()
        batcher = MicroBatcher(model, window=0.2, max_queries=64, slots=2)
        held = asyncio.ensure_future(batcher.classify("m", ["a"]))
        await _started(model, 1)
        both = [asyncio.ensure_future(batcher.classify("m", [t])) for t in ("b", "c")]
        await asyncio.wait_for(asyncio.gather(*both), 5)  # a free slot: b and c go after the window
        model.gate.set()
        await held
        return model.calls

    assert asyncio.run(scenario()) == [["a"], ["b", "c"]]


def test_batches_respect_the_limit_and_never_mix_models():
    async def scenario() -> list[list[str]]:
        model = Model()
        model.gate = asyncio.Event()
        batcher = MicroBatcher(model, window=0.0, max_queries=3, slots=1)
        first = asyncio.ensure_future(batcher.classify("old", ["a"]))
        await _started(model, 1)
        queued = [("old", ["b", "c"]), ("new", ["d"]), ("old", ["e", "f"]), ("old", ["g", "h", "i", "j"])]
        rest = [asyncio.ensure_future(batcher.classify(m, t)) for m, t in queued]
        await asyncio.sleep(0)
        model.gate.set()
        answers = await asyncio.gather(first, *rest)
        assert [a["served"] for a in answers[2]] == ["new"]
        return model.calls

    # b,c fit (3 max); d is another model; e,f would overflow; the big request runs alone
    assert asyncio.run(scenario()) == [["a"], ["b", "c"], ["d"], ["e", "f"], ["g", "h", "i", "j"]]


def test_a_timed_out_request_is_dropped_and_the_others_answered():
    async def scenario() -> tuple[list[list[str]], list[str]]:
        model = Model()
        model.gate = asyncio.Event()
        batcher = MicroBatcher(model, window=0.0, max_queries=64, slots=1)
        first = asyncio.ensure_future(batcher.classify("m", ["a"]))
        await _started(model, 1)
        with pytest.raises(TimeoutError):
            await batcher.classify("m", ["late"], timeout=0.01)
        patient = asyncio.ensure_future(batcher.classify("m", ["b"]))
        await asyncio.sleep(0)
        model.gate.set()
        await first
        return model.calls, [a["answer"] for a in await patient]

    calls, answers = asyncio.run(scenario())
    assert calls == [["a"], ["b"]] and answers == ["B"]


def test_a_failing_call_fails_every_request_of_its_batch_and_the_next_batch_runs():
    async def scenario() -> list[str]:
        calls: list[list[str]] = []

        async def run(served: object, texts: list[str]) -> list[dict]:
            calls.append(texts)
            if "boom" in texts:
                raise RuntimeError("model failed")
            return [{"answer": t} for t in texts]

        batcher = MicroBatcher(run, window=0.0, max_queries=64, slots=1)
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.classify("m", ["boom"])
        return [a["answer"] for a in await batcher.classify("m", ["ok"])]

    assert asyncio.run(scenario()) == ["ok"]


def test_the_log_says_why_a_model_is_not_batched(dynamic_model_dir, onnx_model_dir, caplog):
    def warnings(model) -> list[str]:
        caplog.clear()
        app = create_app(Settings(model=model))
        with caplog.at_level(logging.WARNING, logger="shelver.service"), TestClient(app):
            pass
        return [r.getMessage() for r in caplog.records if "micro-batching is off" in r.getMessage()]

    said = warnings(dynamic_model_dir)
    assert len(said) == 1 and "shelver export --model DIR" in said[0]
    assert warnings(onnx_model_dir) == []  # the per-token export is batched: nothing to say
