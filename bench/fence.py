"""What fencing a zombie processor costs per handled batch: the epoch fence vs Kafka transactions.

    .venv/bin/python -m bench.fence [--batches 300] [--port-base 29492]

Starts a private broker (data in .data/bench-fence-<port base>), then times, in one run and in
turns (so drift hits every variant alike), the write path of one command-processor batch of one
command (the low-rate case, where a batch's fixed cost is the command's latency):

* ``unfenced``: the processor before fencing: one event, acks=all, idempotent producer, awaited;
  then the command offset committed to the consumer group;
* ``epoch fence``: the same with the ``writer-epoch`` header on the event and the epoch in the
  commit's metadata (what ``streams/_processor.py`` does now; the fence records themselves are
  written once per partition assignment, not per batch, and are timed separately);
* ``transactions``: a transactional producer (one transactional id per command partition):
  begin, the event, ``send_offsets_to_transaction``, commit.

Prints p50/p95/mean per variant and the ratios to ``unfenced`` measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from rich.console import Console
from rich.table import Table

from assessment_store import Settings
from assessment_store.core import Event, ProgressUpdated
from assessment_store.testing import isolated_settings
from assessment_store.schemas import EventCodec
from assessment_store.streams import TopicSpec, ensure_topics
from assessment_store.streams._fence import EPOCH_HEADER, fence_headers, fence_metadata
from assessment_store.streams._kafka import idempotent_producer

from ._services import private_services
from ._stats import percentile

ROOT = Path(__file__).resolve().parent.parent
console = Console()


async def measure(s: Settings, batches: int) -> None:
    events, commands = "bench.fence.events", "bench.fence.commands"
    await ensure_topics(s, [TopicSpec(events, 1, {}), TopicSpec(commands, 1, {})])
    group = "bench-fence"
    cmd_tp = TopicPartition(commands, 0)
    consumer = AIOKafkaConsumer(commands, bootstrap_servers=s.kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
    plain = idempotent_producer(s)
    txn = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, transactional_id=f"{group}-p0", acks="all",
                           enable_idempotence=True, linger_ms=0)
    codec = EventCodec()
    await consumer.start()
    await plain.start()
    await txn.start()  # init_transactions: what fences the previous holder of the transactional id
    try:
        await consumer.getmany(timeout_ms=3000)  # joined and assigned
        now = datetime.now(UTC)
        value, headers = codec.encode(Event("bench-fence", 1, ProgressUpdated(50, "bench"), now, now))
        offset = 0

        async def unfenced() -> None:
            nonlocal offset
            await plain.send_and_wait(events, value, key=b"bench-fence", partition=0,
                                      headers=[*headers, ("command-offset", str(offset).encode())])
            offset += 1
            await consumer.commit({cmd_tp: OffsetAndMetadata(offset, "")})

        async def epoch_fence() -> None:
            nonlocal offset
            await plain.send_and_wait(events, value, key=b"bench-fence", partition=0,
                                      headers=[*headers, ("command-offset", str(offset).encode()),
                                               (EPOCH_HEADER, b"7")])
            offset += 1
            await consumer.commit({cmd_tp: OffsetAndMetadata(offset, fence_metadata(7))})

        async def transactions() -> None:
            nonlocal offset
            async with txn.transaction():
                await txn.send(events, value, key=b"bench-fence", partition=0,
                               headers=[*headers, ("command-offset", str(offset).encode())])
                offset += 1
                await txn.send_offsets_to_transaction({cmd_tp: offset}, group)

        async def takeover() -> None:
            # Per assignment only: reserve the epoch (a commit), then one fence on each of two topics.
            await consumer.commit({cmd_tp: OffsetAndMetadata(offset, fence_metadata(8))})
            await asyncio.gather(*(plain.send_and_wait(t, b"", partition=0, headers=fence_headers(8, "bench"))
                                   for t in (events, commands)))

        variants: dict[str, Callable[[], Awaitable[None]]] = {
            "unfenced": unfenced, "epoch fence": epoch_fence, "transactions": transactions,
            "epoch fence: takeover (once per assignment)": takeover,
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():  # warm-up: connections, the transaction coordinator
            for _ in range(10):
                await fn()
        for _ in range(batches):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                await fn()
                samples[name].append((time.perf_counter() - t0) * 1000)
    finally:
        await txn.stop()
        await plain.stop()
        await consumer.stop()

    base = samples["unfenced"]
    t = Table(title=f"one batch of one command, {batches} batches per variant, in turns (this machine, one run)")
    for col in ("variant", "p50 ms", "p95 ms", "mean ms", "p50 / unfenced", "p95 / unfenced"):
        t.add_column(col)
    for name, xs in samples.items():
        t.add_row(name, f"{percentile(xs, 0.5):.2f}", f"{percentile(xs, 0.95):.2f}", f"{statistics.fmean(xs):.2f}",
                  f"{percentile(xs, 0.5) / percentile(base, 0.5):.2f}", f"{percentile(xs, 0.95) / percentile(base, 0.95):.2f}")
    console.print(t)


def main(args: argparse.Namespace) -> None:
    settings = isolated_settings(ROOT / ".data" / f"bench-fence-{args.port_base}", port_base=args.port_base)
    with private_services(settings, ["kafka"]):
        asyncio.run(measure(settings, args.batches))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--port-base", type=int, default=29492, help="Kafka ports port-base..+1 (two runs can share a machine)")
    main(parser.parse_args())
