"""How good are shelver's labels of an unlabeled log? Zero-shot embedding vs a 1.5B LLM vs both.

For fashion and grocery, ``--rows`` test rows are sampled with a fixed seed; their texts become the
"log" and their labels are used only to score. Three labelers:
  embedding   MiniLM zero-shot: the nearest path description (the offline default)
  llm         Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) in-process through llama.cpp, choosing among
              the encoder's shortlist or none, constrained by a grammar
  both        the LLM and the embedding labeler voting; a label is accepted only when they agree
and, on a smaller slice, the same LLM without the grammar (plain JSON parsing), to show what
constrained decoding saves. Reported: accuracy (correct / all rows), coverage (rows given a path),
precision of accepted labels (correct / covered), L1 precision, shares of raw outputs rejected and
repaired, queries per second, shortlist recall.

    nice python benchmarks/labeling.py [--rows 300] [--llm-rows 300] [--plain-rows 40]
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shelver.labeling import LabelConfig, Labeler, LabelStore, PathIndex, VoterSpec
from shelver.taxonomy import Taxonomy, format_path
from shelver.text_keys import text_key

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
LLM = "qwen2.5-coder-1.5b"


def sample(dataset: str, rows: int, seed: int) -> tuple[Taxonomy, dict[str, str]]:
    """The taxonomy and ``{normalized query: true path}`` for ``rows`` sampled test rows."""
    data_dir = Path(ARGS.data) / dataset
    taxonomy = Taxonomy.load(data_dir / "taxonomy.json")
    frame = pd.read_csv(data_dir / "products.csv", keep_default_na=False, dtype=str)
    test = frame[frame["split"] == "test"].sample(rows, random_state=seed)
    truth = {}
    for text, category, sub in zip(test["text"], test["category"], test["subcategory"], strict=True):
        truth.setdefault(text_key(text), format_path((category, sub)))
    return taxonomy, truth


def run(
    taxonomy: Taxonomy, queries: list[str], voters: tuple[VoterSpec, ...], index: PathIndex, store_path: Path
) -> float:
    """Label ``queries`` into the store (resuming it if it exists); returns wall seconds."""
    config = LabelConfig(
        voters=voters, shortlist=ARGS.shortlist, concurrency=1, encoder="minilm", limit=len(queries)
    )
    labeler = Labeler(taxonomy, config, index=index)
    start = time.perf_counter()
    with LabelStore(store_path) as store:
        labeler.run(store, [(q, 1) for q in queries], progress=True)
    labeler.close()
    return time.perf_counter() - start


def calls(store_path: Path, backend: str) -> pd.DataFrame:
    """The store's calls of ``backend``, most frequent query first (log order for equal counts)."""
    with sqlite3.connect(store_path) as db:
        sql = "SELECT c.* FROM calls c JOIN queries q USING (query) WHERE backend = ? ORDER BY q.rank"
        return pd.read_sql(sql, db, params=(backend,))


def decisions(store_path: Path) -> pd.DataFrame:
    with sqlite3.connect(store_path) as db:
        return pd.read_sql("SELECT query, status, path, agreement FROM labels", db)


def score(paths: dict[str, str | None], truth: dict[str, str]) -> dict[str, float]:
    """Accuracy over all rows, coverage, precision of the accepted labels, L1 precision."""
    covered = [q for q in truth if paths.get(q)]
    correct = sum(paths[q] == truth[q] for q in covered)
    l1 = sum(paths[q].split(" > ")[0] == truth[q].split(" > ")[0] for q in covered)
    return {
        "rows": len(truth),
        "accuracy": correct / len(truth),
        "coverage": len(covered) / len(truth),
        "precision": correct / len(covered) if covered else 0.0,
        "l1_precision": l1 / len(covered) if covered else 0.0,
    }


def from_calls(frame: pd.DataFrame) -> dict[str, str | None]:
    return {
        q: (p if s in ("ok", "repaired") else None)
        for q, s, p in zip(frame["query"], frame["status"], frame["path"], strict=True)
    }


def output_shares(frame: pd.DataFrame) -> dict[str, float]:
    n = max(len(frame), 1)
    return {
        "rejected_share": float((frame["status"] == "rejected").sum() / n),
        "repaired_share": float((frame["status"] == "repaired").sum() / n),
        "none_share": float((frame["status"] == "none").sum() / n),
        "off_shortlist_share": float(frame["off_shortlist"].sum() / n),
    }


def shortlist_recall(index: PathIndex, truth: dict[str, str]) -> float:
    lists = index.shortlist(list(truth), ARGS.shortlist)
    return float(
        np.mean([truth[q] in {format_path(p) for p in s} for q, s in zip(truth, lists, strict=True)])
    )


def dataset_results(dataset: str, workdir: Path) -> dict:
    taxonomy, truth = sample(dataset, ARGS.rows, ARGS.seed)
    index = PathIndex(taxonomy, "minilm")
    queries = list(truth)
    out: dict = {
        "dataset": dataset,
        "rows": len(truth),
        "shortlist": ARGS.shortlist,
        "shortlist_recall": shortlist_recall(index, truth),
    }
    (workdir / f"{dataset}-emb.db").unlink(missing_ok=True)  # cheap: always measured afresh
    seconds = run(taxonomy, queries, (VoterSpec("embedding"),), index, workdir / f"{dataset}-emb.db")
    emb = calls(workdir / f"{dataset}-emb.db", "embedding")
    out["embedding"] = {**score(from_calls(emb), truth), **output_shares(emb), "qps": len(queries) / seconds}

    llm_queries = queries[: ARGS.llm_rows]
    llm_truth = {q: truth[q] for q in llm_queries}
    llm = VoterSpec("llamacpp", LLM, {"n_threads": ARGS.threads, "n_ctx": 2048})
    store = workdir / f"{dataset}-both.db"
    reused = len(calls(store, "llamacpp")) if store.exists() else 0
    run(taxonomy, llm_queries, (llm, VoterSpec("embedding")), index, store)
    llm_calls = calls(store, "llamacpp").head(len(llm_queries))
    emb_calls = calls(store, "embedding").head(len(llm_queries))
    out["llm"] = {
        **score(from_calls(llm_calls), llm_truth),
        **output_shares(llm_calls),
        "qps": len(llm_queries) / llm_calls["seconds"].sum(),
        "model": LLM,
        "grammar": True,
        "prompt_tokens_per_query": float(llm_calls["prompt_tokens"].mean()),
        "calls_reused_from_an_earlier_killed_run": reused,
    }
    out["embedding_on_llm_rows"] = score(from_calls(emb_calls), llm_truth)
    both = decisions(store)
    both = both[both["query"].isin(llm_truth)]
    agreed = {
        q: (p if s == "labeled" and a >= 1.0 else None)
        for q, s, p, a in zip(both["query"], both["status"], both["path"], both["agreement"], strict=True)
    }
    both_seconds = llm_calls["seconds"].sum() + emb_calls["seconds"].sum()
    out["both_agree"] = {**score(agreed, llm_truth), "qps": len(llm_queries) / both_seconds}

    plain_queries = queries[: ARGS.plain_rows]
    if plain_queries:
        plain = VoterSpec("llamacpp", LLM, {"n_threads": ARGS.threads, "n_ctx": 2048, "grammar": False})
        run(taxonomy, plain_queries, (plain,), index, workdir / f"{dataset}-plain.db")
        plain_calls = calls(workdir / f"{dataset}-plain.db", "llamacpp").head(len(plain_queries))
        out["llm_no_grammar"] = {
            **score(from_calls(plain_calls), {q: truth[q] for q in plain_queries}),
            **output_shares(plain_calls),
            "qps": len(plain_queries) / plain_calls["seconds"].sum(),
            "reasons": plain_calls["reason"].dropna().str.slice(0, 60).value_counts().head(5).to_dict(),
        }
    return out


def markdown(results: list[dict], command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        f"{ARGS.rows} test rows per dataset for the embedding labeler, the first "
        f"{ARGS.llm_rows} of them for the LLM and the vote, {ARGS.plain_rows} for the LLM without grammar; "
        f"shortlist of {ARGS.shortlist}. Accuracy = correct / all rows; precision = correct / labeled rows.",
        "",
        "| dataset | labeler | rows | accuracy | coverage | precision | L1 precision "
        "| rejected | repaired | q/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for key, name in (
            ("embedding", "embedding (MiniLM zero-shot)"),
            ("embedding_on_llm_rows", "embedding, LLM rows"),
            ("llm", f"{LLM} + grammar"),
            ("both_agree", "both, accepted if they agree"),
            ("llm_no_grammar", f"{LLM}, no grammar"),
        ):
            m = r.get(key)
            if m:
                lines.append(
                    f"| {r['dataset']} | {name} | {m['rows']} | {m['accuracy']:.3f} | {m['coverage']:.3f} | "
                    f"{m['precision']:.3f} | {m['l1_precision']:.3f} | {_pct(m, 'rejected_share')} | "
                    f"{_pct(m, 'repaired_share')} | {_num(m, 'qps')} |"
                )
    lines += [
        "",
        "Shortlist recall (true path among the candidates): "
        + ", ".join(f"{r['dataset']} {r['shortlist_recall']:.3f}" for r in results),
    ]
    return "\n".join(lines) + "\n"


def _pct(m: dict, key: str) -> str:
    return f"{m[key]:.1%}" if key in m else "—"


def _num(m: dict, key: str) -> str:
    return f"{m[key]:.2f}" if key in m else "—"


def main() -> None:
    command = "nice python benchmarks/labeling.py " + " ".join(sys.argv[1:])
    workdir = Path(ARGS.workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    results = [dataset_results(d, workdir) for d in ARGS.datasets]
    payload = {"command": command, "args": vars(ARGS), "machine": platform.platform(), "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "labeling.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(results, command)
    (RESULTS / "labeling.md").write_text("# Labeling benchmark\n\n" + table)
    print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion", "grocery"])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--llm-rows", type=int, default=300)
    parser.add_argument("--plain-rows", type=int, default=40)
    parser.add_argument("--shortlist", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        default="~/.cache/shelver/bench-labeling",
        help="label stores live here: a killed run resumes without repeating an LLM call",
    )
    ARGS = parser.parse_args()
    main()
