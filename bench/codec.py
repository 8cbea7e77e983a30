"""Codec benchmark: encode and decode cost per event, the previous wire format against the current ones.

    .venv/bin/python -m bench.codec [--events 20000] [--repeat 5]

In one run, on the same events (a realistic mix of every payload type): the previous codec
(schemaless Avro, the fingerprint as hex text in a ``schema-fingerprint`` header, reproduced here as
it was), the default one (Avro single-object encoding: ``C3 01`` + fingerprint + body) and the
registry mode's (Confluent: ``00`` + 4-byte schema id + body; the id is what registration answered
once, so no network per record: the codec is given an id as ``use_registry_id`` would). All encode
``Event``s through ``EventCodec``'s record mapping, so only the wire format differs. Best of
``--repeat`` runs; prints µs per event and the ratios (format / previous: <= 1.0 is no worse).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro

from assessment_store.core import CodecError, Completed, Created, Event, Failed, Payload, ProgressUpdated, Started
from assessment_store.schemas import AvroRecordCodec, EventCodec

Headers = Sequence[tuple[str, bytes]]


class PreviousFormat:
    """The codec before the single-object encoding: schemaless value, fingerprint header."""

    def __init__(self, avro: AvroRecordCodec) -> None:
        self.parsed = avro.parsed
        self.fingerprint = avro.fingerprint
        self.content_type = avro.content_type
        self.namespace = avro.namespace
        self._writers: dict[str, Any] = {self.fingerprint: self.parsed}

    def encode(self, record: dict[str, Any], type_name: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue(), [("type", type_name.encode()), ("schema-fingerprint", self.fingerprint.encode()),
                                ("content-type", self.content_type)]

    def frame(self, body: bytes, type_name: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The hand writer's body (the same Avro binary as fastavro's) in the previous framing."""
        return body, [("type", type_name.encode()), ("schema-fingerprint", self.fingerprint.encode()),
                      ("content-type", self.content_type)]

    def decode(self, value: bytes | None, headers: Headers) -> dict[str, Any]:
        if not value:
            raise CodecError("empty record value")
        fp = next((v for k, v in headers if k == "schema-fingerprint"), None)
        if fp is None:
            raise CodecError("missing 'schema-fingerprint' header")
        writer = self._writers.get(fp.decode("ascii", "replace"))
        if writer is None:
            raise CodecError(f"unknown schema fingerprint {fp!r}")
        reader = None if writer is self.parsed else self.parsed
        record: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
            io.BytesIO(value), writer, reader, return_record_name=True)
        return record


def _events(n: int) -> list[Event]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    payloads: list[Payload] = [Created({"subject": "s", "items": [1, 2, 3]}, 60000, 3), Started("w-1"),
                               ProgressUpdated(50, "half"), Completed({"score": 7}, 1200), Failed("boom", True, 10)]
    return [Event(f"a-{i // 5}", i % 5 + 1, payloads[i % 5], t0 + timedelta(microseconds=i), t0, event_id=f"e-{i}")
            for i in range(n)]


def _best(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best time of each, the candidates interleaved round by round so that load on the machine
    falls on all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    events = _events(args.events)
    current = EventCodec()
    confluent = EventCodec()
    confluent.avro.use_registry_id(42)
    previous = EventCodec()
    old = PreviousFormat(previous.avro)
    # EventCodec maps an Event to a record and calls its AvroRecordCodec: swap in the previous format.
    previous.avro = old  # type: ignore[assignment]

    encoded_new = [current.encode(e) for e in events]
    encoded_old = [previous.encode(e) for e in events]
    encoded_cf = [confluent.encode(e) for e in events]
    assert all(confluent.decode(v, h) == e for (v, h), e in zip(encoded_cf, events, strict=True))
    assert all(current.decode(v, h) == e for (v, h), e in zip(encoded_new, events, strict=True))
    assert all(current.decode(v, h) == e for (v, h), e in zip(encoded_old, events, strict=True))  # migration path

    n = len(events)
    results = _best({
        "encode, previous (header fingerprint)": lambda: [previous.encode(e) for e in events],
        "encode, current (single object)": lambda: [current.encode(e) for e in events],
        "decode, previous (header fingerprint)": lambda: [previous.decode(v, h) for v, h in encoded_old],
        "decode, current (single object)": lambda: [current.decode(v, h) for v, h in encoded_new],
        "decode, current reader on previous records": lambda: [current.decode(v, h) for v, h in encoded_old],
        "encode, confluent (00 + schema id)": lambda: [confluent.encode(e) for e in events],
        "decode, confluent (00 + schema id)": lambda: [confluent.decode(v, h) for v, h in encoded_cf],
    }, args.repeat)
    for name, seconds in results.items():
        print(f"{name:45s} {seconds / n * 1e6:7.2f} µs/event")
    enc = results["encode, current (single object)"] / results["encode, previous (header fingerprint)"]
    dec = results["decode, current (single object)"] / results["decode, previous (header fingerprint)"]
    size_new = sum(len(v) + sum(len(k) + len(x) for k, x in h) for v, h in encoded_new) / n
    size_old = sum(len(v) + sum(len(k) + len(x) for k, x in h) for v, h in encoded_old) / n
    cf_enc = results["encode, confluent (00 + schema id)"] / results["encode, previous (header fingerprint)"]
    cf_dec = results["decode, confluent (00 + schema id)"] / results["decode, previous (header fingerprint)"]
    size_cf = sum(len(v) + sum(len(k) + len(x) for k, x in h) for v, h in encoded_cf) / n
    print(f"ratio current/previous: encode {enc:.2f}, decode {dec:.2f} (goal: <= 1.0, noise ~ +-0.05)")
    print(f"ratio confluent/previous: encode {cf_enc:.2f}, decode {cf_dec:.2f}")
    print(f"bytes per record (value + headers): previous {size_old:.1f}, current {size_new:.1f}, confluent {size_cf:.1f}")


if __name__ == "__main__":
    main()
