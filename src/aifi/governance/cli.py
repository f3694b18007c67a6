"""`aifi conformance PRODUCT --report FILE`: the vendor conformance kit on the command line.

`conformance` is a plain Typer command that the main `aifi` command registers; `app` runs it
on its own (and in tests through typer.testing.CliRunner). Exit status: 0 when every check
passed, 1 when one failed, 2 when the kit could not run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from aifi.exchange.schemas import ProductManifest
from aifi.governance.conformance import (
    ConformanceReport,
    KitEnvironment,
    KitError,
    KitOptions,
    KitProgress,
    NoReferenceStudies,
    run_conformance,
)
from aifi.vendor import Handler

DEFAULT_VENDOR = "aifi-reference"

app = typer.Typer(add_completion=False, help="The AIFI vendor conformance kit.")


def conformance(
    product: str = typer.Argument(..., metavar="PRODUCT", help="The product id to test."),
    report: Path = typer.Option(..., "--report", help="Write the HTML admission report here."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
    manifest_file: Path | None = typer.Option(
        None,
        "--manifest",
        help="The product's manifest (JSON or YAML), for a product that is not one of AIFI's "
        "reference products; the kit then waits for the vendor's own worker.",
    ),
    external: bool = typer.Option(
        False, "--external", help="Wait for the vendor's own worker even for a reference product."
    ),
    vendor: str = typer.Option(
        DEFAULT_VENDOR, "--vendor", help="Vendor id for a reference product's manifest."
    ),
    size: str = typer.Option(
        "default", "--size", help="Phantom size: small (fast) or default (realistic)."
    ),
    per_kind: int = typer.Option(
        2, "--studies-per-kind", min=1, help="Studies per accepted phantom kind."
    ),
    timeout: float = typer.Option(
        600.0, "--timeout", min=1.0, help="Seconds to wait for all jobs to end."
    ),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="Keep the kit's exchange, studies and results here."
    ),
) -> None:
    """Run a product against synthetic reference studies through a real exchange and write
    the admission report."""
    console = Console()
    if size not in ("small", "default"):
        _fail(console, f"--size must be small or default, not {size!r}")
    manifest, handler = _product(console, product, manifest_file, vendor)
    folder = workdir or Path(tempfile.mkdtemp(prefix="aifi-conformance-"))
    options = KitOptions(size=size, per_kind=per_kind, timeout_seconds=timeout)
    try:
        result = _run(console, manifest, None if external else handler, folder, options)
    except (KitError, NoReferenceStudies) as exc:
        _fail(console, str(exc))
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    attachment = result.write(report, json_out)
    _print_report(console, result)
    console.print(
        f"Report: {report} (sha256 {attachment.sha256[:16]}…) — attach it to the dossier."
    )
    raise typer.Exit(0 if result.passed else 1)


app.command()(conformance)


def _product(
    console: Console, product: str, manifest_file: Path | None, vendor: str
) -> tuple[ProductManifest, Handler | None]:
    """The manifest under test and, for a reference product, its handler."""
    if manifest_file is not None:
        try:
            raw: Any = yaml.safe_load(manifest_file.read_text(encoding="utf-8"))
            manifest = ProductManifest.model_validate(raw)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            _fail(console, f"{manifest_file}: not a usable product manifest: {exc}")
        if manifest.id != product:
            _fail(console, f"{manifest_file} describes product {manifest.id!r}, not {product!r}")
        return manifest, None
    from aifi.products import reference_products

    products = reference_products()
    if product not in products:
        _fail(
            console,
            f"unknown product {product!r}: give --manifest FILE, or one of the reference "
            f"products {', '.join(sorted(products))}",
        )
    chosen = products[product]
    return ProductManifest.model_validate(chosen.manifest(vendor)), chosen.handler


def _run(
    console: Console,
    manifest: ProductManifest,
    handler: Handler | None,
    folder: Path,
    options: KitOptions,
) -> ConformanceReport:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("preparing reference studies", total=None)

        def show(event: KitProgress) -> None:
            progress.update(task, description=event.stage, completed=event.done, total=event.total)

        def ready(environment: KitEnvironment) -> None:
            key_file = folder / "vendor.key"
            key_file.write_text(environment.vendor_key + "\n", encoding="utf-8")
            os.chmod(key_file, 0o600)
            progress.console.print(_waiting_panel(environment, key_file, options))

        return run_conformance(
            manifest,
            None if handler is None else (lambda _environment: handler),
            workdir=folder,
            options=options,
            on_ready=ready,
            progress=show,
        )


def _waiting_panel(environment: KitEnvironment, key_file: Path, options: KitOptions) -> Panel:
    lines = [
        f"exchange:   {environment.url}",
        f"vendor:     {environment.vendor_id}",
        f"product:    {environment.product_id}",
        f"vendor key: {environment.vendor_key}",
        f"key file:   {key_file}",
        "",
        "Point your worker at this exchange with this key now: claim jobs for the product,",
        "upload results, complete or fail each job (docs/vendor-guide.md).",
        f"The kit waits up to {options.timeout_seconds:g} s for every job to end.",
    ]
    return Panel("\n".join(lines), title="waiting for the vendor's worker", expand=False)


def _print_report(console: Console, report: ConformanceReport) -> None:
    table = Table(title=f"{report.product_id} {report.version}: conformance")
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("evidence", overflow="fold")
    for check in report.checks:
        verdict = "[green]pass[/green]" if check.passed else "[red]fail[/red]"
        table.add_row(check.name, verdict, "\n".join(check.details[:4]))
    console.print(table)
    summary = "[green]PASSED[/green]" if report.passed else "[red]NOT PASSED[/red]"
    console.print(f"{report.product_id} {report.version}: {summary}")


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)
