"""`aifi deid INPUT OUTPUT`: de-identify a folder of DICOM files with the engine.

For preparing test sets and checking a configuration before a gateway goes live. Each file is
written atomically; a file that fails leaves no output and is listed, with its reason, in the
table at the end; the exit code is non-zero if any file failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from aifi.dicom.deid.engine import Deidentifier
from aifi.dicom.deid.errors import DeidError, DeidRefused
from aifi.dicom.deid.options import OPTION_NAMES
from aifi.dicom.pseudonym import PseudonymKey

app = typer.Typer(add_completion=False, help=__doc__)


@dataclass(frozen=True)
class Failure:
    """One file that produced no output."""

    path: str
    kind: str  # "refused", "error" or "unreadable"
    reason: str


def _parse_region(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(part) for part in text.split(","))
    except ValueError as exc:
        raise typer.BadParameter(f"region {text!r} must be x,y,w,h in pixels") from exc
    return x, y, w, h


def _sources(input_path: Path) -> list[Path]:
    if input_path.is_file():
        return [input_path]
    return sorted(
        p
        for p in input_path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(input_path).parts)
    )


def deidentify_tree(
    engine: Deidentifier, input_path: Path, output_path: Path, console: Console
) -> tuple[int, list[Failure]]:
    """De-identify every file under `input_path` into the same layout under `output_path`."""
    sources = _sources(input_path)
    failures: list[Failure] = []
    written = 0
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("de-identifying", total=len(sources))
        for src in sources:
            relative = src.name if input_path.is_file() else str(src.relative_to(input_path))
            dst = output_path if input_path.is_file() else output_path / relative
            try:
                engine.deidentify_file(src, dst)
                written += 1
            except DeidRefused as refused:
                failures.append(Failure(relative, "refused", refused.reason))
            except DeidError as error:
                failures.append(Failure(relative, "error", error.message))
            except OSError as error:
                failures.append(Failure(relative, "unreadable", error.strerror or str(error)))
            progress.advance(task)
    return written, failures


@app.command()
def deid(
    input_path: Annotated[
        Path,
        typer.Argument(exists=True, metavar="INPUT", help="A DICOM file or a folder of them."),
    ],
    output_path: Annotated[
        Path, typer.Argument(metavar="OUTPUT", help="Where the de-identified copy goes.")
    ],
    secret_file: Annotated[
        Path,
        typer.Option(
            "--secret-file",
            exists=True,
            dir_okay=False,
            envvar="AIFI_DEID_SECRET_FILE",
            help="The hospital's pseudonymisation secret (see docs/pseudonymisation.md).",
        ),
    ],
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help=f"An Annex E option; repeatable: {', '.join(OPTION_NAMES)}."),
    ] = None,
    clean_region: Annotated[
        list[str] | None,
        typer.Option(
            "--clean-region",
            help="x,y,w,h in pixels to blank under clean-pixel-data; repeatable.",
        ),
    ] = None,
) -> None:
    """De-identify INPUT into OUTPUT under the Basic Profile plus the given options."""
    console = Console(stderr=True)
    input_path = input_path.resolve()
    output_path = output_path.resolve()
    if input_path.is_dir() and output_path.is_relative_to(input_path):
        raise typer.BadParameter("OUTPUT must not lie inside INPUT", param_hint="OUTPUT")
    try:
        engine = Deidentifier(
            PseudonymKey.from_file(secret_file),
            frozenset(option or ()),
            [_parse_region(r) for r in clean_region or ()] or None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    written, failures = deidentify_tree(engine, input_path, output_path, console)
    console.print(f"{written} written, {len(failures)} failed")
    if failures:
        table = Table(title="files without output")
        table.add_column("file")
        table.add_column("kind")
        table.add_column("reason")
        for failure in failures:
            table.add_row(failure.path, failure.kind, failure.reason)
        console.print(table)
        raise typer.Exit(code=1)
