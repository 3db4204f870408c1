"""What the Postgres rollup triggers cost a write: COPY batches with the triggers on and off, same run.

    python benchmarks/bench_rollup_trigger.py [--rows 20000] [--batch 1000] [--repeat 4] [--spread-s 5]

Starts a throwaway Postgres cluster (the suite's helper, fsync on), applies the schema, and COPYs
``--rows`` rows in transactions of ``--batch`` rows into the emptied table, alternately with the
rollup triggers enabled and disabled (``ALTER TABLE ... DISABLE TRIGGER USER``), ``--repeat``
times each, the order flipped every repeat; prints rows/s (median) for both and their ratio.
Start times are spread over the last ``--spread-s`` seconds (5: live traffic, where a batch
touches one or two minutes per agent; 3600: a replay or backfill spanning an hour).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psycopg  # noqa: E402
from machine_info import machine  # noqa: E402

from src.repositories.base import COLUMNS  # noqa: E402
from src.repositories.postgres import migrate  # noqa: E402
from tests.fixtures.postgres_server import PostgresCluster  # noqa: E402


def rows(n: int, seed: int, spread_s: float) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        start = now - timedelta(seconds=rng.uniform(0, spread_s))
        out.append(
            (
                f"{rng.getrandbits(128):032x}", f"{seed}-{i}", f"{rng.getrandbits(64):016x}", None, "execute",
                f"agent_{rng.randrange(20)}", rng.randrange(6), start, None, round(rng.lognormvariate(5.5, 1.3), 3),
                "ok", None, None, '{"fallback_used": false}', None, 10, 5, 15, "[]", start,
                round(rng.uniform(0, 0.01), 9) if i % 2 else None,  # cost_usd (issue 19)
            )
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--spread-s", type=float, default=5.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    cluster = PostgresCluster().start()
    try:
        dsn = cluster.create_database("bench_trigger")
        migrate(dsn)
        # the rows fill the columns up to cost_usd; the later, nullable ones stay NULL
        copy_sql = f"COPY ml_observability_spans ({', '.join(COLUMNS[: COLUMNS.index('cost_usd') + 1])}) FROM STDIN"
        rates: dict[str, list[float]] = {"on": [], "off": []}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for rep in range(args.repeat):
                for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                    conn.execute("TRUNCATE ml_observability_spans")
                    conn.execute(
                        f"ALTER TABLE ml_observability_spans {'ENABLE' if mode == 'on' else 'DISABLE'} TRIGGER USER"
                    )
                    data = rows(args.rows, rep * 2 + (mode == "on"), args.spread_s)
                    t0 = time.perf_counter()
                    for i in range(0, len(data), args.batch):
                        with conn.transaction(), conn.cursor().copy(copy_sql) as copy:
                            for row in data[i : i + args.batch]:
                                copy.write_row(row)
                    rates[mode].append(len(data) / (time.perf_counter() - t0))
            conn.execute("ALTER TABLE ml_observability_spans ENABLE TRIGGER USER")
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(f"{args.rows:,} rows in batches of {args.batch:,}, start times over the last {args.spread_s:g} s")
        print(f"  triggers on : {on:>9,.0f} rows/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['on'])})")
        print(f"  triggers off: {off:>9,.0f} rows/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['off'])})")
        print(f"  on / off    : {on / off:.2f}x")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
