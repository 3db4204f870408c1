"""Memory under a burst with both sinks down, then recovery.

    python benchmarks/bench_memory.py [--spans 1000000] [--payload-kb 0]

The store really fails (a file stands where its folder should be) and Opik refuses
connections (nothing listens on its port). Agents emit ``--spans`` spans as fast as they can;
the process's RSS is sampled throughout. Then both sinks come back (the folder appears, a
receiver starts on Opik's port) and the benchmark waits until every span is in the store,
reporting what reached Opik. Target (issue 5): RSS growth ≤ 150 MB, everything spooled,
everything delivered after recovery. ``--payload-kb N`` gives every root span an attribute of
N KB (a prompt): memory is then held by the byte bound (``batching.max_queue_mb``, issue 13).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from machine_info import machine  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_mb()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=1800, help="bound on the recovery wait (s)")
    parser.add_argument("--payload-kb", type=int, default=0, help="a string attribute of this size per root span")
    args = parser.parse_args()

    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
    from src.agents.ml_foundation.observability_connector.config import (
        ObservabilitySettings,
        build_deliveries,
        build_store,
        load_registry,
    )
    from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="obs-bench-memory-"))
    blocked = tmp / "store"
    blocked.write_text("a file where the store's folder should be")
    port = free_port()
    settings = ObservabilitySettings(
        store={"sqlite_path": str(blocked / "spans.db")},
        batching={"spool_path": str(tmp / "spool.db"), "retry_initial_s": 0.2, "retry_max_s": 2.0},
        opik={"enabled": True, "url": f"http://127.0.0.1:{port}/api", "request_timeout_s": 1.0},
        circuit_breaker={"recovery_timeout_s": 2.0},
    )
    registry = load_registry()
    store = build_store(settings)
    built = build_deliveries(store, settings, registry)  # as ConnectorContext.from_config wires it
    opik = built.connector
    context = ConnectorContext(
        store=store, settings=settings, registry=registry,
        store_delivery=built.store, opik_delivery=built.opik, opik=opik,
    )  # fmt: skip
    obs = ObservabilityConnectorAgent(context=context)

    base = rss_mb()
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    span = obs.span
    payload = args.payload_kb * 1024
    for i in range(args.spans // 10):
        async with span("route_request", "orchestrator") as root:
            root.set_attribute("request", i)
            if payload:
                root.set_attribute("prompt", chr(65 + i % 26) * payload)  # a new string each time
            for step in range(9):
                async with span(f"step_{step}", "gap_analyzer") as child:
                    child.set_attribute("rows", step)
    burst_s = time.perf_counter() - t0
    await obs.flush(timeout=args.timeout)
    settle_s = time.perf_counter() - t0
    status = obs.get_status()
    sampler.running = False
    spool = status["spool"]
    print(f"\nburst: {args.spans:,} spans in {burst_s:.1f} s with both sinks down; handed over after {settle_s:.1f} s")
    growth = sampler.peak - base
    print(f"  RSS: {base:.0f} MB before, peak {sampler.peak:.0f} MB, growth {growth:.0f} MB (target ≤ 150)")
    buffer = status["buffer"] or {}
    print(
        f"  spans dropped: {status['spans_dropped']:,}; overflow (never a wait): "
        f"{buffer.get('overflow_spilled', 0):,} spilled, {buffer.get('overflow_dropped', 0):,} dropped"
    )
    print(
        f"  in-memory bound: {status['queue_max_bytes'] / 2**20:.0f} MB; "
        f"dropped at the byte bound: {status['spans_dropped_for_bytes']:,}"
    )
    print(f"  spool: {spool['spans']:,} spans in {spool['batches']:,} batches, {spool['bytes'] / 1e6:.0f} MB on disk")
    opik_status = opik.get_status()
    print(
        f"  Opik: {opik_status['backlog_spans']:,} spans waiting in the on-disk spool "
        f"(circuit {opik_status['state']}), {opik_status['in_flight']} send(s) in flight"
    )

    # Recovery: the store's folder appears, a receiver listens on Opik's port.
    blocked.unlink()
    blocked.mkdir()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.opik_receiver", "--port", str(port), "--no-validate"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        receiver.stdout.readline()
        t1 = time.perf_counter()
        # The replay tasks run on the flusher's loop; a new process would start them as it starts.
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and any(d.backlogged for d in context.deliveries):
            await asyncio.sleep(0.2)
        recover_s = time.perf_counter() - t1
        with sqlite3.connect(blocked / "spans.db") as conn:
            stored = conn.execute("SELECT COUNT(*) FROM ml_observability_spans").fetchone()[0]
        print(f"\nrecovery: store has {stored:,} / {args.spans:,} spans after {recover_s:.1f} s")
        final = opik.get_status()
        print(
            f"  Opik: {final['spans_sent']:,} spans sent, {final['spans_spooled']:,} went through the "
            f"on-disk spool, {final['backlog_spans']:,} still waiting"
        )
    finally:
        receiver.terminate()
        receiver.wait(10)
        await obs.aclose()


if __name__ == "__main__":
    asyncio.run(main())
