"""An OpenAI-compatible llama.cpp server for one GGUF model, until SIGTERM/SIGINT.

``python -m shelver.labeling.server --model smollm2 [--port 0]`` prints
``listening http://127.0.0.1:PORT`` once the model is loaded (port 0 picks a free one), then
serves ``/v1/chat/completions`` (with ``response_format`` JSON schemas and ``grammar``) and
``/v1/models``. ``--log-file PATH`` appends llama.cpp's own log there instead of stderr. The test
suite starts it as a subprocess and stops it by its pid.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import nullcontext
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="GGUF path or built-in name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--log-file", type=Path, help="llama.cpp's log goes here (appended), not stderr")
    args = parser.parse_args(argv)
    from shelver.labeling.backends.llamacpp import native_log_to

    # the engine stops when serve() returns, inside the block: its last lines go to the same place
    with native_log_to(args.log_file) if args.log_file else nullcontext():
        serve(args)
    return 0


def serve(args: argparse.Namespace) -> None:
    from shelver.labeling.backends.llamacpp import start_engine

    engine = start_engine(args.model, args.n_ctx, args.threads, args.parallel, port=args.port, host=args.host)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening {engine.listening_address}", flush=True)
    stop.wait()


if __name__ == "__main__":
    sys.exit(main())
