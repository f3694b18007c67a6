"""The `aifi` command: run an exchange, a gateway, a vendor worker, or the national demo."""

from __future__ import annotations

import logging
import signal
import threading
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from aifi.exchange.cli_options import DataDir
from aifi.gateway.cli_options import ConfigOption, settings_or_exit
from aifi.vendor.client import LONGEST_LEASE_SECONDS

app = typer.Typer(
    help="AIFI: a vendor-neutral national path from the hospital PACS to radiology AI and back.",
    no_args_is_help=True,
    add_completion=False,
)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # A line for every request (a gateway's idle long-polls alone made some 8,640 a day) buries
    # what the journal is read for; its own failures and retries are logged by the clients.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def exchange(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    data_dir: DataDir = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Try what a replica needs (database, schema, connections, blob store, keys) "
            "without starting it; exit 1 if anything fails.",
        ),
    ] = False,
    cpu: Annotated[
        int | None,
        typer.Option(
            help="Run on this one CPU core (0, 1, …): a replica is held to about one core by "
            "the interpreter lock, and on one core its threads hand the lock over without "
            "waking each other across cores. Run one replica per core, each on its own.",
        ),
    ] = None,
    verbose: bool = False,
) -> None:
    """Run the national exchange (HTTP API, OpenAPI at /docs, web pages at /ui)."""
    import uvicorn

    from aifi.exchange.app import create_app
    from aifi.exchange.cli_options import settings_or_exit as exchange_settings_or_exit
    from aifi.gc_tuning import tune_for_serving
    from aifi.http import SERVER_KEEP_ALIVE_SECONDS
    from aifi.web import mount

    _logging(verbose)
    if cpu is not None:  # before any thread starts: threads inherit it
        from aifi.affinity import NoSuchCore, pin_to_core

        try:
            pin_to_core(cpu)
        except NoSuchCore as exc:
            typer.echo(f"error: --cpu: {exc}", err=True)
            raise typer.Exit(2) from exc
    settings = exchange_settings_or_exit(data_dir)
    if check:
        from aifi.checks import show
        from aifi.exchange.preflight import preflight

        if not verbose:  # the schema's revision is in the table
            logging.getLogger("alembic").setLevel(logging.WARNING)
        if not show("exchange replica", preflight(settings)):
            raise typer.Exit(1)
        return
    exchange_app = create_app(settings, extensions=[mount])
    tune_for_serving()
    uvicorn.run(
        exchange_app,
        host=host,
        port=port,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        timeout_keep_alive=SERVER_KEEP_ALIVE_SECONDS,
    )


@app.command()
def gateway(
    config: ConfigOption,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Try everything the gateway needs (folders, secret, port, exchange, products, "
            "PACS) without starting it; exit 1 if anything fails.",
        ),
    ] = False,
    verbose: bool = False,
) -> None:
    """Run a hospital gateway: DICOM in, pseudonymised jobs out, results back to the PACS."""
    from aifi.gateway.service import Gateway

    _logging(verbose)
    settings = settings_or_exit(config)
    if check:
        from aifi.checks import show
        from aifi.gateway.preflight import preflight

        if not verbose:  # the table says why an echo failed; pynetdicom's errors repeat it
            logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        if not show(f"gateway {settings.hospital}", preflight(settings)):
            raise typer.Exit(1)
        return
    from aifi.http import without_password
    from aifi.results.key_image import use_matplotlib_folder

    use_matplotlib_folder(settings.workdir)  # the service account may have no home
    try:
        node = Gateway(settings)  # refused on a workdir another gateway or a restore holds
        node.start()
    except OSError as exc:  # a port taken, an address this host lacks, a folder it cannot use
        typer.echo(
            f"error: gateway {settings.hospital} cannot start: {exc} "
            "(`aifi gateway --check` tries each part)",
            err=True,
        )
        raise typer.Exit(1) from exc
    stop = _wait_for_signal()  # once started: a gateway that could not start installs none
    typer.echo(
        f"gateway {settings.hospital}: {settings.dicom.ae_title} listening on "
        f"{settings.dicom.host}:{node.port}, exchange {settings.exchange.url}"
        + (f" through proxy {without_password(node.client.proxy)}" if node.client.proxy else "")
        + (f"; STOW-RS at {node.stow_url}" if node.stow_url else "")
    )
    stop.wait()
    node.stop()


@app.command()
def worker(
    product: Annotated[str, typer.Option(help="Reference product id to run.")],
    exchange_url: Annotated[str, typer.Option("--exchange", help="Exchange base URL.")],
    api_key_file: Annotated[
        Path,
        typer.Option(
            help="File holding the vendor's API key.", exists=True, dir_okay=False, readable=True
        ),
    ],
    register: Annotated[
        str | None, typer.Option(help="Register the product's manifest for this vendor id first.")
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Try everything the worker needs (key, folder, exchange, product) without "
            "claiming a job or registering anything; exit 1 if anything fails.",
        ),
    ] = False,
    lease_seconds: Annotated[
        float,
        typer.Option(
            help="Seconds a claim holds a job between heartbeats (the exchange grants at most "
            f"{LONGEST_LEASE_SECONDS:.0f}).",
            min=1,
            max=LONGEST_LEASE_SECONDS,
        ),
    ] = 60.0,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for each job's inputs and outputs while it runs (default: the "
            "system's temporary folder); on a disk with room for a few studies.",
            file_okay=False,
        ),
    ] = None,
    hand_back_pause: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait after handing a job back for want of room (default 30 s).",
            min=0,
        ),
    ] = None,
    storage_wait: Annotated[
        float | None,
        typer.Option(
            help="Seconds to keep offering a result the exchange cannot take (its storage full "
            "or down, or out of reach) before handing the job back (default 900 s).",
            min=0,
        ),
    ] = None,
    proxy: Annotated[
        str | None,
        typer.Option(help="HTTP proxy to the exchange (default: HTTPS_PROXY, else ALL_PROXY)."),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="A CA to trust besides the public roots (a TLS proxy's).")
    ] = None,
    verbose: bool = False,
) -> None:
    """Run a vendor worker for one of AIFI's reference products (not for clinical use)."""
    import httpx

    from aifi.http import RETRIES
    from aifi.products import reference_products
    from aifi.vendor import ExchangeHTTPError, VendorClient, Worker

    _logging(verbose)
    products = reference_products()
    if product not in products:
        typer.echo(
            f"error: unknown product {product!r}; choose from {', '.join(products)}", err=True
        )
        raise typer.Exit(2)
    client = VendorClient(
        exchange_url,
        api_key_file.read_text().strip(),
        proxy=proxy,
        ca_file=ca_file,
        retries=0 if check else RETRIES,
    )
    if check:
        from aifi.checks import show
        from aifi.vendor.preflight import preflight

        passed = show(f"worker for {product}", preflight(client, product, api_key_file, workdir))
        client.close()
        raise typer.Exit(0 if passed else 1)
    if register:
        try:
            client.register_product(products[product].manifest(register))
        except (ExchangeHTTPError, httpx.TransportError) as exc:
            typer.echo(f"error: {product} could not be registered as {register}'s: {exc}", err=True)
            raise typer.Exit(1) from exc
    stop = _wait_for_signal()
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    patience = {"hand_back_pause": hand_back_pause, "storage_wait_seconds": storage_wait}
    Worker(
        client,
        products[product].handler,
        product_ids=[product],
        lease_seconds=lease_seconds,
        workdir=workdir,
        product_versions={product: products[product].version},
        **{name: seconds for name, seconds in patience.items() if seconds is not None},
    ).run(stop)
    client.close()


@app.command()
def demo(
    studies: Annotated[int, typer.Option(help="Studies per hospital.", min=1)] = 3,
    workdir: Annotated[Path, typer.Option(help="Everything the demo writes.")] = Path("demo-work"),
    summary: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
    keep_running: Annotated[
        bool, typer.Option(help="Leave the exchange up at http://127.0.0.1:PORT until Ctrl-C.")
    ] = False,
    port: Annotated[int, typer.Option(help="The exchange's HTTP port.")] = 8000,
    seed: int = 1,
) -> None:
    """Run the national demo on one machine: an exchange, five hospitals, reference products."""
    from aifi.demo import run_demo

    code = run_demo(
        studies=studies,
        workdir=workdir,
        summary=summary,
        keep_running=keep_running,
        port=port,
        seed=seed,
    )
    raise typer.Exit(code)


class Side(StrEnum):
    exchange = "exchange"
    gateway = "gateway"


@app.command("alert-rules")
def alert_rules(
    side: Annotated[
        Side, typer.Argument(help="Whose rules: the national exchange's or a gateway's.")
    ],
) -> None:
    """Print the Prometheus alerting rules for the exchange or a gateway, to save in
    Prometheus's rule files (`aifi alert-rules exchange > /etc/prometheus/rules/aifi.yaml`)."""
    typer.echo(resources.files(f"aifi.{side}").joinpath("alerts.yaml").read_text(), nl=False)


def _register_tools() -> None:
    """Commands that live beside the code they drive: synthetic studies, the business case."""
    from aifi.business.cli import business_case
    from aifi.dicom.deid.cli import deid
    from aifi.exchange.audit_cli import app as audit_app
    from aifi.gateway.backup_cli import gateway_backup, gateway_restore
    from aifi.gateway.disclosures_cli import disclosures
    from aifi.gateway.jobs_cli import gateway_jobs
    from aifi.gateway.secret_cli import gateway_secret
    from aifi.gateway.subscriptions_cli import gateway_subscriptions
    from aifi.gateway.unknown_jobs_cli import gateway_unknown_jobs
    from aifi.governance.cli import conformance
    from aifi.phantoms.cli import phantom

    app.command("conformance", help="Run a product through the vendor conformance kit.")(
        conformance
    )
    app.command("deid", help="Pseudonymise a folder of DICOM files (PS3.15 Annex E).")(deid)
    app.add_typer(audit_app, name="audit")
    app.command("disclosures", help="What a gateway sent where, per patient (its disclosure log).")(
        disclosures
    )
    app.command(
        "gateway-backup",
        help="Copy a gateway's databases while it runs, for the hospital's backup to keep.",
    )(gateway_backup)
    app.command(
        "gateway-restore", help="Put a gateway backup back into its workdir (gateway stopped)."
    )(gateway_restore)
    app.command(
        "gateway-jobs", help="The jobs the gateway has not done with: waiting for what, and why."
    )(gateway_jobs)
    app.command(
        "gateway-secret",
        help="The pseudonymisation secret's fingerprint and the vault's; adopt a new secret.",
    )(gateway_secret)
    app.command(
        "gateway-subscriptions",
        help="The products the hospital subscribes to at the exchange; subscribe or end one.",
    )(gateway_subscriptions)
    app.command(
        "gateway-unknown-jobs",
        help="Exchange jobs of this hospital the gateway has no record of: adopt or let go.",
    )(gateway_unknown_jobs)
    app.command("phantom", help="Write a synthetic study with known ground truth.")(phantom)
    app.command("business-case", help="Cost–benefit of central vs local AI procurement.")(
        business_case
    )


_register_tools()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
