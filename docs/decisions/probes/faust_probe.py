"""Probe: is faust-streaming fit to drive a latency-sensitive command processor?

What it measures
----------------
Produce -> receive latency of one consumer engine against a real Kafka broker, under
the access pattern of a command processor that is mostly idle and must answer fast
when a command does arrive (faust-streaming issue #306 reports ~10 s stalls after
idle periods):

* startup: time from "app start" (the line before ``faust.Worker(...)`` /
  ``AIOKafkaConsumer.start()`` in the worker process) until the first message, which
  was produced *before* the worker was spawned, is received;
* steady state: 20 messages back-to-back, each one sent as soon as the previous one
  was received (closed loop), latency p50 / p95 / max;
* after idle: silence of 5 s, 15 s and 30 s, each followed by one message; the
  latency of that message.

Scenarios (each in its own worker subprocess, own topic, own group / app id):

  A  faust     faust-streaming App (``store="memory://"``, ``web_enabled=False``)
               with one agent, run by ``faust.Worker`` like a production worker.
  B  aiokafka  plain ``AIOKafkaConsumer`` in a consumer group (defaults).
  C  faust-eos as A with ``processing_guarantee="exactly_once"``; the agent forwards
               every message to an output topic (Kafka transactions).
  D  aiokafka-eos  consume-transform-produce with a transactional AIOKafkaProducer,
               one transaction per fetched batch (``send_offsets_to_transaction``).

For C and D two rows are printed: the latency until the worker *receives* the
message, and the latency until its output is *visible* to a ``read_committed``
consumer of the output topic (what a caller of an exactly-once command processor
waits for). In C and D the closed loop waits for that visibility before the next
send. The EOS scenarios do one idle period (5 s) to keep the run short, then a
crash test: the worker is SIGKILLed right after handling a message (once its
output is visible, or 300 ms), restarted with the same group / transactional ids
(static group membership, so the successor takes over at once), and the copies of
that message's output visible to ``read_committed`` are counted. Exactly-once
means 1: either output and input offset were committed together before the kill,
or neither was and the successor processes the message again inside a new
transaction. 2 means the output escaped the transaction (duplicate).

Time stamps are ``time.time()`` in the probe (just before ``send_and_wait``) and in
the worker (on receipt); both run on the same machine. The producer is an
idempotent ``acks=all`` AIOKafkaProducer, like the project's. Producer ack times are
reported too, to tell a producer-side stall from a consumer-side one.

How to run
----------
The probe does not start a broker. Start a private one (its own ports and data dir)
from the repository root, run the probe, stop the broker::

    export ASSESSMENT_STORE_DATA_DIR=/tmp/faustprobe/.data \\
           ASSESSMENT_STORE_KAFKA_PORT=29792 \\
           ASSESSMENT_STORE_KAFKA_CONTROLLER_PORT=39093 \\
           ASSESSMENT_STORE_POSTGRES_PORT=39094
    .venv/bin/assessment-store stack up kafka
    KAFKA_BOOTSTRAP=127.0.0.1:29792 .venv/bin/python docs/decisions/probes/faust_probe.py
    .venv/bin/assessment-store stack down kafka

``KAFKA_BOOTSTRAP`` defaults to ``127.0.0.1:29792``. Options: ``--scenarios A,B`` runs
a subset; ``--idle 5,15,30``, ``--eos-idle 5`` and ``--steady 20`` change the pattern
(``--idle 600`` probes the 9-10 min idle-connection limits of client and broker);
``--partitions`` (1-3, default 3); ``--verbose`` prints every sample; ``--no-crash-test``;
``--keep-topics``; ``--txn-retry-backoff-ms`` (``retry_backoff_ms`` of D's transactional
producer, aiokafka's default 100: a transaction step answered CONCURRENT_TRANSACTIONS
because the previous commit's markers are still being written waits that long, which
shows up as ~110 ms outliers; 10 removes them). A full run takes about 2 minutes.
Topics are created per run with a uuid suffix and deleted at the end. Exit status 0
when the probe ran (a scenario that fails to deliver is a finding and is reported as
such), 1 when the broker is unreachable, 2 on bad arguments.

Other load on the machine shows up as tail latency: the load average is printed at the
start and the end; run it twice.

The worker processes are this same file, started as
``python docs/decisions/probes/faust_probe.py --worker {faust,faust-eos,aiokafka,aiokafka-eos} ...``;
they append JSON lines ({"event", "t", "seq"}) to a receipts file, which the probe
polls, and log to a file next to it (kept in a temp dir, path printed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from assessment_store import Settings
from assessment_store.streams import kafka_client_options

DEFAULT_BOOTSTRAP = "127.0.0.1:29792"
STARTUP_TIMEOUT_S = 90.0
RECEIPT_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 20.0

WORKER_KINDS = ("faust", "faust-eos", "aiokafka", "aiokafka-eos")


def _kafka(bootstrap: str) -> dict[str, Any]:
    """The store's client options for ``bootstrap``: the ASSESSMENT_STORE_KAFKA_* security settings of
    the environment apply here as in the store (the faust workers connect with faust's own settings)."""
    return kafka_client_options(Settings(bootstrap_servers=bootstrap), "admin")


# --------------------------------------------------------------------------- worker side


class ReceiptLog:
    """Append-only JSON-lines file the worker writes its receipts to."""

    def __init__(self, path: Path) -> None:
        self._fh: IO[str] = path.open("a", buffering=1, encoding="utf-8")

    def note(self, event: str, t: float | None = None, **fields: Any) -> None:
        record: dict[str, Any] = {"event": event, "t": time.time() if t is None else t}
        record.update(fields)
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()


def run_faust_worker(args: argparse.Namespace) -> None:
    """Run a faust worker with one agent on ``args.topic`` until SIGTERM."""
    log = ReceiptLog(Path(args.receipts))
    log.note("process")
    import faust  # imported here: the probe itself does not need faust loaded

    eos = args.worker == "faust-eos"
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        web_enabled=False,
        processing_guarantee="exactly_once" if eos else "at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        # static membership: a restarted worker takes over at once instead of waiting
        # for the killed one's 60 s session to expire (only the crash test restarts)
        consumer_group_instance_id=f"{args.app_id}-0" if eos else None,
    )
    in_topic = app.topic(args.topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
    out_topic = (
        app.topic(args.out_topic, key_type=bytes, value_type=bytes,
                  key_serializer="raw", value_serializer="raw")
        if eos
        else None
    )

    async def on_command(stream: Any) -> None:
        async for event in stream.events():
            t = time.time()
            value: bytes = event.value
            log.note("recv", t=t, seq=json.loads(value)["seq"])
            if out_topic is not None:
                await out_topic.send(key=event.key, value=value)

    app.agent(in_topic, name="probe-agent")(on_command)

    log.note("app_start")
    worker = faust.Worker(app, loglevel="info", quiet=True)
    worker.execute_from_commandline()


async def _aiokafka_worker(args: argparse.Namespace) -> None:
    log = ReceiptLog(Path(args.receipts))
    log.note("process")
    eos = args.worker == "aiokafka-eos"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    log.note("app_start")
    consumer = AIOKafkaConsumer(
        args.topic,
        **_kafka(args.bootstrap),
        group_id=args.app_id,
        auto_offset_reset="earliest",
        enable_auto_commit=not eos,
        isolation_level="read_committed" if eos else "read_uncommitted",
        group_instance_id=f"{args.app_id}-0" if eos else None,
    )
    producer: AIOKafkaProducer | None = None
    if eos:
        producer = AIOKafkaProducer(
            **_kafka(args.bootstrap),
            transactional_id=f"{args.app_id}-tx",
            enable_idempotence=True,
            acks="all",
            retry_backoff_ms=args.txn_retry_backoff_ms,
        )
        await producer.start()
    await consumer.start()

    async def consume() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                continue
            t = time.time()
            for records in batches.values():
                for rec in records:
                    log.note("recv", t=t, seq=json.loads(rec.value)["seq"])
            if producer is None:
                continue
            async with producer.transaction():
                offsets: dict[TopicPartition, int] = {}
                for tp, records in batches.items():
                    for rec in records:
                        await producer.send(args.out_topic, key=rec.key, value=rec.value)
                    offsets[tp] = records[-1].offset + 1
                await producer.send_offsets_to_transaction(offsets, args.app_id)
            t_done = time.time()
            for records in batches.values():
                for rec in records:
                    log.note("txn_committed", t=t_done, seq=json.loads(rec.value)["seq"])

    task = asyncio.create_task(consume())
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:  # consume() only ends by raising
            log.note("crash", error=repr(task.exception()))
            raise SystemExit(1)
    finally:
        task.cancel()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError):
            await task
        await consumer.stop()
        if producer is not None:
            await producer.stop()


def run_aiokafka_worker(args: argparse.Namespace) -> None:
    """Run a plain aiokafka consumer (optionally transactional) until SIGTERM."""
    asyncio.run(_aiokafka_worker(args))


# --------------------------------------------------------------------------- probe side


@dataclass(frozen=True)
class Scenario:
    key: str
    worker: str
    label: str
    eos: bool


SCENARIOS: dict[str, Scenario] = {
    "A": Scenario("A", "faust", "faust", False),
    "B": Scenario("B", "aiokafka", "aiokafka", False),
    "C": Scenario("C", "faust-eos", "faust exactly_once", True),
    "D": Scenario("D", "aiokafka-eos", "aiokafka transactional", True),
}


@dataclass
class Sample:
    seq: int
    phase: str  # "first", "steady", "idle-5" ...
    sent: float
    acked: float
    received: float | None = None
    committed: float | None = None
    txn_done: float | None = None  # D only: when the worker's commit_transaction returned

    @property
    def ack_ms(self) -> float:
        return (self.acked - self.sent) * 1000.0

    @property
    def recv_ms(self) -> float | None:
        return None if self.received is None else (self.received - self.sent) * 1000.0

    @property
    def commit_ms(self) -> float | None:
        return None if self.committed is None else (self.committed - self.sent) * 1000.0


@dataclass
class Outcome:
    scenario: Scenario
    samples: list[Sample] = field(default_factory=list)
    app_start: float | None = None
    process_start: float | None = None
    spawned: float = 0.0
    notes: list[str] = field(default_factory=list)
    log_paths: list[Path] = field(default_factory=list)
    crash: str | None = None
    crash_verdict: str = ""

    def first(self) -> Sample | None:
        return next((s for s in self.samples if s.phase == "first"), None)

    def startup_s(self) -> float | None:
        first = self.first()
        if first is None or first.received is None or self.app_start is None:
            return None
        return first.received - self.app_start


class ReceiptReader:
    """Polls the worker's receipts file (shared by a worker and its restarted successor)."""

    def __init__(self, path: Path) -> None:
        path.touch()
        self._fh: IO[str] = path.open("r", encoding="utf-8")
        self._buf = ""
        self.received: dict[int, list[float]] = {}
        self.txn_committed: dict[int, float] = {}
        self.events: dict[str, list[float]] = {}

    def drain(self) -> None:
        self._buf += self._fh.read()
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec["event"] == "recv":
                self.received.setdefault(int(rec["seq"]), []).append(float(rec["t"]))
            elif rec["event"] == "txn_committed":
                self.txn_committed.setdefault(int(rec["seq"]), float(rec["t"]))
            else:
                self.events.setdefault(str(rec["event"]), []).append(float(rec["t"]))

    def last_event(self, name: str) -> float | None:
        self.drain()
        times = self.events.get(name)
        return times[-1] if times else None

    async def wait_for(self, seq: int, timeout: float, proc: subprocess.Popen[bytes],
                       count: int = 1) -> float | None:
        """Time of the ``count``-th receipt of ``seq``, or None (timeout / worker died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            times = self.received.get(seq, [])
            if len(times) >= count:
                return times[count - 1]
            if proc.poll() is not None:
                return None
            await asyncio.sleep(0.002)
        return None


class CommittedObserver:
    """read_committed consumer of an output topic: when (and how often) each seq is visible."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.visible: dict[int, list[float]] = {}
        self._consumer = AIOKafkaConsumer(
            **_kafka(bootstrap),
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            t = time.time()
            for records in batches.values():
                for rec in records:
                    self.visible.setdefault(int(json.loads(rec.value)["seq"]), []).append(t)

    def copies(self, seq: int) -> int:
        return len(self.visible.get(seq, []))

    async def wait_for(self, seq: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seq in self.visible:
                return self.visible[seq][0]
            await asyncio.sleep(0.002)
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**_kafka(bootstrap), request_timeout_ms=15000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    """Create the topics and wait until every partition has a leader."""
    async with admin_client(bootstrap) as admin:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            described = await admin.describe_topics(list(names))
            ready = [d for d in described if d.get("error_code", 0) == 0
                     and len(d.get("partitions", [])) == partitions
                     and all(p.get("leader", -1) >= 0 for p in d["partitions"])]
            if len(ready) == len(names):
                return
            await asyncio.sleep(0.1)


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic`` (what a restarted worker resumes from)."""
    async with admin_client(bootstrap) as admin:
        offsets = await admin.list_consumer_group_offsets(group)
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def spawn_worker(sc: Scenario, args: argparse.Namespace, run_dir: Path, topic: str,
                 out_topic: str, app_id: str,
                 incarnation: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
    receipts = run_dir / f"{sc.key}-receipts.jsonl"
    log_path = run_dir / f"{sc.key}-worker-{incarnation}.log"
    cmd = [
        sys.executable, os.path.abspath(__file__),
        "--worker", sc.worker,
        "--bootstrap", args.bootstrap,
        "--topic", topic,
        "--out-topic", out_topic,
        "--app-id", app_id,
        "--partitions", str(args.partitions),
        "--receipts", str(receipts),
        "--txn-retry-backoff-ms", str(args.txn_retry_backoff_ms),
    ]
    with log_path.open("wb") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(run_dir))
    return proc, receipts, log_path


def stop_worker(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is not None:
        return f"worker had exited with status {proc.returncode}"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"worker ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s, killed"
    return f"worker stopped on SIGTERM in {time.monotonic() - t0:.1f} s (status {proc.returncode})"


class Run:
    """One scenario: topics, producer-side sends, the worker process and its receipts."""

    def __init__(self, sc: Scenario, args: argparse.Namespace, run_id: str, run_dir: Path,
                 producer: AIOKafkaProducer) -> None:
        self.sc, self.args, self.run_dir, self.producer = sc, args, run_dir, producer
        prefix = f"faustprobe-{run_id}-{sc.key.lower()}"
        self.topic, self.out_topic, self.app_id = f"{prefix}-in", f"{prefix}-out", f"{prefix}-app"
        self.out = Outcome(sc)
        self.seq = 0
        self.observer: CommittedObserver | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: ReceiptReader | None = None
        self.incarnation = 0

    def spawn(self) -> tuple[subprocess.Popen[bytes], ReceiptReader]:
        self.incarnation += 1
        proc, receipts, log_path = spawn_worker(self.sc, self.args, self.run_dir, self.topic,
                                                self.out_topic, self.app_id, self.incarnation)
        self.out.log_paths.append(log_path)
        if self.reader is None:
            self.reader = ReceiptReader(receipts)
        self.proc = proc
        return proc, self.reader

    async def send(self, phase: str, key_of: int | None = None) -> Sample:
        seq = self.seq
        self.seq += 1
        payload = json.dumps({"seq": seq, "phase": phase}).encode()
        key = f"cmd-{(seq if key_of is None else key_of) % 7}".encode()
        sent = time.time()
        await self.producer.send_and_wait(self.topic, payload, key=key)
        sample = Sample(seq, phase, sent, time.time())
        self.out.samples.append(sample)
        return sample

    async def exchange(self, phase: str) -> Sample:
        """Send one message, wait for its receipt (and, for EOS, its committed output)."""
        assert self.proc is not None and self.reader is not None
        s = await self.send(phase)
        s.received = await self.reader.wait_for(s.seq, RECEIPT_TIMEOUT_S, self.proc)
        if s.received is None:
            self.out.notes.append(
                f"{phase}: seq {s.seq} not received within {RECEIPT_TIMEOUT_S:.0f} s")
        elif self.observer is not None:
            s.committed = await self.observer.wait_for(s.seq, RECEIPT_TIMEOUT_S)
            self.reader.drain()
            s.txn_done = self.reader.txn_committed.get(s.seq)
            if s.committed is None:
                self.out.notes.append(f"{phase}: output of seq {s.seq} not visible to "
                                      f"read_committed within {RECEIPT_TIMEOUT_S:.0f} s")
        return s

    async def crash_test(self) -> None:
        """SIGKILL the worker right after it handled a message, restart it, count output copies.

        Exactly-once means the output of the interrupted message is visible to a
        read_committed reader exactly once after the restart: either the transaction
        (output + input offset) committed before the kill, or it is aborted and the
        message is processed again by the successor.
        """
        assert self.proc is not None and self.reader is not None and self.observer is not None
        s = await self.send("crash")
        s.received = await self.reader.wait_for(s.seq, RECEIPT_TIMEOUT_S, self.proc)
        if s.received is None:
            self.out.notes.append("crash test: message not received, skipped")
            return
        # let the worker emit its output (up to 300 ms), then kill it without warning
        s.committed = await self.observer.wait_for(s.seq, 0.3)
        self.proc.kill()
        self.proc.wait()
        killed = time.time()
        pre_restart = await committed_offsets(self.args.bootstrap, self.app_id, self.topic)
        visible_at_kill = self.observer.copies(s.seq)
        proc, reader = self.spawn()
        # a message on the same key (same partition) after the crash message: once its
        # output is visible, the successor has (re)processed everything before it
        probe = await self.send("after-restart", key_of=s.seq)
        probe.received = await reader.wait_for(probe.seq, STARTUP_TIMEOUT_S, proc)
        probe.committed = await self.observer.wait_for(probe.seq, RECEIPT_TIMEOUT_S)
        await asyncio.sleep(0.5)
        reprocessed = len(reader.received.get(s.seq, [])) > 1
        copies = self.observer.copies(s.seq)
        restart_s = "timeout" if probe.received is None else f"{probe.received - killed:.2f} s"
        self.out.crash_verdict = ("held" if copies == 1 else
                                  f"{copies} copies" if copies > 1 else "output lost")
        self.out.crash = (
            f"crash test: SIGKILL right after handling seq {s.seq} (output visible at kill: "
            f"{visible_at_kill}); committed input offsets at restart {pre_restart}; restart -> "
            f"next message {restart_s}; message reprocessed: {'yes' if reprocessed else 'no'}; "
            f"output copies visible to read_committed: {copies} -> "
            + ("EXACTLY ONCE held" if copies == 1 else
               "DUPLICATE (exactly-once violated)" if copies > 1 else "LOST")
        )

    async def run(self) -> Outcome:
        sc, args, out = self.sc, self.args, self.out
        await create_topics(args.bootstrap, [self.topic, self.out_topic], args.partitions)
        if sc.eos:
            self.observer = CommittedObserver(args.bootstrap, self.out_topic, args.partitions)
            await self.observer.start()
        first = await self.send("first")  # produced before the worker exists
        out.spawned = time.time()
        proc, reader = self.spawn()
        print(f"[{sc.key}] {sc.label}: worker pid {proc.pid} spawned", flush=True)
        try:
            first.received = await reader.wait_for(first.seq, STARTUP_TIMEOUT_S, proc)
            out.app_start = reader.last_event("app_start")
            out.process_start = reader.last_event("process")
            if first.received is None:
                out.notes.append(f"first message not received within {STARTUP_TIMEOUT_S:.0f} s")
                return out
            if self.observer is not None:
                first.committed = await self.observer.wait_for(first.seq, RECEIPT_TIMEOUT_S)
            print(f"[{sc.key}] first message after {out.startup_s() or 0.0:.2f} s", flush=True)
            for _ in range(args.steady):
                if (await self.exchange("steady")).received is None:
                    break
            for idle in (args.eos_idle if sc.eos else args.idle):
                print(f"[{sc.key}] idle {idle:g} s", flush=True)
                await asyncio.sleep(idle)
                s = await self.exchange(f"idle-{idle:g}")
                print(f"[{sc.key}]   -> receive {_fmt(s.recv_ms)} ms"
                      + (f", committed {_fmt(s.commit_ms)} ms" if sc.eos else ""), flush=True)
            if sc.eos and args.crash_test:
                print(f"[{sc.key}] crash test", flush=True)
                await self.crash_test()
                print(f"[{sc.key}] {out.crash}", flush=True)
        finally:
            if self.proc is not None:
                out.notes.append(stop_worker(self.proc))
            if self.observer is not None:
                await self.observer.stop()
        if sc.eos:
            try:
                offsets = await committed_offsets(args.bootstrap, self.app_id, self.topic)
                out.notes.append(f"group's committed input offsets at the end: {offsets} "
                                 f"(sum {sum(offsets.values())}, {self.seq} messages sent)")
            except KafkaError as exc:
                out.notes.append(f"could not read committed offsets: {exc!r}")
        for path in out.log_paths:
            out.notes.extend(scan_log(path))
        return out


def scan_log(path: Path | None) -> list[str]:
    """Warnings/errors from the worker log worth reporting (first few, deduplicated)."""
    if path is None or not path.exists():
        return []
    keep: list[str] = []
    seen: set[str] = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not any(w in line for w in ("WARN", "ERROR", "Traceback", "Error:", "Exception")):
            continue
        text = line.strip()[:200]
        sig = text[30:110]
        if sig in seen:
            continue
        seen.add(sig)
        keep.append("log: " + text)
        if len(keep) >= 6:
            break
    return keep


async def delete_run_topics(bootstrap: str, run_id: str) -> int:
    async with admin_client(bootstrap) as admin:
        names = [t for t in await admin.list_topics() if t.startswith(f"faustprobe-{run_id}")]
        if names:
            await admin.delete_topics(names)
    return len(names)


# --------------------------------------------------------------------------- report


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[idx]


def _fmt(v: float | None, nd: int = 1) -> str:
    return "timeout" if v is None else f"{v:.{nd}f}"


def report(outcomes: Sequence[Outcome], idles: Sequence[float], eos_idles: Sequence[float],
           verbose: bool = False) -> None:
    heads = ["scenario", "steady p50", "p95", "max"]
    heads += [f"idle {i:g}s" for i in idles] + ["startup s", "exactly-once (crash test)"]
    rows: list[list[str]] = []
    for o in outcomes:
        metrics: list[tuple[str, str]] = [("receive", "recv_ms")]
        if o.scenario.eos:
            metrics.append(("output visible", "commit_ms"))
        for name, attr in metrics:
            label = f"{o.scenario.key} {o.scenario.label}"
            if o.scenario.eos:
                label += f" ({name})"
            steady = [v for s in o.samples if s.phase == "steady"
                      if (v := getattr(s, attr)) is not None]
            row = [label]
            if steady:
                row += [f"{statistics.median(steady):.1f}", f"{_pct(steady, 0.95):.1f}",
                        f"{max(steady):.1f}"]
            else:
                row += ["-", "-", "-"]
            for i in idles:
                sample = next((s for s in o.samples if s.phase == f"idle-{i:g}"), None)
                if sample is None:
                    row.append("-" if (o.scenario.eos and i not in eos_idles) else "n/a")
                else:
                    row.append(_fmt(getattr(sample, attr)))
            row.append(_fmt(o.startup_s(), 2) if name == "receive" else "")
            row.append(o.crash_verdict if name != "receive" else "")
            rows.append(row)
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    print()
    print("latency produce -> receive, milliseconds (startup in seconds)")
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells))

    print(line(heads))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()
    print("details")
    for o in outcomes:
        acks = [s.ack_ms for s in o.samples if s.phase == "steady"]
        idle_acks = ", ".join(f"{s.phase}={s.ack_ms:.1f}" for s in o.samples
                              if s.phase.startswith("idle"))
        spawn = "?"
        if o.app_start is not None and o.process_start is not None:
            spawn = (f"spawn->imports done {o.process_start - o.spawned:.2f} s, "
                     f"imports->app start {o.app_start - o.process_start:.2f} s")
        print(f"  {o.scenario.key} {o.scenario.label}: {spawn}")
        if acks:
            print(f"     producer ack ms: steady p50 {statistics.median(acks):.1f} "
                  f"max {max(acks):.1f}; "
                  f"after idle {idle_acks or '-'}")
        for note in o.notes:
            print(f"     {note}")
        if verbose:
            for smp in o.samples:
                visible = f"  output visible {_fmt(smp.commit_ms):>8s}" if o.scenario.eos else ""
                if smp.txn_done is not None:
                    done_ms = (smp.txn_done - smp.sent) * 1e3
                    visible += f"  (worker's commit returned at {done_ms:.1f})"
                print(f"       seq {smp.seq:3d} {smp.phase:14s} ack {smp.ack_ms:7.1f}  "
                      f"receive {_fmt(smp.recv_ms):>8s}{visible}")
        if o.crash is not None:
            print(f"     {o.crash}")
        for path in o.log_paths:
            print(f"     worker log: {path}")


# --------------------------------------------------------------------------- main


async def probe(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    print(f"faust-streaming {version('faust-streaming')}, aiokafka {version('aiokafka')}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, broker {args.bootstrap}, "
          f"run {run_id}, load average {_load()}", flush=True)
    try:
        async with admin_client(args.bootstrap) as admin:
            versions = await admin.describe_cluster()
            print(f"cluster: {versions.get('cluster_id', '?')}, "
                  f"{len(versions.get('brokers', []))} broker(s)", flush=True)
    except (KafkaError, OSError) as exc:
        print(f"cannot reach Kafka at {args.bootstrap}: {exc!r} -- start a broker first "
              "(see the module docstring)", file=sys.stderr)
        return 1

    run_dir = Path(tempfile.mkdtemp(prefix=f"faustprobe-{run_id}-"))
    producer = AIOKafkaProducer(**_kafka(args.bootstrap), acks="all",
                                enable_idempotence=True)
    await producer.start()
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    try:
        for key in args.scenarios:
            outcomes.append(await Run(SCENARIOS[key], args, run_id, run_dir, producer).run())
    finally:
        await producer.stop()
        if not args.keep_topics:
            with contextlib.suppress(KafkaError, OSError):
                n = await delete_run_topics(args.bootstrap, run_id)
                print(f"deleted {n} topic(s) of run {run_id}", flush=True)
    report(outcomes, args.idle, args.eos_idle, args.verbose)
    print(f"\ntotal probe time {time.monotonic() - t0:.0f} s; load average {_load()} "
          f"(other load on the machine shows up as tail latency); worker files in {run_dir}")
    return 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP),
                   help=f"broker address (env KAFKA_BOOTSTRAP, default {DEFAULT_BOOTSTRAP})")
    p.add_argument("--scenarios", default="A,B,C,D",
                   type=lambda s: [x.strip().upper() for x in s.split(",") if x.strip()],
                   help="A faust, B aiokafka, C faust exactly_once, D aiokafka transactional")
    p.add_argument("--steady", type=int, default=20, help="back-to-back messages")
    p.add_argument("--idle", type=_floats, default=[5.0, 15.0, 30.0],
                   help="idle periods in seconds for A and B (comma separated)")
    p.add_argument("--eos-idle", type=_floats, default=[5.0],
                   help="idle periods in seconds for C and D")
    p.add_argument("--partitions", type=int, default=3, choices=[1, 2, 3],
                   help="partitions of the probe's topics")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the run's topics")
    p.add_argument("--verbose", action="store_true", help="print every sample")
    p.add_argument("--txn-retry-backoff-ms", type=int, default=100,
                   help="retry_backoff_ms of scenario D's transactional producer (aiokafka "
                        "default 100; a commit that meets CONCURRENT_TRANSACTIONS waits this long)")
    p.add_argument("--no-crash-test", dest="crash_test", action="store_false",
                   help="skip the SIGKILL/restart exactly-once check of scenarios C and D")
    # worker mode (internal)
    p.add_argument("--worker", choices=WORKER_KINDS, help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--out-topic", help=argparse.SUPPRESS)
    p.add_argument("--app-id", help=argparse.SUPPRESS)
    p.add_argument("--receipts", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker in ("faust", "faust-eos"):
        run_faust_worker(args)
        return 0
    if args.worker in ("aiokafka", "aiokafka-eos"):
        run_aiokafka_worker(args)
        return 0
    return asyncio.run(probe(args))


if __name__ == "__main__":
    sys.exit(main())
