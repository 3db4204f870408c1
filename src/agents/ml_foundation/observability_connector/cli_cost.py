"""``obs-connector cost reprice``: price stored LLM rows that have no cost. Registered on the app by
:mod:`cli` as a sub-command group.

When: after upgrading a store written before spans carried a cost, or after adding a
``pricing.overrides`` entry for a model whose past calls were counted as unpriced. The prices
are the configured ones (library and overrides), the same the row builder uses for new spans;
rows already priced keep their cost.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .cli_support import SINCE_HELP, make_console, open_context, plain, since_day, store_job

__all__ = ["cost_app"]

cost_app = typer.Typer(
    name="cost",
    help="Price stored LLM calls that have no cost (after an upgrade or a new pricing override).",
    no_args_is_help=True,
    add_completion=False,
)


@cost_app.command()
def reprice(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help=SINCE_HELP)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=100_000, help="Rows per transaction.")] = 1000,
) -> None:
    """Set the cost of stored LLM rows without one, from the configured prices; rollups follow."""
    from .policies import cached_pricer

    start = since_day(since)
    context = open_context(ctx.obj, "write")
    store = context.store
    pricer = context.pricer or cached_pricer(context.settings)

    examined, priced = store_job(
        context,
        "pricing the stored rows of {store}",
        lambda: store.price_unpriced(pricer, start, batch_size=batch_size),
        usage=(NotImplementedError,),
    )
    scope = f"from {start:%Y-%m-%d}" if start else "of every stored day"
    left = examined - priced
    make_console().print(
        plain(
            f"Priced {priced:,} of {examined:,} unpriced LLM call(s) {scope} in {store.describe()}"
            + (f"; {left:,} still have no known price (unknown model, or no token counts)." if left else ".")
        )
    )
