"""Real servers for scale-out tests, all on loopback: PostgreSQL, an S3 store, nginx, replicas,
the HTTP proxy a hospital reaches the exchange through, and a load balancer with no exchange
behind it.

PostgreSQL comes from the Debian package: a throw-away cluster (initdb in a temporary folder,
pg_ctl on a free port). PostgreSQL refuses to run as root, so under root (CI) it runs as the
`postgres` system user with a data folder that user owns. Locally a missing peer skips its
test; under CI=true it fails (see support.peers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trustme

from support.peers import IN_CI, free_port, terminate

PG_USER = "aifi"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "aifi-test", "AWS_SECRET_ACCESS_KEY": "aifi-test-secret"}


def missing_peer(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll `predicate` (a server that gives no start-up signal) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# PostgreSQL --------------------------------------------------------------------------------


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version)
    if not found:
        missing_peer(
            "PostgreSQL not found under /usr/lib/postgresql: install the Debian package "
            "'postgresql' (make test does, as root)"
        )
    return found[-1].parent


def _version(path: Path) -> int:
    name = path.parent.parent.name
    return int(name) if name.isdigit() else 0


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of our own on 127.0.0.1:`port`, its data in a temporary folder."""

    bin_dir: Path
    data_dir: Path
    port: int
    as_user: list[str]
    options: str
    databases: int = 0
    durable: bool = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={database}"

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def create_database(self, prefix: str = "aifi") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        self.databases += 1
        name = f"{prefix}_{self.databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def start(self) -> None:
        log = str(self.data_dir / "server.log")
        self.pg_ctl("-l", log, "-o", self.options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """A fast shutdown: every client is disconnected, the data stays."""
        self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop (disconnecting every client) and start again on the same port and data."""
        self.stop()
        self.start()

    def base_backup(self, standby: bool = False) -> PostgresServer:
        """The cluster copied by `pg_basebackup` (its WAL streamed along) and started on a
        port of its own: the scratch host of deploy.md's restore drill, or (`standby`) a hot
        standby that goes on streaming from this server until it is promoted."""
        data = _new_data_folder("aifi-pg-copy-", self.as_user)
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_basebackup"), "-h", "127.0.0.1",
             "-p", str(self.port), "-U", PG_USER, "-D", str(data), "-X", "stream",
             "--checkpoint=fast", "--no-sync", *(["-R"] if standby else [])],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        port = free_port()
        options = _server_options(port, data, self.durable)
        copy = PostgresServer(self.bin_dir, data, port, self.as_user, options, durable=self.durable)
        copy.start()
        return copy

    def promote(self) -> None:
        """Make a standby the primary (deploy.md's failover)."""
        self.pg_ctl("-w", "-t", "60", "promote")

    def crash(self) -> None:
        """Stop at once, as a power cut would: no checkpoint, clients cut off."""
        self.pg_ctl("-m", "immediate", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.pg_ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres(durable: bool = False) -> PostgresServer:
    """initdb + pg_ctl start, as the `postgres` user when we are root; `durable`: every
    commit flushed, as in production (a test that fails a server over needs that)."""
    bin_dir = postgres_bin()
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            missing_peer("runuser (util-linux) is needed to run PostgreSQL as 'postgres'")
        as_user = [str(runuser), "-u", "postgres", "--"]
    data = _new_data_folder("aifi-pg-", as_user)
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
         "-E", "UTF8", "--no-sync", "--no-instructions"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    options = _server_options(port, data, durable)
    server = PostgresServer(bin_dir, data, port, as_user, options, durable=durable)
    server.start()
    return server


def _server_options(port: int, data: Path, durable: bool = False) -> str:
    settings = [
        "listen_addresses=127.0.0.1",
        f"port={port}",
        f"unix_socket_directories={data}",
        "max_connections=300",
        "shared_buffers=64MB",
        # The server's own time zone is a Dutch operator's, not UTC: whatever the exchange
        # stores and reads must not depend on the server's zone.
        "timezone=Europe/Amsterdam",
    ]
    if not durable:
        # A test cluster: its data is thrown away, so durability is not worth the fsyncs.
        settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    return " ".join(f"-c {setting}" for setting in settings)


def _new_data_folder(prefix: str, as_user: list[str]) -> Path:
    """An empty data folder (under a temporary one), owned by `postgres` when we are root."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    data = folder / "data"
    data.mkdir(mode=0o700)
    if as_user:
        os.chmod(folder, 0o755)
        shutil.chown(data, "postgres", "postgres")
    return data


def shared_postgres(config: pytest.Config) -> PostgresServer:
    """One PostgreSQL per test session, shared by every folder's fixtures, stopped at the end."""
    server = config.stash.get(_POSTGRES, None)
    if server is None:
        server = start_postgres()
        config.stash[_POSTGRES] = server
        config.add_cleanup(server.destroy)
    return server


_POSTGRES = pytest.StashKey[PostgresServer]()


# S3 ----------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """An S3-compatible server (moto) on loopback, standing in for MinIO or a cloud store."""

    port: int
    server: Any
    buckets: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blob_url(self, prefix: str = "aifi", **params: str) -> str:
        """A new bucket's `AIFI_BLOB_URL`."""
        self.buckets += 1
        extra = "".join(f"&{name}={value}" for name, value in params.items())
        return f"s3://{prefix}-{self.buckets}?endpoint={self.endpoint}{extra}"


def shared_s3(config: pytest.Config) -> S3Server:
    server = config.stash.get(_S3, None)
    if server is None:
        os.environ.update(S3_CREDENTIALS)
        port = free_port()
        moto = start_moto(port)
        server = S3Server(port, moto)
        config.stash[_S3] = server
        config.add_cleanup(moto.stop)
    return server


_S3 = pytest.StashKey[S3Server]()


def start_moto(port: int) -> Any:
    """An S3 server (moto) answering on loopback `port`. Every server of this process keeps
    its buckets in one place, so one stopped and started again on its port still has them."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    return moto


# exchange replicas and nginx ---------------------------------------------------------------


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Replica:
    """One `aifi exchange` process; a test may SIGKILL it and start it again on its port."""

    port: int
    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path | None = None
    cpu: int | None = None  # `--cpu`: pinned to this core

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        """Start the process without waiting for it to answer."""
        self.starts += 1
        self.log = self.folder / f"replica-{self.starts}.log"
        pinned = [] if self.cpu is None else ["--cpu", str(self.cpu)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aifi.cli", "exchange", "--port", str(self.port),
             "--data-dir", str(self.folder), *pinned],
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_healthy(self, timeout: float = 60) -> Replica:
        process = self.process
        assert process is not None
        wait_for(
            lambda: healthy(self.url) or process.poll() is not None, timeout, f"replica {self.url}"
        )
        if process.poll() is not None:
            raise RuntimeError(f"replica on {self.port} exited; see {self.log}")
        return self

    def start(self, timeout: float = 60) -> Replica:
        self.launch()
        return self.wait_healthy(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def replica_env(
    database_url: str, blob_url: str, operator_key: str, **extra: str
) -> dict[str, str]:
    env = {
        **os.environ,
        **S3_CREDENTIALS,
        "AIFI_DATABASE_URL": database_url,
        "AIFI_BLOB_URL": blob_url,
        "AIFI_OPERATOR_KEY": operator_key,
        # A test exchange: products take jobs as soon as they are registered.
        "AIFI_ADMIT_ON_REGISTER": "true",
    }
    env.update({f"AIFI_{name.upper()}": value for name, value in extra.items()})
    return env


NGINX_CONF = """
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
daemon off;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
{balancer}
}}
"""

#: The balancer the replica tests run: plain HTTP on loopback, quick to mark a dead one down.
BALANCER = """
    client_max_body_size 0;
    upstream exchange {{
{servers}
        keepalive 64;
        keepalive_timeout 4s;  # below a replica's 65 s, so nginx never reuses a closed one
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://exchange;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 120s;
            proxy_connect_timeout 2s;
            # Only a replica that cannot be reached is skipped (and marked down); a 503 from
            # a live replica (its database restarting) goes to the client, which retries.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
        }}
    }}
"""

DEPLOY_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path = field(repr=False)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.process)


def start_nginx(folder: Path, upstream_ports: list[int]) -> Nginx:
    """nginx (Debian package) balancing over the replicas, as a production load balancer."""
    port = free_port()
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstream_ports
    )
    return _run_nginx(folder, port, BALANCER.format(servers=servers, port=port))


def start_tls_balancer(folder: Path, upstream_ports: list[int], ca: trustme.CA) -> Nginx:
    """The load balancer of docs/deploy.md, its nginx block as printed: only the replicas'
    addresses, the port to listen on and the certificate's paths are this machine's. The
    certificate, issued by `ca`, names `localhost` and 127.0.0.1."""
    [block] = re.findall(r"```nginx\n(.*?)```", DEPLOY_GUIDE.read_text(), re.S)
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(folder / "privkey.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "fullchain.pem"))
    port = free_port()
    documented = re.findall(r"^ *server \S+:\d+ (.*);$", block, re.M)
    assert documented, "docs/deploy.md names no upstream servers"
    servers = "\n".join(f"    server 127.0.0.1:{p} {documented[0]};" for p in upstream_ports)
    block = re.sub(r"(^ *server \S+:\d+ .*;\n)+", servers + "\n", block, count=1, flags=re.M)
    block = block.replace("listen 443 ", f"listen 127.0.0.1:{port} ")
    block = block.replace("/etc/ssl/aifi/", f"{folder}/")
    assert f"127.0.0.1:{port}" in block and f"{folder}/" in block, block
    nginx = _run_nginx(folder, port, block, healthz=False)
    nginx.scheme = "https"
    return nginx


def _run_nginx(folder: Path, port: int, balancer: str, healthz: bool = True) -> Nginx:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        missing_peer("nginx not found: install the Debian package 'nginx' (make test does)")
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            folder=folder,
            balancer=balancer,
            user="user root;" if os.geteuid() == 0 else "",
        )
    )
    process = subprocess.Popen(
        [str(exe), "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "nginx.out").open("wb"),
    )
    nginx = Nginx(port, process, folder)
    ready = (lambda: healthy(nginx.url)) if healthz else (lambda: listening(port))
    wait_for(lambda: ready() or process.poll() is not None, 30, f"nginx on {port}")
    if process.poll() is not None:
        raise RuntimeError(f"nginx did not start; see {folder / 'error.log'}")
    return nginx


def listening(port: int) -> bool:
    """Whether something accepts connections on the loopback `port`."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


# tinyproxy ---------------------------------------------------------------------------------

TINYPROXY_CONF = """
{user}
Port {port}
Listen 127.0.0.1
Timeout 600
LogLevel Connect
MaxClients 64
Allow 127.0.0.1
DisableViaHeader Yes
"""


@dataclass
class Proxy:
    """tinyproxy (Debian package): the HTTP proxy a hospital's network sends HTTPS out by."""

    port: int
    process: subprocess.Popen[bytes]
    folder: Path = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tunnels(self) -> list[str]:
        """The host:port of every CONNECT tunnel the proxy was asked for so far (logged before
        it answers; without a log file tinyproxy logs to its standard output)."""
        log = (self.folder / "tinyproxy.log").read_text(errors="replace")
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) ", log)

    def stop(self) -> None:
        terminate(self.process)


def start_proxy(folder: Path) -> Proxy:
    exe = shutil.which("tinyproxy") or (
        "/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None
    )
    if exe is None:
        missing_peer("tinyproxy not found: install the Debian package 'tinyproxy' (make test does)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "tinyproxy.conf"
    conf.write_text(
        TINYPROXY_CONF.format(
            port=port,
            user="User nobody\nGroup nogroup" if os.geteuid() == 0 else "",
        )
    )
    process = subprocess.Popen(
        [str(exe), "-d", "-c", str(conf)],
        stdout=(folder / "tinyproxy.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    proxy = Proxy(port, process, folder)
    wait_for(lambda: listening(port) or process.poll() is not None, 30, f"tinyproxy on {port}")
    if process.poll() is not None:
        raise RuntimeError(f"tinyproxy did not start; see {folder / 'tinyproxy.log'}")
    return proxy


class _CountedBadGateway(socketserver.StreamRequestHandler):
    """What a load balancer with no exchange behind it answers: 502, closing the connection.
    Requests bearing the server's key are counted."""

    def handle(self) -> None:
        server: BadGateway = self.server  # type: ignore[assignment]
        head = []
        while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            head.append(line)  # the head says whose it is; a body is left unread
        if any(server.key in line for line in head):
            with server.lock:
                server.requests += 1
        self.wfile.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )


class BadGateway(socketserver.ThreadingTCPServer):
    """A load balancer on loopback with no exchange behind it (`bad_gateway`)."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, key: str) -> None:
        super().__init__(("127.0.0.1", port), _CountedBadGateway)
        self.key = key.encode()
        self.lock = threading.Lock()
        self.requests = 0


@contextlib.contextmanager
def bad_gateway(port: int, key: str) -> Iterator[BadGateway]:
    """`BadGateway` on `port`, serving until the block ends; `requests` counts those
    bearing `key` (an API key)."""
    server = BadGateway(port, key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
