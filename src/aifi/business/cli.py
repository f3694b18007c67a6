"""`aifi business-case`: compute a business case and print it, optionally as HTML and JSON.

`business_case` is a plain Typer command; the main `aifi` command registers it. `app` runs it on
its own (and in tests through typer.testing.CliRunner).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from aifi.business.analysis import DEFAULT_DRAWS, DEFAULT_SEED, analyse, analysis_to_dict
from aifi.business.console import print_report
from aifi.business.loading import BusinessCaseError, load_case
from aifi.business.metering import MeteringError, apply_metering, fetch_metering

MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"


def business_case(
    scenario: str = typer.Argument(
        ...,
        metavar="SCENARIO",
        help="A business-case YAML file, or the name of a shipped example (netherlands-pilot).",
    ),
    html: Path | None = typer.Option(None, "--html", help="Write an HTML report with charts."),
    json_out: Path | None = typer.Option(None, "--json", help="Write every figure as JSON."),
    from_exchange: str | None = typer.Option(
        None,
        "--from-exchange",
        metavar="URL",
        help="Replace assumed volumes by the metering of the exchange at URL.",
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="AIFI_API_KEY",
        help="The operator's API key for --from-exchange (or env AIFI_API_KEY).",
        show_default=False,
    ),
    since: str | None = typer.Option(
        None, "--since", metavar="YYYY-MM", help="First month metered."
    ),
    until: str | None = typer.Option(
        None, "--until", metavar="YYYY-MM", help="Last month metered."
    ),
    draws: int = typer.Option(DEFAULT_DRAWS, "--draws", min=1, help="Monte Carlo draws."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the Monte Carlo draws."),
) -> None:
    """Compute the business case: scenarios side by side, Monte Carlo, tornado, reports."""
    console = Console()
    try:
        case = load_case(scenario)
    except BusinessCaseError as err:
        _error(console, str(err))
        raise typer.Exit(code=2) from err
    origin = scenario
    metering = None
    for flag, month in (("--since", since), ("--until", until)):
        if month is not None and not re.match(MONTH, month):
            _error(console, f"{flag} must be a month as YYYY-MM (got {month!r})")
            raise typer.Exit(code=2)
    if from_exchange:
        if not api_key:
            _error(console, "--from-exchange needs --api-key or AIFI_API_KEY")
            raise typer.Exit(code=2)
        try:
            rows = fetch_metering(from_exchange, api_key, since=since, until=until)
        except MeteringError as err:
            _error(console, str(err))
            raise typer.Exit(code=1) from err
        case, metering = apply_metering(case, rows, source=f"{from_exchange.rstrip('/')}/metering")
    analysis = analyse(case, origin=origin, draws=draws, seed=seed, metering=metering)
    print_report(analysis, console)
    if json_out is not None:
        json_out.write_text(
            json.dumps(analysis_to_dict(analysis), indent=2, allow_nan=False), encoding="utf-8"
        )
        console.print(f"\nJSON written to {json_out}")
    if html is not None:
        # Imported here: matplotlib loads only when a report is asked for.
        from aifi.business.html_report import render_html

        html.write_text(render_html(analysis), encoding="utf-8")
        console.print(f"HTML report written to {html}")


def _error(console: Console, message: str) -> None:
    """Print an error as plain text: YAML paths like ``hospitals[umc]`` are not rich markup."""
    console.print(Text(message, style="red"))


app = typer.Typer(help="AIFI business case", add_completion=False)
app.command("business-case")(business_case)
