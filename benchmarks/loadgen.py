"""HTTP load generator: open loop (N requests per second for S seconds, latency from the
schedule) or closed loop (``--closed``: C connections, each sending its next request as soon as
the last is answered, as ``wrk`` does: the server's peak requests per second).

Runs in its own process (``python benchmarks/loadgen.py URL --rate 500 --seconds 60 --bodies F``)
so the server is measured from outside. The closed loop runs ``wrk`` (``--generator wrk``; the
default where it is installed: ``apt-get install wrk``), which spends a fraction of this script's
CPU per request: on a 2-core box the generator shares the cores with the server. The open loop
is this script's (wrk has none): each request is sent at its scheduled time on a keep-alive
connection from a pool; latency is measured from the *scheduled* time, so a stalled server cannot
hide queueing (no coordinated omission). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


async def _request(pool: asyncio.Queue, payload: bytes) -> int:
    reader, writer = await pool.get()
    try:
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return status
    finally:
        pool.put_nowait((reader, writer))


def _payloads(url: str, bodies: list[bytes]) -> tuple[str, int, list[bytes]]:
    """The host, the port, and each body as a complete HTTP/1.1 POST to the URL's path."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/v1/classify"
    template = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n"
    )
    return host, port, [(template % len(b)).encode() + b for b in bodies]


async def run(url: str, bodies: list[bytes], rate: float, seconds: float, connections: int) -> dict:
    host, port, payloads = _payloads(url, bodies)
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    n = int(rate * seconds)
    latencies = np.zeros(n)
    statuses = np.zeros(n, dtype=np.int32)
    start = time.perf_counter() + 0.1

    async def one(i: int, scheduled: float) -> None:
        try:
            statuses[i] = await _request(pool, payloads[i % len(payloads)])
        except Exception:
            statuses[i] = -1
        latencies[i] = time.perf_counter() - scheduled

    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    ok = latencies[statuses == 200] * 1e3
    return {
        "requests": n,
        "ok": int((statuses == 200).sum()),
        "errors": int((statuses != 200).sum()),
        "achieved_rate": round(n / elapsed, 1),
        "p50_ms": round(float(np.percentile(ok, 50)), 3),
        "p90_ms": round(float(np.percentile(ok, 90)), 3),
        "p99_ms": round(float(np.percentile(ok, 99)), 3),
        "max_ms": round(float(ok.max()), 3),
        "p99_ms_by_second": _by_second(latencies * 1e3, statuses == 200, rate),
    }


async def saturate(url: str, bodies: list[bytes], seconds: float, connections: int) -> dict:
    """Closed loop: ``connections`` keep-alive connections, each busy for ``seconds``."""
    host, port, payloads = _payloads(url, bodies)
    latencies: list[float] = []
    statuses: list[int] = []
    deadline = time.perf_counter() + seconds

    async def connection(offset: int) -> None:
        pool: asyncio.Queue = asyncio.Queue()
        pool.put_nowait(await asyncio.open_connection(host, port))
        i = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                statuses.append(await _request(pool, payloads[i % len(payloads)]))
            except Exception:
                statuses.append(-1)
            latencies.append(time.perf_counter() - started)
            i += connections

    started = time.perf_counter()
    await asyncio.gather(*(connection(c) for c in range(connections)))
    elapsed = time.perf_counter() - started
    ok = np.asarray(latencies)[np.asarray(statuses) == 200] * 1e3
    return {
        "connections": connections,
        "requests": len(statuses),
        "errors": int(sum(s != 200 for s in statuses)),
        "requests_per_s": round(len(ok) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ok, 50)), 3),
        "p99_ms": round(float(np.percentile(ok, 99)), 3),
    }


def wrk_saturate(url: str, bodies: list[bytes], seconds: float, connections: int) -> dict:
    """The closed loop run by wrk (one thread, ``connections`` connections, the bodies in turn)."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "bodies.lua"
        script.write_text(_wrk_script(bodies))
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(round(seconds), 1)}s", "--latency"]
        run = subprocess.run([*command, "-s", str(script), url], capture_output=True, text=True, check=True)
    return {"connections": connections, **_wrk_figures(run.stdout)}


def _wrk_script(bodies: list[bytes]) -> str:
    quoted = ",\n".join('"' + b.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for b in bodies)
    return f"""bodies = {{
{quoted}
}}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_figures(out: str) -> dict:
    """requests, errors, requests/s and p50 / p99 (ms) from wrk's report."""

    def ms(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()  # type: ignore[union-attr]
        return round(float(value) * _UNITS[unit], 3)

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(failed.group(1)) if failed else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {
        "requests": requests,
        "errors": errors,
        "requests_per_s": rate,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
    }


def _by_second(latencies_ms: np.ndarray, ok: np.ndarray, rate: float) -> list[float]:
    """p99 of the requests scheduled in each second: a stall shows as a few bad seconds."""
    second = (np.arange(len(latencies_ms)) / rate).astype(int)
    return [round(float(np.percentile(latencies_ms[(second == s) & ok], 99)), 1) for s in np.unique(second)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--bodies", required=True, help="JSON list of request bodies (objects)")
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--closed", action="store_true", help="closed loop: peak requests/s, no --rate")
    parser.add_argument(
        "--generator",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="the closed loop's generator (default: wrk where installed)",
    )
    args = parser.parse_args()
    with open(args.bodies) as file:
        bodies = [json.dumps(b).encode() for b in json.load(file)]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    gc.disable()  # the generator's own collection pauses would be counted as server latency
    if args.closed and args.generator == "wrk":
        result = wrk_saturate(args.url, bodies, args.seconds, args.connections)
    elif args.closed:
        result = asyncio.run(saturate(args.url, bodies, args.seconds, args.connections))
    else:
        result = asyncio.run(run(args.url, bodies, args.rate, args.seconds, args.connections))
    print(json.dumps({"generator": args.generator if args.closed else "python", **result}))


if __name__ == "__main__":
    main()
