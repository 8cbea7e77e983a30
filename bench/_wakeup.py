"""What one message between two processes costs this machine in CPU, busy and after a pause.

Two processes exchange a 50-byte message over loopback TCP (``TCP_NODELAY``, blocking sockets,
no event loop, no library), N round trips back to back and then N with a pause between them, the
way a command at a time finds every process of the pipeline asleep. The CPU per round trip of
each side comes from ``getrusage``. On a virtual machine a wake-up from idle can cost several
times a busy one; every hop of the command path pays it, which is why a lone command costs far
more CPU than one in a batch (``bench.commands`` prints this beside its figures).
"""

from __future__ import annotations

import os
import resource
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RoundTripCost:
    pause_s: float
    caller_us: float
    """CPU µs per round trip of the side that sends first"""
    answerer_us: float
    """CPU µs per round trip of the side that echoes"""

    @property
    def total_us(self) -> float:
        return self.caller_us + self.answerer_us


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def round_trip_cost(n: int, pause_s: float, port: int) -> RoundTripCost:
    """``n`` round trips with ``pause_s`` between them (0: back to back), on 127.0.0.1:``port``."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    pid = os.fork()
    if pid == 0:  # the answerer: echo n messages, report its CPU through the exit (wait4's rusage)
        try:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(n):
                conn.sendall(conn.recv(64))
        finally:
            os._exit(0)
    srv.close()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        before = _cpu_s(resource.RUSAGE_SELF)
        for _ in range(n):
            c.sendall(b"x" * 50)
            c.recv(64)
            if pause_s:
                time.sleep(pause_s)
        caller = _cpu_s(resource.RUSAGE_SELF) - before
    _, _, usage = os.wait4(pid, 0)
    answerer = usage.ru_utime + usage.ru_stime
    return RoundTripCost(pause_s, caller / n * 1e6, answerer / n * 1e6)
