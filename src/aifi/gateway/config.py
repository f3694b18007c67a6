"""The gateway's YAML configuration (one file per hospital), validated with pydantic."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aifi.gateway.notify import NotificationSettings
from aifi.gateway.notify.fhir import endpoint_verify
from aifi.http import trusting

AE_TITLE = r"^[ -~]{1,16}$"


class _Section(BaseModel):
    """A part of the configuration. A key it does not know is refused, not ignored: `PACS:`
    for `pacs:` would otherwise load as no PACS at all, and a mistyped timer as its default."""

    model_config = ConfigDict(extra="forbid")


class DicomListener(_Section):
    """Where modalities and the PACS send studies (the gateway's C-STORE SCP)."""

    ae_title: str = Field(default="AIFI_GW", pattern=AE_TITLE)
    host: str = "127.0.0.1"
    #: 0 takes any free port (the demo's gateways): `Gateway.port` says which.
    port: int = Field(default=11112, ge=0, le=65535)
    #: Seconds without a new instance after which a study counts as complete.
    quiet_seconds: float = Field(default=10.0, ge=0)
    #: Per calling AE title: a CT that sends in one burst can use a shorter timer.
    quiet_seconds_by_calling_ae: dict[str, float] = Field(default_factory=dict)
    #: Calling AE titles allowed to send; empty allows any.
    allowed_calling_aes: list[str] = Field(default_factory=list)

    def quiet_for(self, calling_ae: str) -> float:
        return self.quiet_seconds_by_calling_ae.get(calling_ae.strip(), self.quiet_seconds)


class StowSender(_Section):
    """A PACS or router allowed to send by STOW-RS, with HTTP Basic credentials."""

    #: The HTTP Basic user name (printable, no colon: Basic ends the name at the first); it
    #: stands where a DIMSE sender's calling AE title would: in routes' `calling_aes` and in
    #: `dicom.quiet_seconds_by_calling_ae`.
    name: str = Field(pattern=r"^[!-9;-~]{1,64}$")
    #: A file holding the password alone (0600, like the exchange key file).
    password_file: Path

    def password(self) -> str:
        return self.password_file.read_text().strip()


class DicomWebListener(_Section):
    """Where a PACS or router that speaks DICOMweb sends studies: STOW-RS at
    `<scheme>://host:port/dicom-web/studies`."""

    host: str = "127.0.0.1"
    #: 0 takes any free port: `Gateway.stow_url` says which.
    port: int = Field(default=8080, ge=0, le=65535)
    #: Who may send; at least one (an open HTTP listener would take studies from anyone).
    senders: list[StowSender] = Field(min_length=1)
    #: Serve HTTPS with this certificate and key (PEM), for senders on another network.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> DicomWebListener:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class Route(_Section):
    """A routing rule: studies that match every given criterion go to `product`."""

    product: str
    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    study_description: str | None = None
    series_description: str | None = None
    sop_classes: list[str] = Field(default_factory=list)
    calling_aes: list[str] = Field(default_factory=list)
    priority: str | None = Field(default=None, pattern=r"^(stat|routine)$")

    @field_validator("study_description", "series_description")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class PacsDestination(_Section):
    """A DICOM node that receives re-identified results by C-STORE."""

    name: str
    ae_title: str = Field(pattern=AE_TITLE)
    host: str
    port: int = Field(ge=1, le=65535)


class ExchangeConnection(_Section):
    url: str
    api_key: str | None = None
    api_key_file: Path | None = None
    #: The hospital's HTTP proxy to the internet; default: HTTPS_PROXY, else ALL_PROXY (and
    #: NO_PROXY), as `aifi.http.proxy_for` reads them.
    proxy: str | None = Field(default=None, pattern=r"^https?://")
    #: A CA to trust besides the public roots: that of a proxy which inspects TLS.
    ca_file: Path | None = None

    def key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_file:
            return self.api_key_file.read_text().strip()
        raise ValueError("exchange.api_key or exchange.api_key_file must be set")


class GatewayConfig(_Section):
    hospital: str
    workdir: Path
    exchange: ExchangeConnection
    dicom: DicomListener = Field(default_factory=DicomListener)
    #: STOW-RS as well as C-STORE; off unless configured.
    dicomweb: DicomWebListener | None = None
    routes: list[Route] = Field(default_factory=list)
    #: Where re-identified results go, each in turn; at least one (`_results_go_somewhere`).
    pacs: list[PacsDestination] = Field(default_factory=list, validate_default=True)
    #: The hospital's pseudonymisation secret; made (0600) at the first start in a new
    #: workdir, never over one holding the gateway's databases (`aifi.gateway.secret`).
    secret_file: Path | None = None
    #: Pixel regions (x, y, width, height) blanked when a product asks for Clean Pixel Data;
    #: without them, instances that may carry burned-in text are never sent.
    clean_pixel_regions: list[tuple[int, int, int, int]] = Field(default_factory=list)
    #: The gateway's own AE title when it sends results to the PACS.
    calling_ae_title: str = Field(default="AIFI_GW", pattern=AE_TITLE)
    #: Where result notices go: HL7 v2 ORU over MLLP, FHIR R4, a webhook for STAT alerts.
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    #: Serve Prometheus metrics (jobs by state, queue age, turnaround, errors) on this port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    #: Parallel uploads of one study's instances.
    upload_threads: int = Field(default=4, ge=1, le=32)
    #: Seconds a result fetch waits at the exchange for an ended job (long-poll).
    poll_wait_seconds: float = Field(default=10.0, ge=0, le=60)
    #: Hours a study's instances (the spool, identifiable) and its results stay on the gateway
    #: after its last job ended, or after it matched no route: long enough for a late series
    #: to be sent with the rest of its study, no longer than needed. 0: at the next sweep.
    retain_hours: float = Field(default=24.0, ge=0)

    @field_validator("pacs")
    @classmethod
    def _results_go_somewhere(cls, pacs: list[PacsDestination]) -> list[PacsDestination]:
        """A gateway with no PACS would take every result home to nowhere and acknowledge
        it to the exchange as delivered: such a configuration is refused, not run."""
        if not pacs:
            raise PydanticCustomError(
                "no_result_destination",
                "no PACS to deliver results to: list at least one destination under `pacs` "
                "(name, ae_title, host, port); without one, every result would be taken for "
                "delivered and reach nobody",
            )
        return pacs

    @property
    def resolved_secret_file(self) -> Path:
        return self.secret_file or self.workdir / "secret.key"


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says which entry and why."""


def _problem(error: Mapping[str, Any]) -> str:
    """One validation error as the engineer reads it: where in the file, and what is wrong."""
    where = ".".join(str(part) for part in error["loc"]) or "(the file as a whole)"
    if error["type"] == "extra_forbidden":
        return (
            f"{where}: not a key the gateway knows (mistyped, or in the wrong section?); the "
            "keys: docs/hospital-guide.md, section 3"
        )
    return f"{where}: {error['msg']}"


def load_config(path: Path) -> GatewayConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the gateway configuration: {exc}") from exc
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc
    base = path.parent
    if not config.workdir.is_absolute():
        config.workdir = (base / config.workdir).resolve()
    if config.secret_file is not None and not config.secret_file.is_absolute():
        config.secret_file = (base / config.secret_file).resolve()
    config.notifications = config.notifications.resolve_paths(base)
    if config.notifications.fhir is not None:
        try:
            endpoint_verify(config.notifications.fhir)
        except ValueError as exc:
            raise ConfigError(f"{path}: notifications.fhir.verify_tls: {exc}") from exc
    if config.dicomweb is not None:
        web = config.dicomweb
        for sender in web.senders:
            sender.password_file = (base / sender.password_file).resolve()
            try:
                if not sender.password():
                    raise ConfigError(
                        f"{path}: dicomweb sender {sender.name}: password file is empty"
                    )
            except OSError as exc:
                raise ConfigError(
                    f"{path}: dicomweb sender {sender.name}: cannot read password file: {exc}"
                ) from exc
        if web.tls_cert_file is not None and web.tls_key_file is not None:
            web.tls_cert_file = (base / web.tls_cert_file).resolve()
            web.tls_key_file = (base / web.tls_key_file).resolve()
        names = [sender.name for sender in web.senders]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: dicomweb.senders: a name is given twice")
    key_file = config.exchange.api_key_file
    if key_file is not None and not key_file.is_absolute():
        config.exchange.api_key_file = (base / key_file).resolve()
    ca_file = config.exchange.ca_file
    if ca_file is not None:
        config.exchange.ca_file = ca_file = (base / ca_file).resolve()
        try:
            trusting(ca_file)
        except ValueError as exc:
            raise ConfigError(f"{path}: exchange.ca_file: {exc}") from exc
    return config
