"""`aifi gateway-subscriptions --config gateway.yaml [--subscribe ID] [--unsubscribe ID]`: the
products the hospital subscribes to at the exchange, beside those its routes send studies to.

A hospital subscribes with its own API key (the exchange takes a subscription from the hospital
alone, not from the operator on its behalf), so the engineer who installs the gateway does it
with the gateway's configuration, as `--check` tells them when a route names a product the
hospital does not subscribe to.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from aifi.gateway.cli_options import ConfigOption, settings_or_exit
from aifi.gateway.config import GatewayConfig
from aifi.gateway.exchange_client import GatewayClient
from aifi.http import ExchangeHTTPError


def _table(config: GatewayConfig, client: GatewayClient) -> Table:
    rows = {str(row["product_id"]): row for row in client.request("GET", "/subscriptions").json()}
    routed = {route.product for route in config.routes}
    table = Table(title=f"{config.hospital}: subscriptions at the exchange")
    for column in ("product", "name and version", "routes send to it", "subscribed"):
        table.add_column(column, overflow="fold")
    for product_id in sorted(routed | set(rows)):
        row = rows.get(product_id)
        subscribed = bool(row and row.get("active"))
        table.add_row(
            product_id,
            _described(client, product_id),
            "yes" if product_id in routed else "no",
            "yes"
            if subscribed
            else "[red]no: its studies are refused[/]"
            if product_id in routed
            else "no",
        )
    return table


def _described(client: GatewayClient, product_id: str) -> str:
    try:
        product: dict[str, Any] = client.product(product_id)
    except ExchangeHTTPError as exc:
        return f"[red]{exc.detail}[/]"
    return f"{product['name']} {product['version']} ({product['status']})"


def gateway_subscriptions(
    config: ConfigOption,
    subscribe: Annotated[
        list[str] | None,
        typer.Option(help="Subscribe the hospital to this product. Repeat for more."),
    ] = None,
    unsubscribe: Annotated[
        list[str] | None,
        typer.Option(
            help="End the hospital's subscription to this product: the exchange refuses its "
            "studies for it from now on. Repeat for more.",
        ),
    ] = None,
) -> None:
    """Subscribe the hospital to products, or end subscriptions, with the gateway's API key;
    then list the hospital's subscriptions beside the products its routes name."""
    settings = settings_or_exit(config)
    try:
        with GatewayClient.connecting(settings.exchange) as client:
            for product_id in subscribe or []:
                client.request("POST", "/subscriptions", json={"product_id": product_id})
            for product_id in unsubscribe or []:
                client.request("DELETE", f"/subscriptions/{product_id}")
            Console().print(_table(settings, client))
    except ExchangeHTTPError as exc:
        typer.echo(f"error: the exchange: {exc}", err=True)
        raise typer.Exit(1) from exc
    except httpx.TransportError as exc:
        typer.echo(f"error: the exchange cannot be reached: {exc}", err=True)
        raise typer.Exit(1) from exc
