"""The durable label store: one SQLite file in WAL mode, ``synchronous=NORMAL``.

```
meta     taxonomy (JSON) and its hash, the resolved run configuration
queries  one row per normalized query: its count in the log and its rank (most frequent first)
calls    one row per finished backend call (query, voter, sample): raw reply, verdict, repairs,
         rejection reason or error, tokens, seconds, attempts. Written, one transaction each,
         the moment the call returns: a run killed at any instant (SIGKILL included) loses at
         most the calls in flight, and a re-run never pays for a stored call again.
labels   one row per query: the decision (path or none), confidence, agreement, source, backend,
         model, prompt version, raw output, status and error. Human labels (``labels import``)
         live here with source 'human' and are never overwritten by a machine decision.
```

What survives what: a commit is written to the WAL (the operating system holds it) before it
returns, so a killed process, SIGKILL included, loses nothing committed. ``synchronous=NORMAL``
skips the fsync of every commit (``FULL`` paid two per call) and syncs at checkpoints instead, so
a power loss or an operating-system crash can roll back the last commits: the store stays
consistent, and those calls are simply made again on the next run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shelver.errors import LabelStoreError
from shelver.labeling.votes import Decision, Vote
from shelver.taxonomy import Path_, Taxonomy, format_path, parse_path

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    query TEXT PRIMARY KEY, count INTEGER NOT NULL, rank INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS queries_rank ON queries(rank);
CREATE TABLE IF NOT EXISTS calls (
    query TEXT NOT NULL, voter TEXT NOT NULL, sample INTEGER NOT NULL,
    backend TEXT NOT NULL, model TEXT NOT NULL, prompt_version TEXT NOT NULL,
    status TEXT NOT NULL, path TEXT, score REAL, raw TEXT, repairs TEXT NOT NULL DEFAULT '[]',
    reason TEXT, off_shortlist INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    seconds REAL, attempts INTEGER NOT NULL DEFAULT 1, created TEXT NOT NULL,
    PRIMARY KEY (query, voter, sample));
CREATE TABLE IF NOT EXISTS labels (
    query TEXT PRIMARY KEY, status TEXT NOT NULL, path TEXT, confidence REAL, agreement REAL,
    source TEXT NOT NULL, backend TEXT, model TEXT, prompt_version TEXT, raw TEXT, error TEXT,
    votes TEXT NOT NULL DEFAULT '[]', voter_set TEXT, updated TEXT NOT NULL);
"""
FINAL_CALL = ("ok", "repaired", "none", "rejected")  # 'error' calls are retried on the next run


class LabelStore:
    """A label store at ``path``; created on first open. Safe to share between threads."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise LabelStoreError(
                f"label store {str(self.path)!r} does not exist; "
                "create it with 'shelver label ... --out STORE'"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: safe against a killed process, not against power loss (see above)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(SCHEMA)
        self._check_schema()

    # ---- meta ------------------------------------------------------------------------------
    def _check_schema(self) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise LabelStoreError(
                f"{self.path} has store schema {version}; this shelver reads {SCHEMA_VERSION}"
            )

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def bind_taxonomy(self, taxonomy: Taxonomy) -> None:
        """Remember the taxonomy; refuse a different one (labels are only valid against theirs)."""
        stored = self.get_meta("taxonomy_hash")
        if stored is None:
            self.set_meta("taxonomy", json.dumps(taxonomy.to_dict(), ensure_ascii=False))
            self.set_meta("taxonomy_hash", taxonomy.hash)
        elif stored != taxonomy.hash:
            raise LabelStoreError(
                f"{self.path} was labeled against a different taxonomy (hash {stored[:12]}, this one "
                f"{taxonomy.hash[:12]}); use a new --out store, or export with --taxonomy to keep the "
                "valid labels"
            )

    def taxonomy(self) -> Taxonomy:
        text = self.get_meta("taxonomy")
        if text is None:
            raise LabelStoreError(f"{self.path} has no taxonomy yet: label something into it first")
        doc = json.loads(text)
        return Taxonomy.from_tree(doc["tree"], doc["levels"], doc["name"], str(self.path))

    # ---- queries ---------------------------------------------------------------------------
    def add_queries(self, counted: Sequence[tuple[str, int]]) -> None:
        """Record the log's queries and rank them by count. A query seen before keeps the larger count,
        so resuming with the same log changes nothing and a grown log updates the ranking."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO queries (query, count, rank) VALUES (?, ?, 0) "
                "ON CONFLICT(query) DO UPDATE SET count = MAX(count, excluded.count)",
                counted,
            )
            # ranks through an indexed temp table: a correlated window subquery would be quadratic
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS ranks (query TEXT PRIMARY KEY, r INTEGER)")
            self._db.execute("DELETE FROM ranks")
            self._db.execute(
                "INSERT INTO ranks SELECT query, ROW_NUMBER() OVER (ORDER BY count DESC, rowid) FROM queries"
            )
            self._db.execute("UPDATE queries SET rank = (SELECT r FROM ranks WHERE query = queries.query)")
            self._db.execute("COMMIT")

    def pending(self, plan: Sequence[tuple[str, int]], limit: int | None = None) -> list[tuple[str, int]]:
        """Queries (most frequent first) still missing a final call of ``plan`` ((voter, samples) pairs)."""
        clause, params = _plan_clause(plan)
        top = f"(SELECT * FROM queries ORDER BY rank LIMIT {int(limit)})" if limit else "queries"
        return self._all(
            f"SELECT q.query, q.count FROM {top} q WHERE {_done_calls(clause)} < ? ORDER BY q.rank",
            (*params, sum(n for _, n in plan)),
        )

    def missing_calls(self, plan: Sequence[tuple[str, int]], limit: int | None = None) -> int:
        """How many calls of ``plan`` are still to be made (the progress bar's total)."""
        clause, params = _plan_clause(plan)
        top = f"(SELECT * FROM queries ORDER BY rank LIMIT {int(limit)})" if limit else "queries"
        need = sum(n for _, n in plan)
        row = self._one(f"SELECT COALESCE(SUM(? - {_done_calls(clause)}), 0) FROM {top} q", (need, *params))
        return int(row[0])

    def undecided(self, plan: Sequence[tuple[str, int]], limit: int | None = None) -> list[str]:
        """Queries whose calls are all in but whose label is missing or from another set of voters.

        This is the gap a kill between storing a query's last call and its decision leaves.
        """
        clause, params = _plan_clause(plan)
        top = f"(SELECT * FROM queries ORDER BY rank LIMIT {int(limit)})" if limit else "queries"
        rows = self._all(
            f"SELECT q.query FROM {top} q LEFT JOIN labels l ON l.query = q.query "
            f"WHERE (l.query IS NULL OR (l.source != 'human' AND COALESCE(l.voter_set, '') != ?)) "
            f"AND {_done_calls(clause)} >= ? "
            f"ORDER BY q.rank",
            (voter_set(plan), *params, sum(n for _, n in plan)),
        )
        return [r[0] for r in rows]

    def done_calls(self, query: str, voters: Sequence[str]) -> set[tuple[str, int]]:
        """``(voter, sample)`` pairs of ``query`` that have a final (non-error) call."""
        marks = ",".join("?" * len(voters))
        rows = self._all(
            f"SELECT voter, sample FROM calls WHERE query = ? AND voter IN ({marks}) AND status != 'error'",
            (query, *voters),
        )
        return {(v, s) for v, s in rows}

    # ---- calls and decisions ---------------------------------------------------------------
    def record_call(self, call: dict[str, Any]) -> None:
        """Store one finished call (one transaction: it survives a killed process once this returns)."""
        row = dict(call, created=_now(), repairs=json.dumps(list(call.get("repairs", ()))))
        row["path"] = format_path(row["path"]) if row.get("path") else None
        columns = ", ".join(row)
        self._write(
            f"INSERT OR REPLACE INTO calls ({columns}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )

    def votes(self, query: str, plan: Sequence[tuple[str, int]]) -> list[Vote]:
        """The calls of ``query`` in ``plan``, in voter order then sample order."""
        clause, params = _plan_clause(plan)
        rows = self._all(
            "SELECT voter, sample, status, path, score, backend, model, prompt_version, raw, reason, "
            f"COALESCE(reason, '') FROM calls c WHERE query = ? AND ({clause})",
            (query, *params),
        )
        order = {v: i for i, (v, _) in enumerate(plan)}
        rows.sort(key=lambda r: (order[r[0]], r[1]))
        return [
            Vote(
                r[0], r[2], parse_path(r[3]) if r[3] else None, r[4], r[5], r[6], r[7], r[8] or "", r[9] or ""
            )
            for r in rows
        ]

    def record_decision(
        self, query: str, decision: Decision, votes: Sequence[Vote], plan: Sequence[tuple[str, int]]
    ) -> None:
        """Upsert the query's label; a human label is never overwritten by a machine decision."""
        row = {
            "query": query,
            "status": decision.status,
            "path": format_path(decision.path) if decision.path else None,
            "confidence": decision.confidence,
            "agreement": decision.agreement,
            "votes": json.dumps([[v.voter, v.status, format_path(v.path or ())] for v in votes]),
            "voter_set": voter_set(plan),
            "updated": _now(),
            **_provenance(decision, votes),
        }
        self._upsert_label(row, keep_human=True)

    def record_human(self, rows: Iterable[tuple[str, Path_ | None]], reviewer: str) -> int:
        """Store reviewed labels (``None`` = the reviewer says no category fits) in one transaction."""
        count = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for query, path in rows:
                self._db.execute(
                    "INSERT OR IGNORE INTO queries (query, count, rank) VALUES (?, 1, 0)", (query,)
                )
                self._upsert(self._db, _human_row(query, path, reviewer), keep_human=False)
                count += 1
            self._db.execute("COMMIT")
        return count

    def _upsert_label(self, row: dict[str, Any], keep_human: bool) -> None:
        with self._lock:
            self._upsert(self._db, row, keep_human)

    @staticmethod
    def _upsert(db: sqlite3.Connection, row: dict[str, Any], keep_human: bool) -> None:
        columns = ", ".join(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c != "query")
        # a machine never overwrites a human label, and a failed call never erases a usable label
        guard = (
            (
                " WHERE labels.source != 'human' AND NOT (excluded.status = 'error' "
                "AND labels.status IN ('labeled', 'none'))"
            )
            if keep_human
            else ""
        )
        db.execute(
            f"INSERT INTO labels ({columns}) VALUES ({', '.join('?' * len(row))}) "
            f"ON CONFLICT(query) DO UPDATE SET {updates}{guard}",
            tuple(row.values()),
        )

    # ---- reading ---------------------------------------------------------------------------
    def labels(self) -> list[dict[str, Any]]:
        """Every label row joined with its query count, most frequent first."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT l.*, COALESCE(q.count, 1) AS count FROM labels l LEFT JOIN queries q USING (query) "
                "ORDER BY q.rank, l.query"
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def human_queries(self) -> set[str]:
        """The queries a person has labeled (one query, however large the store)."""
        return {row[0] for row in self._all("SELECT query FROM labels WHERE source = 'human'")}

    def call_stats(self) -> dict[str, Any]:
        """Counts by status, repairs and rejection reasons, and token totals, over every call."""
        by_status = dict(self._all("SELECT status, COUNT(*) FROM calls GROUP BY status"))
        repairs: dict[str, int] = {}
        for (text,) in self._all("SELECT repairs FROM calls WHERE repairs != '[]'"):
            for kind in json.loads(text):
                repairs[kind] = repairs.get(kind, 0) + 1
        tokens = self._one(
            "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM calls"
        )
        return {
            "by_status": by_status,
            "repairs": repairs,
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
        }

    def count(self, table: str) -> int:
        if table not in ("queries", "calls", "labels"):
            raise ValueError(table)
        return int(self._one(f"SELECT COUNT(*) FROM {table}")[0])

    # ---- plumbing --------------------------------------------------------------------------
    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, params)  # autocommit: one statement, one durable transaction

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plan_clause(plan: Sequence[tuple[str, int]]) -> tuple[str, list[Any]]:
    clause = " OR ".join("(c.voter = ? AND c.sample < ?)" for _ in plan)
    return clause, [x for pair in plan for x in pair]


def _done_calls(clause: str) -> str:
    """SQL counting the final (non-error) calls of query ``q`` that the plan asks for."""
    return f"(SELECT COUNT(*) FROM calls c WHERE c.query = q.query AND ({clause}) AND c.status != 'error')"


def voter_set(plan: Sequence[tuple[str, int]]) -> str:
    return json.dumps(sorted([list(p) for p in plan]))


def _provenance(decision: Decision, votes: Sequence[Vote]) -> dict[str, Any]:
    """Who answered: the first vote for the winner; problems of the others go in ``error``."""
    winner = decision.winner
    problems = "; ".join(
        f"{v.voter}: {v.reason}" for v in votes if v.status in ("rejected", "error") and v.reason
    )
    if winner is None:
        first = votes[0] if votes else None
        return {
            "source": "none",
            "backend": first.backend if first else None,
            "model": first.model if first else None,
            "prompt_version": None,
            "raw": first.raw if first else None,
            "error": problems or None,
        }
    source = "embedding" if winner.backend == "embedding" else f"llm:{winner.model}"
    return {
        "source": source,
        "backend": winner.backend,
        "model": winner.model,
        "prompt_version": winner.prompt_version or None,
        "raw": winner.raw,
        "error": problems or None,
    }


def _human_row(query: str, path: Path_ | None, reviewer: str) -> dict[str, Any]:
    return {
        "query": query,
        "status": "labeled" if path else "none",
        "path": format_path(path) if path else None,
        "confidence": 1.0,
        "agreement": 1.0,
        "source": "human",
        "backend": "human",
        "model": reviewer,
        "prompt_version": None,
        "raw": None,
        "error": None,
        "votes": "[]",
        "voter_set": None,
        "updated": _now(),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
