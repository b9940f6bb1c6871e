"""Cold start lever: LLM-written products per leaf as extra prototypes for the embedding labeler.

The zero-shot labeler knows each leaf only by its name ("pickled goods olives (pantry)"). Here a
local LLM lists ~10 products sold under each leaf, from the name alone (no data is shown to it),
and the labeler is scored on ``valid`` with each way of using them:
  name + b x mean(products)   the leaf vector moved toward the mean of its products' embeddings
  max(name, products)         a text's best similarity to the name or any one product
  description                 the leaf embedded as "leaf (parent): product, product, ..."
and under the refine + kNN smoothing recipe of ``select.smooth`` (bootstrap.md, "Levers").
Scores: L1 as the category sum of the labeler's distribution and as the arg-max leaf's category,
and L2, on ``valid`` only (choices are made there; ``test`` is not touched).

The LLM's replies are stored in the results JSON and reused by later runs (``--llm`` regenerates).

    python benchmarks/llm_prototypes.py [--dataset grocery] [--llm qwen2.5-coder-1.5b] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from _results import write_results
from bootstrap import CACHE, DATA, EmbeddingTable, splits, use_table

from shelver.labeling import PathIndex
from shelver.labeling.shortlist import describe
from shelver.labeling.smoothing import refine_leaf_vectors, shortlist_softmax
from shelver.synthesis import parse_lines
from shelver.taxonomy import Taxonomy

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEM = "You know what products a store sells in each aisle."
USER = """Store section: {leaf} (department: {parent})
List 10 different specific products sold in this section, 1 to 4 words each, lower case, no brand names.
One product per line, no numbering or explanations."""
TEMPERATURE, SHORTLIST, BETA, NEIGHBOURS = 0.05, 10, 3.0, 30  # the labeler's and select.smooth's


def ask_llm(taxonomy: Taxonomy, model: str, threads: int) -> dict[str, list[str]]:
    """Products per leaf, one call each; a reply listing them on one line is split at commas."""
    from shelver.labeling.backends import make_backend
    from shelver.labeling.backends.base import Request

    backend, out, started = make_backend("llamacpp", model, {"n_threads": threads}), {}, time.time()
    try:
        for i, path in enumerate(taxonomy.paths):
            user = USER.format(leaf=path[-1], parent=path[0])
            messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": user})
            reply = backend.generate(
                Request(messages, query=path[-1], max_tokens=100, temperature=0.3, seed=0)
            )
            out[" > ".join(path)] = parse_lines(reply.text)[:10]
            print(f"{i + 1}/{len(taxonomy.paths)} {time.time() - started:.0f}s {path}", file=sys.stderr)
    finally:
        backend.close()
    return out


def products(replies: dict[str, list[str]], taxonomy: Taxonomy) -> list[list[str]]:
    split = (
        [w.strip() for line in replies.get(" > ".join(p), []) for w in line.split(",")]
        for p in taxonomy.paths
    )
    return [list(dict.fromkeys(w for w in words if w)) for words in split]


class Scorer:
    """The labeler's valid-split accuracy for a matrix of leaf vectors (rows unit-normalised)."""

    def __init__(self, taxonomy: Taxonomy, log: np.ndarray, valid: np.ndarray, truth: np.ndarray) -> None:
        self.log, self.valid, self.truth = log, valid, truth
        self.category = taxonomy.leaf_category_array

    def __call__(self, P: np.ndarray) -> dict[str, float]:
        sums = np.zeros((len(P), self.category.max() + 1))
        np.add.at(sums.T, self.category, P.T)
        return {
            "l1_sum": float((sums.argmax(1) == self.category[self.truth]).mean()),
            "l1_argmax": float((self.category[P.argmax(1)] == self.category[self.truth]).mean()),
            "l2": float((P.argmax(1) == self.truth).mean()),
        }

    def zero_shot(self, sims: np.ndarray) -> dict[str, float]:
        return self(shortlist_softmax(sims, SHORTLIST, TEMPERATURE))

    def smoothed(self, leaves: np.ndarray) -> dict[str, float]:
        """refine the leaves on the log, relabel it, then each valid text's 30 nearest log rows."""
        first = shortlist_softmax(self.log @ leaves.T, SHORTLIST, TEMPERATURE)
        refined = refine_leaf_vectors(leaves, self.log, first.argmax(1), BETA)
        labels = shortlist_softmax(self.log @ refined.T, SHORTLIST, TEMPERATURE)
        return self(_neighbour_mean(self.valid, self.log, labels, NEIGHBOURS))


def _neighbour_mean(queries: np.ndarray, rows: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), values.shape[1]), np.float32)
    for s in range(0, len(queries), 1024):
        near = np.argpartition(-(queries[s : s + 1024] @ rows.T), k - 1, axis=1)[:, :k]
        out[s : s + 1024] = values[near].mean(1)
    return out


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def conditions(taxonomy: Taxonomy, found: list[list[str]], scorer: Scorer) -> dict[str, dict[str, float]]:
    index = PathIndex(taxonomy, "minilm")
    names = _unit(index.vectors)
    embed = lambda texts: _unit(index.encoder.encode(list(texts)))  # noqa: E731
    each = [embed(p) if p else np.zeros((0, names.shape[1]), np.float32) for p in found]
    mean = np.stack([e.mean(0) if len(e) else np.zeros(names.shape[1], np.float32) for e in each])
    best = scorer.valid @ names.T
    for j, e in enumerate(each):
        best[:, j] = np.maximum(best[:, j], (scorer.valid @ e.T).max(1)) if len(e) else best[:, j]
    pairs = zip(taxonomy.paths, found, strict=True)
    text = {" > ".join(p): describe(p) + ": " + ", ".join(f) for p, f in pairs if f}
    described = _unit(PathIndex(taxonomy, "minilm", text).vectors)
    rows = {"zero-shot (names)": scorer.zero_shot(scorer.valid @ names.T)}
    for b in (0.5, 1.0, 2.0):
        rows[f"name + {b:g} x mean(products)"] = scorer.zero_shot(scorer.valid @ _unit(names + b * mean).T)
    rows["max(name, products)"] = scorer.zero_shot(best)
    rows["description 'leaf (parent): products'"] = scorer.zero_shot(scorer.valid @ described.T)
    rows["refine + smooth, names"] = scorer.smoothed(names)
    rows["refine + smooth, name + 1 x mean(products)"] = scorer.smoothed(_unit(names + mean))
    rows["refine + smooth, description"] = scorer.smoothed(described)
    return rows


def markdown(r: dict) -> str:
    lines = [
        "# LLM-written products as leaf prototypes (cold start)",
        "",
        f"`{r['command']}`",
        "",
        f"{r['dataset']}, embedding labeler (MiniLM, shortlist {SHORTLIST}, T {TEMPERATURE}), valid split;",
        f"{r['llm']}: {r['leaves_with_products']} of {r['leaves']} leaves got products, "
        f"{r['products']} in all. The log for refine + smooth is train's `text` column.",
        "",
        "| labeler | valid L1 (category sum) | valid L1 (arg-max leaf) | valid L2 |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {k} | {v['l1_sum']:.3f} | {v['l1_argmax']:.3f} | {v['l2']:.3f} |" for k, v in r["rows"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="grocery")
    parser.add_argument("--llm", default=None, help="regenerate the replies with this GGUF model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="llm_prototypes")
    args = parser.parse_args()
    taxonomy = Taxonomy.load(DATA / args.dataset / "taxonomy.json")
    saved = RESULTS / f"{args.out}.json"
    if args.llm:
        llm, replies = args.llm, ask_llm(taxonomy, args.llm, args.threads)
    else:
        kept = json.loads(saved.read_text())
        llm, replies = kept["llm"], kept["replies"]
    table = EmbeddingTable(CACHE / f"{args.dataset}-minilm")
    use_table(table)
    parts = splits(args.dataset)
    encoder = PathIndex(taxonomy, "minilm").encoder
    log, valid = (_unit(encoder.encode(parts[k]["text"].tolist())) for k in ("train", "valid"))
    truth = np.array(
        [
            taxonomy.leaf_index[(c, s)]
            for c, s in zip(parts["valid"].category, parts["valid"].subcategory, strict=True)
        ]
    )
    found = products(replies, taxonomy)
    results = {
        "command": "python benchmarks/llm_prototypes.py " + shlex.join(sys.argv[1:]),
        "dataset": args.dataset,
        "llm": llm,
        "leaves": len(taxonomy.paths),
        "leaves_with_products": sum(bool(f) for f in found),
        "products": sum(len(f) for f in found),
        "rows": conditions(taxonomy, found, Scorer(taxonomy, log, valid, truth)),
        "replies": replies,
    }
    table.save()
    write_results(args.out, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
