"""Forwarding benchmark: the gateway against minimal forwarders, with nginx as the upstream.

    .venv/bin/python -m benchmarks.forwarding [--duration 10] [--connections 32,128]
        [--targets direct,bare-aiohttp,...] [--out FILE.md] [--quick] [--rounds 3]

Every server binds 127.0.0.1 on a free port. The target under test runs alone under uvicorn on
CPU 0; nginx (the upstream), wrk (the load) and this script (the streaming probe) run on CPU 1.
Everything started here is stopped on exit, Ctrl-C or failure. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import http.client
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import litellm
from benchmarks.targets import DIR_ENV, ENV, FACTORIES
from benchmarks.upstream import (
    COMPLETION_BODY,
    LUA_SCRIPT,
    REQUEST_BODY,
    REQUEST_FILE,
    SSE_BODY,
    STREAM_REQUEST_BODY,
    write_nginx_files,
)

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["direct", *FACTORIES, "litellm"]
#: Run when --targets is not given: every target but LiteLLM, which needs its own install.
DEFAULT_TARGETS = [t for t in TARGETS if t != "litellm"]
BASELINE = "bare-aiohttp"
PATH = "/v1/chat/completions"
INSTALL_HINT = "apt-get install -y wrk nginx-light"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Debian installs nginx in /usr/sbin, which a non-root PATH may leave out.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
TARGET_CPU, LOAD_CPU = 0, 1


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


@dataclass
class Result:
    target: str
    conns: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    cpu_ms_per_req: float
    cpu_percent: float
    #: CPU 0 time the target did not use: other processes, interrupts, hypervisor steal.
    other_percent: float | None
    ttfb_p50_ms: float | None = None
    ratio: float | None = None
    rps_min: float | None = None
    rps_max: float | None = None


# ----------------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    # Children get SIGKILL if this script dies without running its cleanup (e.g. kill -9).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class Processes:
    """Processes started in their own process groups, all stopped by `stop_all`."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.running: list[subprocess.Popen[bytes]] = []

    def pinned(self, cpu: int, cmd: list[str]) -> list[str]:
        return ["taskset", "-c", str(cpu), *cmd] if self.pin else cmd

    def start(self, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self.running:
            self.running.remove(proc)
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.args} did not listen on port {port} in {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def cpu_busy(cpu: int) -> tuple[float, float]:
    """Busy and stolen seconds of one CPU since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK
    raise BenchError(f"no cpu{cpu} in /proc/stat")


# -------------------------------------------------------------------------------------- checks


def stream_request(name: str) -> bytes:
    """The streamed request for ``name``: LiteLLM streams through its ``bench-stream`` model."""
    if name != "litellm":
        return STREAM_REQUEST_BODY
    return STREAM_REQUEST_BODY.replace(b'"model":"gpt-4o-mini"', b'"model":"bench-stream"', 1)


def post(port: int, body: bytes, stream: bool) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    if stream:
        headers["X-Bench-Stream"] = "1"
    try:
        conn.request("POST", PATH, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("content-type", "")
    finally:
        conn.close()


def _same_answer(name: str, got: bytes, expected: bytes, stream: bool) -> bool:
    """The gateways relay the upstream's bytes unchanged; LiteLLM re-encodes every answer, so
    for it the check is that the answer is complete."""
    if name != "litellm":
        return got == expected
    if stream:
        return got.rstrip().endswith(b"data: [DONE]") and b"Rotterdam" in got
    return b"Rotterdam" in got


def verify(name: str, port: int) -> None:
    """One plain and one streamed request: each must be a 200 with the upstream's exact body."""
    for stream, body, expected, ctype in (
        (False, REQUEST_BODY, COMPLETION_BODY, "application/json"),
        (True, stream_request(name), SSE_BODY, "text/event-stream"),
    ):
        try:
            status, got, got_type = post(port, body, stream)
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"{name}: request failed: {exc!r}") from exc
        if (
            status != 200
            or not _same_answer(name, got, expected, stream)
            or not (got_type.startswith(ctype))
        ):
            kind = "streamed" if stream else "plain"
            raise BenchError(
                f"{name}: the {kind} check failed: status {status}, content-type {got_type!r}, "
                f"body {got[:300]!r} (expected 200, {ctype}, the upstream's {len(expected)} bytes)"
            )


# ----------------------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(out: str) -> dict[str, float]:
    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.MULTILINE)
        if m is None:
            raise BenchError(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return m

    p50 = find(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$")
    p99 = find(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "requests": int(find(r"^\s+(\d+) requests in").group(1)),
        "p50_ms": _ms(*p50.groups()),
        "p99_ms": _ms(*p99.groups()),
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def run_wrk(procs: Processes, port: int, conns: int, seconds: float) -> str:
    cmd = procs.pinned(
        LOAD_CPU,
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(LUA_SCRIPT),
            f"http://127.0.0.1:{port}{PATH}",
            "--",
            str(REQUEST_FILE),
        ],
    )
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish in {seconds + 30:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


# ------------------------------------------------------------------------------ streaming probe


def _recv(sock: socket.socket, buf: bytearray) -> None:
    data = sock.recv(65536)
    if not data:
        raise BenchError("the server closed the connection during the streaming probe")
    buf += data


def _read_response(sock: socket.socket, buf: bytearray, sent: float) -> tuple[int, bytes, float]:
    """Read one response; return its status, decoded body and time to the first body byte."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        _recv(sock, buf)
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    pos = end + 4
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    if not chunked and headers.get("content-length") == "0":
        del buf[:pos]
        return status, b"", time.perf_counter() - sent
    while len(buf) <= pos:
        _recv(sock, buf)
    ttfb = time.perf_counter() - sent
    if chunked:
        body = bytearray()
        while True:
            while (eol := buf.find(b"\r\n", pos)) < 0:
                _recv(sock, buf)
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            while len(buf) < pos + size + 2:
                _recv(sock, buf)
            if size == 0:
                pos += 2
                break
            body += buf[pos : pos + size]
            pos += size + 2
    else:
        length = int(headers["content-length"])
        while len(buf) < pos + length:
            _recv(sock, buf)
        body = buf[pos : pos + length]
        pos += length
    result = bytes(body)
    del buf[:pos]
    return status, result, ttfb


def probe_ttfb(name: str, port: int, count: int, warmup: int = 10) -> list[float]:
    """Sequential streamed requests over one keep-alive connection; seconds to first body byte."""
    body = stream_request(name)
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench\r\nX-Bench-Stream: 1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    times: list[float] = []
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + count):
            sent = time.perf_counter()
            sock.sendall(request)
            status, answer, ttfb = _read_response(sock, buf, sent)
            if status != 200 or not _same_answer(name, answer, SSE_BODY, True):
                raise BenchError(
                    f"{name}: streamed request {i} got {status}, body {answer[:200]!r}"
                )
            if i >= warmup:
                times.append(ttfb)
    return times


# ------------------------------------------------------------------------------------- the run


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tool_version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for dist in ("asgi-llmguard", "uvicorn", "uvloop", "httptools", "aiohttp", "httpx"):
        info[dist] = _version(dist)
    info["httpx-aiohttp"] = _version("httpx-aiohttp")
    info["nginx"] = _tool_version([str(NGINX), "-v"]).removeprefix("nginx version: ")
    info["wrk"] = _tool_version(["wrk", "-v"]).split(" [")[0]
    if litellm.BIN.exists():
        info["litellm"] = litellm.version()
    return info


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(results: list[Result]) -> str:
    ranges = any(r.rps_min is not None for r in results)
    head = ["target", "conns", "req/s", *(["req/s min-max"] if ranges else [])]
    head += ["vs bare-aiohttp", "p50 ms", "p99 ms", "CPU ms/req", "CPU %", "CPU 0 other %"]
    head += ["TTFB p50 ms", "non-2xx", "socket errors"]
    rows = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in results:
        cells = [r.target, str(r.conns), f"{r.rps:,.0f}"]
        if ranges:
            cells.append(f"{r.rps_min:,.0f}-{r.rps_max:,.0f}" if r.rps_min is not None else "")
        cells += [
            "n/a" if r.ratio is None else f"{r.ratio:.2f}x",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.cpu_ms_per_req:.3f}",
            f"{r.cpu_percent:.0f}",
            _fmt(r.other_percent, 0),
            _fmt(r.ttfb_p50_ms, 3),
            str(r.non_2xx),
            str(r.socket_errors),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def command(args: argparse.Namespace) -> str:
    cmd = "python -m benchmarks.forwarding" + (" --quick" if args.quick else "")
    cmd += f" --duration {args.duration:g} --connections {','.join(map(str, args.connections))}"
    if args.targets != DEFAULT_TARGETS:
        cmd += f" --targets {','.join(args.targets)}"
    if args.rounds > 1:
        cmd += f" --rounds {args.rounds}"
    return cmd


def report(results: list[Result], info: dict[str, str], args: argparse.Namespace) -> str:
    rounds = f"; the median of {args.rounds} rounds" if args.rounds > 1 else ""
    lines = [
        "## Forwarding benchmark",
        "",
        f"`{command(args)}`",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        table(results),
        "",
        f"req/s, p50, p99, non-2xx, socket errors: wrk, {args.duration:g} s per run{rounds}. "
        "CPU ms/req and CPU %: the target process (for `direct`: nginx). CPU 0 other %: the "
        "time of the target's CPU used by anything else (other processes, interrupts, "
        "hypervisor steal); a high value marks a noisy run. TTFB: time to the first byte of a "
        f"streamed body, median of {args.probe} sequential requests on one connection.",
        "",
    ]
    return "\n".join(lines)


def bench_target(
    name: str,
    port: int,
    pid: int,
    args: argparse.Namespace,
    procs: Processes,
) -> list[Result]:
    verify(name, port)
    results = []
    for conns in args.connections:
        run_wrk(procs, port, conns, args.warmup)
        cpu_before, busy_before = cpu_seconds(pid), cpu_busy(TARGET_CPU)
        start = time.monotonic()
        out = run_wrk(procs, port, conns, args.duration)
        wall = time.monotonic() - start
        cpu, busy = cpu_seconds(pid) - cpu_before, cpu_busy(TARGET_CPU)
        # Meaningful only when the target is alone on its CPU (not for `direct`).
        other = None
        if procs.pin and name != "direct":
            busy_s = busy[0] - busy_before[0] + busy[1] - busy_before[1]
            other = max(0.0, 100 * (busy_s - cpu) / wall)
        stats = parse_wrk(out)
        requests = max(int(stats["requests"]), 1)
        result = Result(
            target=name,
            conns=conns,
            rps=stats["rps"],
            p50_ms=stats["p50_ms"],
            p99_ms=stats["p99_ms"],
            requests=requests,
            non_2xx=int(stats["non_2xx"]),
            socket_errors=int(stats["socket_errors"]),
            cpu_ms_per_req=cpu * 1e3 / requests,
            cpu_percent=100 * cpu / wall,
            other_percent=other,
        )
        results.append(result)
        print(
            f"  {name} c={conns}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, CPU {result.cpu_ms_per_req:.3f} ms/req "
            f"({result.cpu_percent:.0f}%), non-2xx {result.non_2xx}, "
            f"errors {result.socket_errors}",
            flush=True,
        )
    try:
        ttfb = statistics.median(probe_ttfb(name, port, args.probe)) * 1e3
    except OSError as exc:
        raise BenchError(f"{name}: the streaming probe failed: {exc!r}") from exc
    for r in results:
        r.ttfb_p50_ms = ttfb
    print(f"  {name}: streaming TTFB p50 {ttfb:.3f} ms", flush=True)
    return results


def run_round(
    args: argparse.Namespace,
    procs: Processes,
    tmp: Path,
    env: dict[str, str],
    nginx: subprocess.Popen[bytes],
    nginx_port: int,
) -> list[Result]:
    results: list[Result] = []
    for name in args.targets:
        print(f"{name}:", flush=True)
        if name == "direct":
            results += bench_target(name, nginx_port, nginx.pid, args, procs)
            continue
        port, log = free_port(), tmp / f"{name}.log"
        if name == "litellm":
            config = litellm.write_config(tmp, env[ENV])
            cmd = litellm.command(config, port)
            proc = procs.start(procs.pinned(TARGET_CPU, cmd), log, litellm.environment(env))
        else:
            cmd = [sys.executable, "-m", "benchmarks.serve", name, str(port)]
            proc = procs.start(procs.pinned(TARGET_CPU, cmd), log, env)
        try:
            wait_for_port(port, proc, log, timeout=180 if name == "litellm" else 30)
            results += bench_target(name, port, proc.pid, args, procs)
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- {name} log ---\n{tail(log)}") from exc
        finally:
            procs.stop(proc)
        if logged := tail(log).strip():
            print(f"  {name} logged:\n{logged}", flush=True)
    return results


def run(args: argparse.Namespace) -> list[Result]:
    pin = (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    else:
        print("warning: fewer than 2 CPUs: nothing is pinned", file=sys.stderr)
    procs = Processes(pin)
    rounds: list[list[Result]] = []
    with tempfile.TemporaryDirectory(prefix="llmguard-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            nginx_port = free_port()
            conf = write_nginx_files(tmp, nginx_port)
            nginx_log = tmp / "nginx.out"
            cmd = [str(NGINX), "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
            nginx = procs.start(procs.pinned(LOAD_CPU, cmd), nginx_log, dict(os.environ))
            wait_for_port(nginx_port, nginx, nginx_log, timeout=10)
            upstream = f"http://127.0.0.1:{nginx_port}"
            print(f"upstream: nginx at {upstream} (pid {nginx.pid})", flush=True)
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            env[ENV] = upstream
            env[DIR_ENV] = str(tmp)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            for i in range(args.rounds):
                if args.rounds > 1:
                    print(f"-- round {i + 1} of {args.rounds}", flush=True)
                rounds.append(run_round(args, procs, tmp, env, nginx, nginx_port))
        finally:
            procs.stop_all()
    results = [_median(list(same)) for same in zip(*rounds, strict=True)]
    base = {r.conns: r.rps for r in results if r.target == BASELINE}
    for r in results:
        r.ratio = r.rps / base[r.conns] if r.conns in base else None
    return results


def _median(same: list[Result]) -> Result:
    """One result per (target, conns) from several rounds: the median of each number."""
    if len(same) == 1:
        return same[0]

    def med(field: str) -> float:
        return statistics.median(getattr(r, field) for r in same)

    others = [r.other_percent for r in same if r.other_percent is not None]
    ttfbs = [r.ttfb_p50_ms for r in same if r.ttfb_p50_ms is not None]
    return Result(
        target=same[0].target,
        conns=same[0].conns,
        rps=med("rps"),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        requests=sum(r.requests for r in same),
        non_2xx=sum(r.non_2xx for r in same),
        socket_errors=sum(r.socket_errors for r in same),
        cpu_ms_per_req=med("cpu_ms_per_req"),
        cpu_percent=med("cpu_percent"),
        other_percent=statistics.median(others) if others else None,
        ttfb_p50_ms=statistics.median(ttfbs) if ttfbs else None,
        rps_min=min(r.rps for r in same),
        rps_max=max(r.rps for r in same),
    )


def check_tools(targets: list[str]) -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if NGINX is None:
        missing.append("nginx")
    if missing:
        raise BenchError(
            f"missing: {', '.join(missing)}. On Debian/Ubuntu: {INSTALL_HINT} "
            "(taskset is in util-linux)"
        )
    if "litellm" in targets:
        try:
            litellm.ensure_installed(Path(tempfile.gettempdir()) / "llmguard-litellm-install.log")
        except litellm.Unavailable as exc:
            raise BenchError(f"LiteLLM is not available: {exc}") from exc
    if "bare-httpx-aiohttp" in targets and importlib.util.find_spec("httpx_aiohttp") is None:
        raise BenchError(
            "bare-httpx-aiohttp needs the httpx-aiohttp package: "
            ".venv/bin/pip install httpx-aiohttp (or leave it out with --targets)"
        )


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.forwarding",
        description="asgi_llmguard's forwarding against minimal forwarders, nginx as upstream.",
    )
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument(
        "--connections",
        type=lambda v: [int(c) for c in _csv(v)],
        default=[32],
        help="wrk connections, a comma-separated list (default 32)",
    )
    parser.add_argument(
        "--targets",
        type=_csv,
        default=DEFAULT_TARGETS,
        help=f"comma-separated subset of: {','.join(TARGETS)} (default all but litellm)",
    )
    parser.add_argument("--out", type=Path, help="write the markdown report to this file")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 3 s runs")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every target this many times, interleaved, and report medians (default 1)",
    )
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {TARGETS}")
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections takes positive integers, e.g. 32,128")
    args.targets = [t for t in TARGETS if t in args.targets]
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    args.warmup = 0.5 if args.quick else 1.0
    args.probe = 50 if args.quick else 200
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_tools(args.targets)
        info = machine_info()
        with _sigterm_as_interrupt():
            results = run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    text = report(results, info, args)
    print()
    print(text)
    if args.out:
        args.out.write_text(text)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
