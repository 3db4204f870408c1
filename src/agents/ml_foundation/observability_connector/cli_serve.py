"""``obs-connector serve``: the OTLP/HTTP collector (``otlp_server.py``) from a shell."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .cli_support import EXIT_USAGE, fail, make_console, open_context, plain, run_sync

__all__ = ["serve"]


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless you mean it).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (4318: OTLP/HTTP's own).")] = 4318,
    token_env: Annotated[
        str | None,
        typer.Option("--token-env", metavar="VAR", help="Require 'Authorization: Bearer <value of VAR>'."),
    ] = None,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.001, max=1024, help="Largest request accepted (413 past it).")
    ] = 16.0,
) -> None:
    """Accept OTLP/HTTP traces (POST /v1/traces, protobuf or JSON) and store them like in-process spans."""
    from .otlp_server import serve as run_server

    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            fail(f"--token-env {token_env}: that environment variable is not set or empty", EXIT_USAGE)
    context = open_context(ctx.obj)
    console = make_console(stderr=True)

    def ready(address: str) -> None:
        console.print(
            f"obs-connector collector on [cyan]{plain(address)}/v1/traces[/] → {plain(context.store.describe())}"
            f"{' (bearer token required)' if token else ''}; Ctrl-C or SIGTERM stops it without losing a span"
        )

    try:
        stats = run_sync(
            lambda: run_server(
                context, host, port, token=token, max_body_bytes=int(max_body_mb * 1024 * 1024), on_ready=ready
            )
        )
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc}")
    console.print(
        f"stopped: {stats.requests:,} request(s), {stats.spans_logged:,} span(s) stored, "
        f"{stats.spans_rejected:,} rejected"
    )
