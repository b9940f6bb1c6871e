"""Micro-batching in the service (issue 20), measured with one model on one machine in one run:

- in-process batch-1 capacity: 1 / p50 of ``classify([query])`` on one onnxruntime thread, and
  queries/s at batch 8 and 64 on that thread (the headroom batching can use);
- batched vs single answers on the same texts (paths, decisions, largest confidence gap);
- one worker's peak requests/s, micro-batching on and off (closed loop: C connections, each
  sending its next request when the last is answered, as ``wrk`` does); "on" batches even a
  model whose answers a batch moves (``SHELVER_MICROBATCH_ANY_MODEL=1``; int8 encoders), which
  the service's defaults would not;
- p50 / p99 at R requests/s for S s on one worker (open loop, after a warm-up), on and off.

Usage (from the repo root, on the demo model: MiniLM ONNX int8 + lexical, trained and exported
as the README shows; on a quiet machine: nothing else running):

    .venv/bin/python benchmarks/service_batching.py --model runs/fashion/model \\
        --data examples/fashion/test.csv

Writes ``benchmarks/results/service_batching.{json,md}``. ``--smoke`` runs every step for a few
seconds to prove the script works, into ``service_batching-smoke.*`` (not results to quote).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _results import write_results
from serving import ENV, ROOT, _get, http_load, machine_probe, start_server

from shelver.model_dir import load_model

# on: the defaults, and batching even a model whose answers a batch moves (an int8 encoder's):
# the agreement row says what that costs; the service's default would not batch such a model
ON = {"SHELVER_MICROBATCH_ANY_MODEL": "1"}
OFF = {"SHELVER_MICROBATCH_QUERIES": "1"}


def machine() -> dict:
    """The CPU, and whether it has AVX-512 VNNI (int8 dot products: the int8 encoder's speed)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "")
    return {
        "platform": platform.platform(),
        "cpu": model or platform.processor(),
        "cores": len([line for line in cpuinfo.splitlines() if line.startswith("processor")]),
        "avx512_vnni": "avx512_vnni" in cpuinfo,
        "python": platform.python_version(),
        "probe": machine_probe(),
    }


# ---- in process ---------------------------------------------------------------------------
def in_process(model_dir: Path, texts: list[str], n: int) -> dict:
    """Batch-1 latency on one thread (capacity = 1 / p50), and one thread's q/s at batch 8 and 64."""
    model = load_model(model_dir, encoder="serving", threads=1)
    for text in texts[:100]:
        model.classify([text])
    seconds = _one_at_a_time(model, (texts * (n // len(texts) + 1))[:n])
    p50 = float(np.median(seconds))
    out = {
        "queries": n,
        "p50_ms": round(p50 * 1e3, 4),
        "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 4),
    }
    out["capacity_per_s"] = round(1 / p50, 1)
    out |= {f"batch_{b}_q_per_s": _batch_rate(model, texts[:n], b) for b in (8, 64)}
    # calls 4 ms apart, as under moderate load: a MiniLM call reads its ~10 MB of int8 weights,
    # which other work may have moved out of cache meanwhile
    out["paused_p50_ms"] = round(float(np.median(_one_at_a_time(model, texts[:300], 0.004))) * 1e3, 4)
    return out


def _one_at_a_time(model: object, texts: list[str], pause: float = 0.0) -> list[float]:
    """Seconds of ``classify([text])`` for each text, ``pause`` seconds apart."""
    seconds = []
    for text in texts:
        if pause:
            time.sleep(pause)
        started = time.perf_counter()
        model.classify([text])  # type: ignore[attr-defined]
        seconds.append(time.perf_counter() - started)
    return seconds


def _batch_rate(model: object, texts: list[str], batch: int) -> float:
    chunks = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    started = time.perf_counter()
    for chunk in chunks:
        model.classify(chunk)  # type: ignore[attr-defined]
    return round(len(chunks) * batch / (time.perf_counter() - started), 1)


def agreement(model_dir: Path, texts: list[str], batch: int) -> dict:
    """What micro-batching changes in the answers: batches of ``batch`` vs one query at a time."""
    model = load_model(model_dir, encoder="serving", threads=1)
    single = [model.classify([t])[0].to_dict() for t in texts]
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    pairs = list(zip(single, [p.to_dict() for c in chunks for p in model.classify(c)], strict=True))
    gaps = [abs(x - y) for a, b in pairs for x, y in zip(a["confidence"], b["confidence"], strict=True)]

    def share(key: str | None) -> float:
        return round(float(np.mean([(a == b) if key is None else (a[key] == b[key]) for a, b in pairs])), 4)

    return {
        "n": len(texts),
        "batch": batch,
        "same_path": share("path"),
        "same_decision": share("decision"),
        "identical": share(None),
        "max_confidence_gap": round(max(gaps), 6),
    }


# ---- over HTTP ----------------------------------------------------------------------------
def peak(model_dir: Path, bodies: Path, seconds: float, connections: int, env: dict[str, str]) -> dict:
    """One worker's peak requests/s (closed loop), after a warm-up of a third as long."""
    process, port, _, _ = start_server(model_dir, 1, env)
    try:
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "loadgen.py"),
            f"http://127.0.0.1:{port}/v1/classify",
        ]
        command += ["--bodies", str(bodies), "--closed", "--connections", str(connections)]
        _closed(command, max(seconds / 3, 1))
        result = _closed(command, seconds)
        result["mean_queries_per_model_call"] = _mean_call(_get(port, "/metrics"))
        result["batch_invariant"] = json.loads(_get(port, "/v1/model")).get("batch_invariant")
    finally:
        process.terminate()
        process.wait()
    return {"seconds": seconds, **result}


def _closed(command: list[str], seconds: float) -> dict:
    run = subprocess.run(
        [*command, "--seconds", str(seconds)], capture_output=True, text=True, check=True, env=ENV
    )
    return json.loads(run.stdout)


def _mean_call(metrics: str) -> float | None:
    values = {}
    for line in metrics.splitlines():
        for name in ("sum", "count"):
            if line.startswith(f"shelver_model_call_queries_{name} "):
                values[name] = float(line.split()[-1])
    return round(values["sum"] / values["count"], 2) if values.get("count") else None


# ---- the run ------------------------------------------------------------------------------
def first_words(text: str, n: int = 3) -> str:
    """A query form of a title: its first ``n`` words (real queries are short)."""
    return " ".join(text.split()[:n])


def run(args: argparse.Namespace) -> dict:
    texts = list(dict.fromkeys(pd.read_csv(args.data, dtype=str, keep_default_na=False)[args.text_column]))
    if args.query_forms:  # short, query-like traffic: the first three words, distinct
        texts = list(dict.fromkeys(first_words(t) for t in texts))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump([{"query": t} for t in texts], file)
    bodies = Path(file.name)
    results: dict = {"command": " ".join(sys.argv), "note": args.note, "machine": machine()}
    results["in_process"] = in_process(args.model, texts, args.queries)
    results["agreement"] = agreement(args.model, texts[: args.queries], args.agreement_batch)
    for name, env in (("off", OFF), ("on", ON)):
        results[f"peak_{name}"] = [
            peak(args.model, bodies, args.peak_seconds, c, env) for c in _counts(args.connections)
        ]
    for name, env in (("off", OFF), ("on", ON)):
        results[f"rate_{name}"] = http_load(args.model, texts, args.rate, args.rate_seconds, env=env)
    results["machine"]["probe_at_end"] = machine_probe()
    return results


def markdown(r: dict) -> str:
    capacity, peaks_on, peaks_off = r["in_process"]["capacity_per_s"], r["peak_on"], r["peak_off"]
    best = max(peaks_on, key=lambda x: x["requests_per_s"])
    on, off, agree, local = r["rate_on"], r["rate_off"], r["agreement"], r["in_process"]
    rows = [
        (
            "in-process batch 1 p50 / p99 (one thread)",
            f"{local['p50_ms']:.3f} / {local['p99_ms']:.3f} ms",
            "",
        ),
        ("in-process batch-1 capacity (1 / p50)", f"{capacity:,.0f} q/s", ""),
        ("in-process batch 1 p50, calls 4 ms apart", _paused(local), ""),
        (
            "in-process batch 8 / 64, one thread",
            f"{local['batch_8_q_per_s']:,.0f} / {local['batch_64_q_per_s']:,.0f} q/s",
            "",
        ),
        *_peak_rows(peaks_off, peaks_on),
        (
            f"peak with micro-batching ({best['connections']} connections) ÷ batch-1 capacity",
            f"{best['requests_per_s'] / capacity:.2f}×",
            "≥ 1.5×",
        ),
        (
            f"p50 / p99 at {on['rate']:g} req/s for {on['seconds']:g} s, one worker, micro-batching on",
            _rate(on),
            "p99 ≤ 10 ms",
        ),
        ("… micro-batching off", _rate(off), ""),
        (
            f"answers at batch {agree['batch']} vs 1 (n={agree['n']}): same path / decision / all fields",
            _agree(agree),
            "",
        ),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    head = "| measure | result | goal |\n| --- | --- | --- |"
    return f"# Micro-batching in the service\n\n{_header(r)}\n\n{head}\n{table}\n"


def _paused(local: dict) -> str:
    return f"{local['paused_p50_ms']:.3f} ms" if "paused_p50_ms" in local else "not measured"


def _peak_rows(offs: list[dict], ons: list[dict]) -> list[tuple[str, str, str]]:
    rows = []
    for off, on in zip(offs, ons, strict=True):
        load = f"{off['connections']} connections ({off['generator']})"
        rows.append((f"one worker's peak, {load}, micro-batching off", _peak(off), ""))
        rows.append((f"… micro-batching on (model batch-invariant: {on['batch_invariant']})", _peak(on), ""))
    return rows


def _counts(connections: str) -> list[int]:
    return [int(c) for c in connections.split(",")]


def _peak(x: dict) -> str:
    calls = x["mean_queries_per_model_call"]
    per_call = f"; {calls} queries per model call" if calls else ""
    latency = f"p50 {x['p50_ms']:.2f}, p99 {x['p99_ms']:.2f} ms"
    return f"{x['requests_per_s']:,.0f} req/s ({latency}{per_call}; {x['errors']} errors)"


def _rate(x: dict) -> str:
    failures = f"{x['errors']} failed, {x['server_5xx']:g} 5xx of {x['requests']:,}"
    return f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f} ms ({failures})"


def _agree(x: dict) -> str:
    shares = f"{x['same_path']:.2%} / {x['same_decision']:.2%} / {x['identical']:.2%}"
    return f"{shares} (largest confidence gap {x['max_confidence_gap']:g})"


def _header(r: dict) -> str:
    m = r["machine"]
    vnni = "with" if m["avx512_vnni"] else "without"
    return (
        f"Command (from the repo root): `{r['command']}`\n\nMachine: {m['cpu']}, {m['cores']} cores, {vnni} "
        f"AVX-512 VNNI; {m['platform']}, Python {m['python']}. Speed probe (one thread) at start / end: "
        f"{m['probe']} / {m['probe_at_end']}.\n\n{r['note']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="CSV whose texts are the queries")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--queries", type=int, default=2000, help="in-process and agreement queries")
    parser.add_argument("--agreement-batch", type=int, default=16)
    parser.add_argument(
        "--connections", default="8,64", help="the closed loop's connections, one peak per count"
    )
    parser.add_argument("--peak-seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--rate-seconds", type=float, default=60)
    parser.add_argument("--query-forms", action="store_true", help="the first three words of each text")
    parser.add_argument("--out", default="service_batching")
    parser.add_argument("--note", default="")
    parser.add_argument("--smoke", action="store_true", help="a few seconds per step, to -smoke files")
    args = parser.parse_args()
    if args.smoke:
        args.queries, args.peak_seconds, args.rate_seconds, args.out = 300, 3, 3, f"{args.out}-smoke"
    results = run(args)
    write_results(args.out, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
