"""The business case in the terminal: the report's tables rendered with rich."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from aifi.business.analysis import Analysis
from aifi.business.tables import TableSpec, overview_lines, report_tables


def rich_table(spec: TableSpec) -> Table:
    table = Table(
        title=Text(spec.title, style="bold"),
        caption=Text(spec.caption) if spec.caption else None,
        title_justify="left",
    )
    for index, header in enumerate(spec.headers):
        table.add_column(header, justify="right" if index in spec.numeric else "left")
    for row in spec.rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def print_report(analysis: Analysis, console: Console) -> None:
    """Print the overview and every table of the analysis."""
    lines = overview_lines(analysis)
    console.rule(Text(f"Business case: {lines[0]}", style="bold"))
    for line in lines[1:]:
        console.print(Text(line))
    for spec in report_tables(analysis):
        console.print()
        console.print(rich_table(spec))
