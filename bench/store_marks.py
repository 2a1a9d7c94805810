"""What one write of the dispatcher's marks costs the store, against how many rows it reads.

The table holds ``--running`` claimed ('running') records and ``--finished`` finished
ones, as a busy shared store does, each with a payload of ``--payload`` bytes (the finished
ones with an output and logs too).  How PostgreSQL reads the rows depends on the table's size
in pages: small rows (the default, a call's ``{}``) make a table it likes to scan whole.  For each batch size, ``Store.mark_started`` (one
statement per batch: the runs that started since the last write) and
``Store.extend_leases`` (the heartbeat) are timed on batches of records no batch before
touched, after a ``VACUUM ANALYZE``; on PostgreSQL, the statement the store sent is run
again under ``EXPLAIN ANALYZE`` (rolled back) to count the rows of ``invocations`` its
scans read.  The code measured is the ``spanfaas`` imported: run it with
``PYTHONPATH=<a checkout>`` to measure that checkout, and give an earlier run's JSON as
``--baseline`` to set the two side by side.

    .venv/bin/python bench/store_marks.py                               # a throwaway PostgreSQL, and SQLite
    PYTHONPATH=/work/main .venv/bin/python bench/store_marks.py --json /tmp/before.json
    .venv/bin/python bench/store_marks.py --baseline /tmp/before.json

Prints a table and writes ``bench/results/store_marks.json`` (or ``--json``).

Measured here (2 shared vCPUs, defaults: 50,000 running + 50,000 finished rows, payloads of
2 B, 25 batches a size; main before, this branch after, same command): PostgreSQL
``mark_started`` of 1000 marks read 51,000 rows of ``invocations`` before and 2,000 after,
p50 33.6 -> 22.4 ms (an earlier pair: 46.1 -> 23.9 ms); 1 to 100 marks read the same rows
(2 a mark) both ways, their times within the noise of this machine (SQLite's statements,
unchanged, moved 0.85-1.7x between the same two runs).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, host_info, loadavg, percentile, print_table, throwaway_postgres, write_json

BATCHES = (1, 10, 100, 1000)
OWNERS = 4
"""Claims of this many gateways share the table."""
OUTPUT, LOGS = 256, 128
"""Bytes of a finished record's output and logs (a running one has none yet); each record's
payload has ``--payload`` bytes."""


class _Recording:
    """A cursor that keeps the statements run through it, and their values."""

    def __init__(self, cur: Any, into: list[tuple[str, Any]]) -> None:
        self._cur, self._into = cur, into

    def execute(self, sql: str, *args: Any, **kw: Any) -> Any:
        self._into.append((sql, args[0] if args else None))
        return self._cur.execute(sql, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def recording(base: type[Any], sent: list[tuple[str, Any]]) -> type[Any]:
    class Recorded(base):  # type: ignore[misc, valid-type]
        @contextmanager
        def _tx(self) -> Iterator[Any]:
            with super()._tx() as cur:
                yield _Recording(cur, sent)

    return Recorded


def fill_postgres(url: str, running: int, finished: int, payload: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DELETE FROM invocations")
        db.execute(
            "INSERT INTO invocations (id, function, status, mode, content_type, payload, output, output_type, logs, "
            "attempts, infra, created_at, not_before, lease_until, owner, started) "
            "SELECT 'inv-' || lpad(g::text, 8, '0'), 'fn', CASE WHEN g <= %s THEN 'running' ELSE 'succeeded' END, "
            "'async', 'application/json', convert_to(repeat('p', %s), 'UTF8'), "
            "convert_to(repeat('o', CASE WHEN g <= %s THEN 0 ELSE %s END), 'UTF8'), '', "
            "repeat('l', CASE WHEN g <= %s THEN 0 ELSE %s END), 1, 'local', g, g, "
            "CASE WHEN g <= %s THEN 1e12 END, 'gw-' || (g %% %s) || '.1', 0 FROM generate_series(1, %s) g",
            (running, payload, running, OUTPUT, running, LOGS, running, OWNERS, running + finished),
        )


def fill_sqlite(path: Path, running: int, finished: int, payload: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM invocations")
        db.execute(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
            "INSERT INTO invocations (id, function, status, mode, content_type, payload, output, output_type, logs, "
            "attempts, infra, created_at, not_before, lease_until, owner, started) "
            "SELECT printf('inv-%08d', n), 'fn', CASE WHEN n <= ? THEN 'running' ELSE 'succeeded' END, 'async', "
            "'application/json', zeroblob(?), zeroblob(CASE WHEN n <= ? THEN 0 ELSE ? END), '', "
            "printf('%.*c', CASE WHEN n <= ? THEN 0 ELSE ? END, 'l'), 1, 'local', n, n, "
            "CASE WHEN n <= ? THEN 1e12 END, 'gw-' || (n % ?) || '.1', 0 FROM g",
            (running + finished, running, payload, running, OUTPUT, running, LOGS, running, OWNERS),
        )
    db.close()


def settle(store: Any, kind: str) -> None:
    """The same start for every batch size: dead row versions gone, statistics fresh."""
    if kind == "postgres":
        import psycopg

        with psycopg.connect(store.url, autocommit=True) as db:
            db.execute("VACUUM ANALYZE invocations")
    else:
        with sqlite3.connect(store.path) as db:
            db.execute("ANALYZE")
        db.close()


def touched(plan: dict[str, Any]) -> tuple[int, list[str]]:
    """Rows of ``invocations`` the plan's scans read (kept and filtered out, over all loops), and their kinds."""
    rows, kinds = 0, []
    if plan.get("Relation Name") == "invocations" and plan["Node Type"] != "ModifyTable":
        kinds.append(plan["Node Type"])
        rows += (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * plan["Actual Loops"]
    for child in plan.get("Plans", []):
        r, k = touched(child)
        rows, kinds = rows + r, kinds + k
    return rows, kinds


def explain(url: str, sql: str, args: Any) -> tuple[int, list[str]]:
    import psycopg

    with psycopg.connect(url) as db:
        [[[doc]]] = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, args).fetchall()
        db.rollback()
    return touched(doc["Plan"])


def measure(kind: str, store: Any, sent: list[tuple[str, Any]], running: int, reps: int) -> dict[str, Any]:
    ids = [f"inv-{g:08d}" for g in range(1, running + 1)]
    owner = {id: f"gw-{int(id[4:]) % OWNERS}.1" for id in ids}
    at = 0
    out: dict[str, Any] = {}
    for write in ("mark_started", "extend_leases"):
        for n in BATCHES:
            settle(store, kind)
            times: list[float] = []
            for _ in range(reps):
                if at + n > running:
                    at = 0  # (records no batch before touched, while there are)
                batch = ids[at : at + n]
                at += n
                sent.clear()
                t0 = time.perf_counter()
                if write == "mark_started":
                    store.mark_started({id: owner[id] for id in batch})
                else:
                    store.extend_leases(batch, 2e12)
                times.append((time.perf_counter() - t0) * 1000)
            rows, kinds = -1, []
            if kind == "postgres":
                [(sql, args)] = [(s, a) for s, a in sent if s.lstrip().upper().startswith(("UPDATE", "WITH"))]
                rows, kinds = explain(store.url, sql, args)
            out[f"{write}/{n}"] = {"ms": times, "rows_read": rows, "scans": kinds}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="", help="a postgresql:// URL (default: a throwaway server)")
    ap.add_argument("--running", type=int, default=50_000)
    ap.add_argument("--finished", type=int, default=50_000)
    ap.add_argument("--payload", type=int, default=2, help="bytes of each record's payload")
    ap.add_argument("--reps", type=int, default=25, help="batches timed per size")
    ap.add_argument("--json", default="", help="where to write the results (default bench/results/store_marks.json)")
    ap.add_argument("--baseline", default="", help="an earlier run's JSON, set beside this one")
    args = ap.parse_args()
    assert args.running >= args.reps * BATCHES[-1], "--running must hold --reps batches of the largest size"

    import spanfaas
    from spanfaas.store import SQLiteStore
    from spanfaas.store.postgres import PostgresStore

    raw: dict[str, Any] = {}
    sent: list[tuple[str, Any]] = []
    with throwaway_postgres() if not args.store else _given(args.store) as url:
        store = recording(PostgresStore, sent)(url)
        try:
            fill_postgres(url, args.running, args.finished, args.payload)
            raw["postgres"] = measure("postgres", store, sent, args.running, args.reps)
        finally:
            store.close()
    with tempfile.TemporaryDirectory(prefix="spanfaas-bench-marks-") as tmp:
        store = recording(SQLiteStore, sent)(Path(tmp) / "spanfaas.db")
        try:
            fill_sqlite(store.path, args.running, args.finished, args.payload)
            raw["sqlite"] = measure("sqlite", store, sent, args.running, args.reps)
        finally:
            store.close()

    base = json.loads(Path(args.baseline).read_text())["raw"] if args.baseline else {}
    rows: list[Row] = []
    for kind, results in raw.items():
        for key, r in results.items():
            write, n = key.split("/")
            value = statistics.median(r["ms"])
            b = base.get(kind, {}).get(key)
            was = statistics.median(b["ms"]) if b else None
            note = ""
            if kind == "postgres":
                note = f"rows read {r['rows_read']:,} ({'/'.join(r['scans'])})"
                if b:
                    note += f"; baseline {b['rows_read']:,} ({'/'.join(b['scans'])})"
            rows.append(Row(
                section=f"{kind} {write}", metric=f"{write} x{n}", value=value, unit="ms",
                p99=percentile(r["ms"], 0.99), n=len(r["ms"]), mode=kind,
                baseline_name="baseline" if b else "", baseline=was, ratio=value / was if was else None,
                note=note, extra={"rows_read": r["rows_read"], "scans": r["scans"]},
            ))  # fmt: skip
    title = (f"store marks: {args.running:,} running + {args.finished:,} finished rows, payloads of {args.payload} B, "
             f"{args.reps} batches per size "
             f"(spanfaas from {Path(spanfaas.__file__).resolve().parent.parent})")  # fmt: skip
    print_table(rows, title)
    meta = {"host": host_info(), "loadavg": loadavg(), "running": args.running, "finished": args.finished,
            "reps": args.reps, "payload": args.payload, "spanfaas": str(Path(spanfaas.__file__).resolve().parent), "baseline": args.baseline}  # fmt: skip
    path = write_json("store_marks", meta, rows, raw, args.json or None)
    print(f"\nwrote {path}")


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
