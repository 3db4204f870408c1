"""A burst into the OTLP collector: 100,000 spans from 4 client processes, every one stored once.

The clients are OpenTelemetry's own SDK (BatchSpanProcessor + OTLPSpanExporter over HTTP/protobuf),
as another service would run it; the collector is the real ``obs-connector serve`` process. A
client's flush returns once each of its export requests was answered, and the collector answers
only after the store has the rows, so the count is read after a clean SIGTERM stop.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENTS = 4
SPANS_PER_CLIENT = 25_000

CLIENT = textwrap.dedent(
    """
    import sys
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    url, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    provider = TracerProvider(resource=Resource.create({"service.name": f"worker-{worker}"}))
    # A queue that holds the whole burst: the SDK drops what does not fit, and this test counts spans.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=30),
                                max_queue_size=count + 1, max_export_batch_size=512, schedule_delay_millis=50))
    tracer = provider.get_tracer("burst")
    for trace in range(count // 10):
        with tracer.start_as_current_span("invoke_agent worker", attributes={"gen_ai.agent.name": f"agent-{worker}"}):
            for step in range(9):
                with tracer.start_as_current_span("chat", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "gen_ai.usage.input_tokens": step,
                }):
                    pass
    ok = provider.force_flush(120_000)
    provider.shutdown()
    print("flushed" if ok else "NOT FLUSHED", flush=True)
    """
)


def test_100k_spans_from_4_sdk_clients_are_all_stored_once(tmp_path: Path) -> None:
    env = {**os.environ, "OBS_STORE__SQLITE_PATH": str(tmp_path / "spans.db"), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "src.agents.ml_foundation.observability_connector.cli", "serve", "--port", "0"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    clients: list[subprocess.Popen[str]] = []
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert "collector on " in line, line
        url = line.split("collector on ", 1)[1].split("/v1/traces", 1)[0] + "/v1/traces"
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        clients = [
            subprocess.Popen(
                [sys.executable, str(script), url, str(w), str(SPANS_PER_CLIENT)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for w in range(CLIENTS)
        ]
        for client in clients:
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0 and out.strip() == "flushed", err[-2000:]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        for process in [*clients, server]:
            if process.poll() is None:
                process.kill()
    with sqlite3.connect(tmp_path / "spans.db") as db:
        total, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT span_id) FROM ml_observability_spans").fetchone()
        agents = dict(db.execute("SELECT agent_name, COUNT(*) FROM ml_observability_spans GROUP BY agent_name"))
    assert (total, distinct) == (CLIENTS * SPANS_PER_CLIENT, CLIENTS * SPANS_PER_CLIENT)
    # Roots name their agent; children carry no gen_ai.agent.name and are filed under their service.
    assert agents == {**{f"agent-{w}": SPANS_PER_CLIENT // 10 for w in range(CLIENTS)},
                      **{f"worker-{w}": SPANS_PER_CLIENT * 9 // 10 for w in range(CLIENTS)}}  # fmt: skip
