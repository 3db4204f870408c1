"""OTLP in and out: the collector's and the export sink's throughput, each beside OpenTelemetry's SDK.

    python benchmarks/bench_otlp.py [--spans 40000] [--sdk-spans 20000]

Collector (``obs-connector serve``, a separate process with its SQLite store): spans/s from the
first OTLP request sent to the last answer, every answer given only after the store committed
the rows (the count is checked in the store afterwards):

1. raw OTLP/HTTP protobuf requests of 512 spans, encoded beforehand, posted by 4 client threads;
2. OpenTelemetry's SDK as the client, in this process: ``BatchSpanProcessor`` + ``OTLPSpanExporter``,
   from the first span started to ``force_flush`` returning (span creation included).

Export sink (to the test suite's OTLP receiver in a separate process, which un-gzips and parses
every request), gzip on both sides:

3. ``OtlpSink.send`` with validated rows, batches of 512 (rows → protobuf → gzip → HTTP);
4. the SDK's ``OTLPSpanExporter.export`` with finished SDK spans, batches of 512 (the same work);
5. the SDK's whole path, ``BatchSpanProcessor`` + ``OTLPSpanExporter``, spans created to flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_info import machine  # noqa: E402

BATCH = 512


def start(args: list[str], env: dict[str, str], marker: str, cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """A server process and the base URL it prints (on stdout or stderr, whichever it uses)."""
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stream = process.stderr if marker == "collector on " else process.stdout
    assert stream is not None
    line = stream.readline()
    if marker == "collector on ":
        return process, line.split(marker, 1)[1].split("/v1/traces", 1)[0]
    return process, line.strip()


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def rows_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM ml_observability_spans").fetchone()[0])


def proto_bodies(count: int, salt: int) -> list[bytes]:
    from src.mlops.otlp_encode import encode_spans
    from tests.fixtures.span_rows import make_span

    rows = [
        make_span(
            trace_id=f"{salt:08x}{i // 10:024x}",
            span_id=f"{salt:04x}{i:012x}",
            llm_model="gpt-4o",
            input_tokens=100,
            output_tokens=20,
            attributes={"gen_ai.operation.name": "chat", "llm.provider": "openai"},
        )
        for i in range(count)
    ]
    return [encode_spans(rows[i : i + BATCH], "bench")[0] for i in range(0, count, BATCH)]


def sdk_provider(endpoint: str, queue: int) -> Any:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=endpoint, compression=Compression.Gzip, timeout=60)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=queue + 1, max_export_batch_size=BATCH))
    return provider


def sdk_burst(endpoint: str, count: int) -> float:
    """Spans/s for the SDK's whole path (creation to flushed), to ``endpoint``."""
    provider = sdk_provider(endpoint, count)
    tracer = provider.get_tracer("bench")
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
    }
    began = time.perf_counter()
    for _ in range(count // 10):
        with tracer.start_as_current_span("invoke_agent"):
            for _ in range(9):
                with tracer.start_as_current_span("chat", attributes=attrs):
                    pass
    assert provider.force_flush(300_000)
    elapsed = time.perf_counter() - began
    provider.shutdown()
    return count / elapsed


def collector(spans: int, sdk_spans: int, work: Path) -> None:
    import httpx

    env = {**os.environ, "OBS_STORE__SQLITE_PATH": str(work / "collector" / "spans.db"), "PYTHONPATH": str(ROOT)}
    (work / "collector").mkdir()
    server, base = start(
        [sys.executable, "-m", "src.agents.ml_foundation.observability_connector.cli", "serve", "--port", "0"],
        env,
        "collector on ",
        work / "collector",
    )
    url = f"{base}/v1/traces"
    try:
        bodies = proto_bodies(spans, 1)
        chunks = [bodies[i::4] for i in range(4)]
        failures: list[int] = []

        def post(mine: list[bytes]) -> None:
            with httpx.Client(timeout=120) as client:
                for body in mine:
                    answer = client.post(url, content=body, headers={"Content-Type": "application/x-protobuf"})
                    if answer.status_code != 200:
                        failures.append(answer.status_code)

        threads = [threading.Thread(target=post, args=(c,)) for c in chunks]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        raw_rate = spans / (time.perf_counter() - began)
        assert not failures, failures
        sdk_rate = sdk_burst(url, sdk_spans)
    finally:
        stop(server)
    stored = rows_in(work / "collector" / "spans.db")
    assert stored == spans + sdk_spans, f"{stored} rows stored of {spans + sdk_spans}"
    print("collector (obs-connector serve → SQLite store, answer after commit)")
    print(f"  raw protobuf, 4 client threads, {BATCH}/request : {raw_rate:>9,.0f} spans/s  ({spans:,} spans)")
    print(f"  OpenTelemetry SDK client (BSP + OTLPSpanExporter): {sdk_rate:>9,.0f} spans/s  ({sdk_spans:,} spans)")
    print(f"  rows in the store afterwards: {stored:,} (each once)")


def export(spans: int, sdk_spans: int, work: Path) -> None:
    from src.mlops.otlp_settings import OtlpConfig
    from src.mlops.otlp_sink import OtlpSink
    from tests.fixtures.span_rows import make_span

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    receiver, base = start([sys.executable, "-m", "tests.fixtures.otlp_receiver", "--port", "0"], env, "", work)
    url = f"{base}/v1/traces"
    try:
        rows = [
            make_span(
                trace_id=f"{i // 10:032x}",
                span_id=f"{i + 1:016x}",
                llm_model="gpt-4o",
                input_tokens=100,
                output_tokens=20,
                attributes={"llm.provider": "openai", "langchain.run_type": "llm"},
            )
            for i in range(spans)
        ]
        sink = OtlpSink(OtlpConfig(endpoint=url, max_spans_per_request=BATCH))

        async def ours() -> float:
            began = time.perf_counter()
            for i in range(0, spans, BATCH):
                result = await sink.send(rows[i : i + BATCH])
                assert not result.rejected
            elapsed = time.perf_counter() - began
            await sink.aclose()
            return spans / elapsed

        sink_rate = asyncio.run(ours())
        finished = finished_sdk_spans(spans)
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import SpanExportResult

        exporter = OTLPSpanExporter(endpoint=url, compression=Compression.Gzip, timeout=60)
        began = time.perf_counter()
        for i in range(0, spans, BATCH):
            assert exporter.export(finished[i : i + BATCH]) is SpanExportResult.SUCCESS
        sdk_export_rate = spans / (time.perf_counter() - began)
        exporter.shutdown()
        sdk_rate = sdk_burst(url, sdk_spans)
    finally:
        stop(receiver)
    print(f"export to a local OTLP receiver (gzip on both sides, {BATCH} spans/request)")
    print(f"  OtlpSink.send (rows → protobuf → HTTP)          : {sink_rate:>9,.0f} spans/s  ({spans:,} spans)")
    print(f"  SDK OTLPSpanExporter.export (finished spans)    : {sdk_export_rate:>9,.0f} spans/s  ({spans:,} spans)")
    print(f"  SDK BatchSpanProcessor + exporter, from creation: {sdk_rate:>9,.0f} spans/s  ({sdk_spans:,} spans)")


def finished_sdk_spans(count: int) -> list[Any]:
    """``count`` finished SDK spans with the same GenAI attributes (made before the clock starts)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    kept: list[Any] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            kept.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("bench")
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.agent.name": "gap_analyzer",
    }
    for _ in range(count):
        with tracer.start_as_current_span("chat", attributes=attrs):
            pass
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=40_000)
    parser.add_argument("--sdk-spans", type=int, default=20_000)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        collector(args.spans, args.sdk_spans, Path(tmp))
        export(args.spans, args.sdk_spans, Path(tmp))


if __name__ == "__main__":
    main()
