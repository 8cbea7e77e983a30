"""Process plumbing shared by the local services: pid files, liveness, ports, logs."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from assessment_store.core import PortInUse

LogFn = Callable[[str], None]
"""Where a service reports progress (print, a Rich console, a test's list.append)."""

__all__ = [
    "LogFn",
    "ServiceStatus",
    "check_port_free",
    "is_alive",
    "port_holder",
    "private_log",
    "pss_bytes",
    "read_pid",
    "rss_bytes",
    "stop_pid",
    "tail",
    "wait_until",
]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    data: str
    log: str
    rss_bytes: int | None = None
    metrics: str | None = None
    """where the process serves Prometheus /metrics, if it does"""


def private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, created 0600 and made 0600 if it existed: service logs can
    hold request data, which other accounts must not read (like the Kafka and PostgreSQL data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def is_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when ``pid`` runs and, if given, its command line contains ``marker``.

    The marker (a path unique to this stack) guards against a recycled pid: after a reboot
    or a crash the pid file may name an unrelated process.
    """
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user (postgres runs as its own account)
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return False
        if marker is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return marker in cmdline
    except FileNotFoundError:
        return False
    return True


def _kb_field(path: str, key: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def rss_bytes(pid: int | None) -> int | None:
    return None if pid is None else _kb_field(f"/proc/{pid}/status", "VmRSS:")


def pss_bytes(pid: int) -> int | None:
    """Proportional set size: shared pages split among their users, so a sum over processes
    that share memory (PostgreSQL's backends) does not count shared buffers many times."""
    return _kb_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    return inodes


def port_holder(port: int) -> str | None:
    """'pid 123 (java)' for the process listening on ``port``, when /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        name = (proc / "comm").read_text().strip()
                        return f"pid {proc.name} ({name})"
    return None


def check_port_free(host: str, port: int, service: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(port, service, port_holder(port)) from e
            raise


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; returns the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def stop_pid(pid: int, marker: str | None, grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once the process is gone."""
    if not is_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not is_alive(pid, marker), grace_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not is_alive(pid, marker), 10.0)
    # Reap it if it is our child, so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
