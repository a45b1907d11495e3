"""Redis servers the tests start for themselves: a three-node cluster, a TLS-only server.

Each runs as ``redis-server`` processes on free loopback ports in a temporary directory, with no
persistence, and is stopped (by its own process ids) when the fixture ends. The machine's own
Redis (6379) is never touched. Without ``redis-server``/``redis-cli`` the tests skip with the
reason; under ``CI`` they fail instead.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def skip_or_fail(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: tests must not skip it", pytrace=False)
    pytest.skip(message)


def need_binaries(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        skip_or_fail(f"{' and '.join(missing)} not installed")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` free loopback ports (and, with ``bus``, each port + 10000 free too: a cluster
    node's bus port)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 55000 - 1)
        if port in ports or port == 6379:
            continue
        if _bindable(port) and (not bus or _bindable(port + 10000)):
            ports.append(port)
    return ports


def _wait(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _cli(*args: str, certs: dict[str, Path] | None = None) -> str:
    tls: list[str] = []
    if certs is not None:
        tls = ["--tls", "--cacert", str(certs["ca_cert"]), "--cert", str(certs["client_cert"]),
               "--key", str(certs["client_key"])]  # fmt: skip
    done = subprocess.run(
        ["redis-cli", *tls, *args], capture_output=True, text=True, timeout=20, check=False
    )
    return done.stdout + done.stderr


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextmanager
def redis_cluster(directory: Path, certs: dict[str, Path] | None = None) -> Iterator[list[int]]:
    """A three-node Redis Cluster (three primaries, no replicas); yields the node ports. With
    ``certs``, the nodes speak only TLS, to clients and to each other, and ask for client
    certificates."""
    need_binaries("redis-server", "redis-cli")
    ports = free_ports(3, bus=True)
    tls: list[str] = []
    if certs is not None:
        tls = ["--tls-cluster", "yes", "--tls-auth-clients", "yes",
               "--tls-cert-file", str(certs["server_cert"]),
               "--tls-key-file", str(certs["server_key"]),
               "--tls-ca-cert-file", str(certs["ca_cert"])]  # fmt: skip
    with _processes() as started:
        for port in ports:
            node = directory / str(port)
            node.mkdir()
            listen = ["--port", "0", "--tls-port", str(port)] if certs else ["--port", str(port)]
            started.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        *listen,
                        *tls,
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node / "nodes.conf"),
                        "--dir", str(node),
                        "--save", "",
                        "--appendonly", "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in ports:
            _wait(
                lambda port=port: "PONG" in _cli("-p", str(port), "ping", certs=certs),
                f"node {port}",
            )
        created = _cli(
            "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
            "--cluster-replicas", "0", "--cluster-yes", certs=certs,
        )  # fmt: skip
        if "[OK] All 16384 slots covered" not in created:
            raise RuntimeError(f"redis-cli --cluster create failed: {created}")
        for port in ports:
            _wait(
                lambda port=port: (
                    "cluster_state:ok" in _cli("-p", str(port), "cluster", "info", certs=certs)
                ),
                f"cluster_state:ok on {port}",
            )
        yield ports


@contextmanager
def tls_redis(directory: Path, certs: dict[str, Path]) -> Iterator[int]:
    """A ``redis-server`` that speaks only TLS (``--port 0``) and asks for client certificates;
    yields its TLS port. Skips (fails under CI) when redis-server was built without TLS."""
    need_binaries("redis-server")
    (port,) = free_ports(1)
    log = directory / "redis-tls.log"
    with _processes() as started:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port", "0",
                "--tls-port", str(port),
                "--bind", "127.0.0.1",
                "--tls-cert-file", str(certs["server_cert"]),
                "--tls-key-file", str(certs["server_key"]),
                "--tls-ca-cert-file", str(certs["ca_cert"]),
                "--tls-auth-clients", "yes",
                "--dir", str(directory),
                "--save", "",
                "--appendonly", "no",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = log.read_text(errors="replace")
                if "tls" in output.lower():
                    skip_or_fail(f"redis-server has no TLS support: {output.strip()[-200:]}")
                raise RuntimeError(f"redis-server with TLS did not start: {output[-500:]}")
            if not _bindable(port):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("redis-server with TLS did not start listening")
        yield port
