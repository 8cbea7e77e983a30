"""The one place aiokafka errors become store errors, the one place Kafka clients get their
connection and credentials (``kafka_client_options``), and the topics the store needs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    AuthenticationFailedError, ClusterAuthorizationFailedError, CommitFailedError, GroupAuthorizationFailedError,
    IllegalSaslStateError, KafkaConnectionError, KafkaError, SaslAuthenticationFailed, TopicAlreadyExistsError,
    TopicAuthorizationFailedError, TransactionalIdAuthorizationFailed, UnsupportedSaslMechanismError,
)
from aiokafka import errors as kafka_errors
from aiokafka.helpers import create_ssl_context

from assessment_store.core import (
    AsyncLifecycle,
    FencedOut,
    KafkaAccessDenied,
    KafkaUnavailable,
    Settings,
    TopicRefused,
    ValidationError,
)
from assessment_store.schemas import AvroRecordCodec

from ._registry import register_writer_schemas
from ._snapshot import state_topic as _state_topic, state_topic_config as _state_topic_config

__all__ = [
    "PRINCIPALS", "KeyedProducer", "Principal", "close_producer", "committed_with_metadata", "kafka_client_options",
    "kafka_principal", "node_client_env",
    "TopicSpec", "admin_client", "ensure_topics", "idempotent_producer", "partition_counts", "publish_schemas", "read_credentials",
    "schemas_topic", "schemas_topic_spec", "start_kafka_client", "store_topics", "topic_end_offsets", "translate_kafka_errors",
]

log = logging.getLogger("assessment_store.kafka")

Principal = Literal["admin", "processor", "client", "projector", "bridge", "reverse-sync", "dashboard", "legacy-tap"]
"""The roles a Kafka client plays; on a kafka_secure stack each is a SCRAM user of that name with
its own ACLs (``stack._kafka_security``), ``admin`` the super user."""
PRINCIPALS: tuple[Principal, ...] = get_args(Principal)

_AUTHENTICATION = (AuthenticationFailedError, SaslAuthenticationFailed, UnsupportedSaslMechanismError,
                   IllegalSaslStateError)
_AUTHORIZATION = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError,
                  TransactionalIdAuthorizationFailed)


@contextlib.contextmanager
def translate_kafka_errors(what: str, principal: str | None = None) -> Iterator[None]:
    """aiokafka and socket failures -> ``KafkaUnavailable`` (keeps aiokafka's ``retriable``); a
    refusal by the broker's authentication or ACLs -> ``KafkaAccessDenied``."""
    try:
        yield
    except CommitFailedError as e:
        # The group rebalanced: this member's generation is gone (see streams/_fence.py).
        raise FencedOut(f"{what}: the consumer group rebalanced and refused this member's commit ({e.args[-1]})") from e
    except _AUTHENTICATION as e:
        raise KafkaAccessDenied(what, principal, "authentication", f"{type(e).__name__}: {e}") from e
    except _AUTHORIZATION as e:
        raise KafkaAccessDenied(what, principal, "authorization", f"{type(e).__name__}: {e}") from e
    except KafkaError as e:
        err = KafkaUnavailable(f"{what}: {type(e).__name__}: {e}")
        err.retriable = bool(getattr(e, "retriable", False))
        raise err from e
    except OSError as e:
        raise KafkaUnavailable(f"{what}: broker unreachable ({e})") from e


async def committed_with_metadata(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int | None, str]:
    """The group's committed offset of ``tp`` (None if never committed) and its metadata string.
    ``AIOKafkaConsumer.committed`` drops the metadata, which holds the processor's fence epoch."""
    with translate_kafka_errors(f"reading the committed offset of {tp.topic}[{tp.partition}]"):
        found = await consumer._coordinator.fetch_committed_offsets([tp])  # noqa: SLF001 - no public way to the metadata
    meta = found.get(tp)
    if meta is None or meta.offset < 0:
        return None, meta.metadata if meta is not None else ""
    return int(meta.offset), str(meta.metadata or "")


# --- connection and credentials -------------------------------------------------------------


def read_credentials(path: Path) -> dict[str, str]:
    """``principal:password`` lines (the kafka_secure stack's credentials file) as a dict."""
    creds: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, password = line.partition(":")
        if sep and name:
            creds[name] = password
    return creds


def kafka_principal(settings: Settings, principal: Principal) -> str | None:
    """The SASL user a client of role ``principal`` authenticates as (None: no SASL): the
    configured ``kafka_username``, else on a kafka_secure stack the role's own user."""
    if settings.kafka_username is not None:
        return settings.kafka_username
    return principal if settings.kafka_secure_mode else None


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext:
    # One context per file set: building one reads and parses the CA bundle.
    context: ssl.SSLContext = create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    return context


def _cafile(settings: Settings) -> Path | None:
    return settings.kafka_ssl_cafile or (settings.kafka_ca_file if settings.kafka_secure_mode else None)


def node_client_env(settings: Settings, principal: Principal) -> dict[str, str]:
    """``kafka_client_options`` as the environment of the Node tap (``bridge/node/src/options.js``:
    KAFKA_BOOTSTRAP, KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_USERNAME, KAFKA_PASSWORD,
    KAFKA_SSL_CAFILE). kafkajs takes the password only as a value, so it travels in the child's
    environment (readable by this account only)."""
    opts = kafka_client_options(settings, principal)
    env = {"KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "KAFKA_SECURITY_PROTOCOL": str(opts.get("security_protocol", "PLAINTEXT"))}
    if "sasl_mechanism" in opts:
        env.update(KAFKA_SASL_MECHANISM=opts["sasl_mechanism"], KAFKA_USERNAME=opts["sasl_plain_username"],
                   KAFKA_PASSWORD=opts["sasl_plain_password"])
    cafile = _cafile(settings)
    if "ssl_context" in opts and cafile is not None:
        env["KAFKA_SSL_CAFILE"] = str(cafile.resolve())
    return env


def kafka_client_options(settings: Settings, principal: Principal) -> dict[str, Any]:
    """The connection keyword arguments of every aiokafka client the store builds (producer,
    consumer, admin, bare client): bootstrap servers, security protocol, TLS context and SASL
    credentials of the role ``principal``.

    With ``kafka_secure`` (the local stack's authenticated mode) that is SASL_SSL with
    SCRAM-SHA-512, the stack's CA, and the role's password from ``<data_dir>/kafka-credentials``
    unless ``kafka_username``/``kafka_password`` say otherwise. Without it, what the
    ``kafka_security_protocol``/``kafka_sasl_*``/``kafka_ssl_*`` settings say (default PLAINTEXT)."""
    s = settings
    opts: dict[str, Any] = {"bootstrap_servers": s.kafka_bootstrap}
    protocol = "SASL_SSL" if s.kafka_secure_mode else s.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return opts
    opts["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        cafile = _cafile(s)
        opts["ssl_context"] = _ssl_context(
            cafile.resolve() if cafile else None,
            s.kafka_ssl_certfile.resolve() if s.kafka_ssl_certfile else None,
            s.kafka_ssl_keyfile.resolve() if s.kafka_ssl_keyfile else None,
        )
    if protocol.startswith("SASL_"):
        username = kafka_principal(s, principal)
        if username is None:
            raise ValidationError("kafka_username", f"required with kafka_security_protocol={protocol}")
        if s.kafka_password is not None:
            password = s.kafka_password.get_secret_value()
        elif s.kafka_secure_mode and s.kafka_credentials_file.exists():
            found = read_credentials(s.kafka_credentials_file).get(username)
            if found is None:
                raise ValidationError("kafka_username", f"no principal {username!r} in {s.kafka_credentials_file}")
            password = found
        else:
            where = f" (and {s.kafka_credentials_file} does not exist)" if s.kafka_secure_mode else ""
            raise ValidationError("kafka_password", f"required with kafka_security_protocol={protocol}{where}")
        opts["sasl_mechanism"] = "SCRAM-SHA-512" if s.kafka_secure_mode else s.kafka_sasl_mechanism
        opts["sasl_plain_username"] = username
        opts["sasl_plain_password"] = password
    return opts


async def _authentication_refused(settings: Settings, principal: Principal) -> str | None:
    """Why a broker refuses this role's credentials, or None when it accepts them or none answers.

    aiokafka reports a refused SASL handshake at bootstrap only as "Unable to bootstrap", the same
    as a broker that is down; one direct connection tells the two apart."""
    from aiokafka.conn import create_conn

    opts = kafka_client_options(settings, principal)
    if not str(opts.get("security_protocol", "")).startswith("SASL_"):
        return None
    for hostport in settings.kafka_bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        try:
            conn = await create_conn(
                host, int(port), request_timeout_ms=5000, ssl_context=opts.get("ssl_context"),
                security_protocol=opts["security_protocol"], sasl_mechanism=opts["sasl_mechanism"],
                sasl_plain_username=opts["sasl_plain_username"], sasl_plain_password=opts["sasl_plain_password"],
            )
        except _AUTHENTICATION as e:
            return f"{type(e).__name__}: {e}"
        except (OSError, KafkaError, TimeoutError, ValueError):
            continue
        conn.close()
        return None
    return None


async def start_kafka_client(client: Any, settings: Settings, principal: Principal, what: str) -> None:
    """``await client.start()`` with its failures translated, a refused login as ``KafkaAccessDenied``."""
    user = kafka_principal(settings, principal)
    try:
        with translate_kafka_errors(what, user):
            await client.start()
    except KafkaUnavailable as e:
        if isinstance(e.__cause__, KafkaConnectionError):
            reason = await _authentication_refused(settings, principal)
            if reason is not None:
                raise KafkaAccessDenied(what, user, "authentication", reason) from e.__cause__
        raise


def idempotent_producer(
    settings: Settings, principal: Principal = "admin", *, max_batch_size: int = 16384
) -> AIOKafkaProducer:
    """The producer every writer of the log uses: acks=all (nothing is acknowledged before every
    in-sync replica has it) and idempotence (the broker drops the duplicate a retried send would
    create, and keeps one partition's records in send order).

    ``max_batch_size`` bounds one partition's share of a produce request. aiokafka keeps one
    request in flight per broker and puts at most one batch per partition in it, so records past
    the bound wait for the next round trip: a writer that appends many records to a partition at
    once (the processor, a fetch of commands at a time) needs it large."""
    return AIOKafkaProducer(
        **kafka_client_options(settings, principal), acks="all", enable_idempotence=True, linger_ms=0,
        max_request_size=4 * 1024 * 1024, max_batch_size=max_batch_size,
    )


async def close_producer(producer: AIOKafkaProducer, flush_timeout_s: float) -> None:
    """Stop ``producer``, delivering what it still buffers for at most ``flush_timeout_s``.

    aiokafka's ``stop`` flushes first and, with the broker gone, waits for ever. Whatever is still
    buffered then was never acknowledged: its senders were told so (a timeout), and re-sending by
    command id or re-processing from the uncommitted input offset is how it reaches the log, so
    dropping it here loses nothing that was promised."""
    try:
        await asyncio.wait_for(asyncio.shield(stop := asyncio.ensure_future(producer.stop())), flush_timeout_s)
    except TimeoutError:
        log.warning("Kafka producer: undelivered records after %g s, closing without them", flush_timeout_s)
        sender = producer._sender  # noqa: SLF001 - aiokafka has no public forced close
        if sender is not None:
            await sender.close()  # cancels the sender task: stop()'s flush wait then returns
        await stop


class KeyedProducer(AsyncLifecycle):
    """An idempotent producer behind the lifecycle every writer shares; subclasses say what they
    encode and where it goes, and as which principal (``kafka_client_options``)."""

    principal: Principal = "admin"

    def __init__(self, settings: Settings, *, principal: Principal | None = None) -> None:
        self._settings = settings
        self.writer_schemas: dict[str, AvroRecordCodec] = {}
        """topic -> the codec of its records: published to the schemas topic (and registered with the
        schema registry, if any) before the first record (subclasses fill it)"""
        if principal is not None:
            self.principal = principal
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._user: str | None = None
        """the SASL user errors name, found once at start: finding it may read the stack's data
        directory, which cost a file read per record when it was done at each send"""

    async def start(self) -> None:
        # Started lazily by the first send, and a client's first sends are often concurrent: one
        # starts the producer, the others wait for it (each making its own would leak all but one).
        async with self._starting:
            if self._producer is not None:
                return
            self._user = kafka_principal(self._settings, self.principal)
            producer = idempotent_producer(self._settings, self.principal)
            try:
                await start_kafka_client(producer, self._settings, self.principal,
                                         f"starting a producer for {self._settings.kafka_bootstrap}")
                await publish_schemas(self._settings, producer, self.writer_schemas)
            except BaseException:
                await close_producer(producer, self._settings.producer_flush_timeout_s)
                raise
            self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await close_producer(producer, self._settings.producer_flush_timeout_s)

    async def _send(
        self, what: str, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]],
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        if self._producer is None:
            await self.start()
            assert self._producer is not None
        with translate_kafka_errors(what, self._user):
            return await self._producer.send_and_wait(
                topic, value=value, key=key.encode(), headers=headers, timestamp_ms=timestamp_ms
            )


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def schemas_topic(settings: Settings) -> str:
    """Beside the events: ``assessments.events`` -> ``assessments.schemas``."""
    ev = settings.events_topic
    return ev.removesuffix(".events") + ".schemas" if ev.endswith(".events") else ev + ".schemas"


def schemas_topic_spec(settings: Settings) -> TopicSpec:
    # One partition (a reader reads all of it) and compaction (one record per fingerprint, forever).
    return TopicSpec(schemas_topic(settings), 1, {"cleanup.policy": "compact", "retention.ms": "-1"})


# (bootstrap, topic, fingerprint) this process has published.
_published: set[tuple[str, str, str]] = set()


async def publish_schemas(settings: Settings, producer: AIOKafkaProducer,
                          codecs: Mapping[str, AvroRecordCodec]) -> None:
    """Publish each codec's writer schema (``codecs``: the topic it writes -> its codec), awaiting the
    broker's acknowledgement: called before a writer's first record, so no reader can meet a record
    whose schema is not on the topic yet. With a schema registry configured, also register each under
    its topic's subject and switch the codec to the Confluent format (``streams._registry``); the
    registry unreachable is ``SchemaRegistryUnavailable``, and the writer does not start."""
    topic = schemas_topic(settings)
    for codec in codecs.values():
        key = (settings.kafka_bootstrap, topic, codec.fingerprint)
        if key in _published:
            continue
        with translate_kafka_errors(f"publishing writer schema {codec.fingerprint} to {topic}"):
            delivered = await producer.send(topic, codec.schema_json.encode(), key=codec.fingerprint.encode())
            await delivered
        _published.add(key)
    if settings.schema_registry_url is not None:
        await register_writer_schemas(settings, codecs)


def store_topics(settings: Settings) -> list[TopicSpec]:
    forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    return [
        # The log of record: never expires; rebuilds and time travel read it from offset 0.
        TopicSpec(settings.events_topic, settings.partitions, forever),
        # Commands and outcomes must have the events topic's partition count: the processor
        # owning command partition p writes events and outcomes to partition p of each.
        TopicSpec(settings.commands_topic, settings.partitions, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
        # Outcomes are the idempotency record: kept as long as the events.
        TopicSpec(settings.outcomes_topic, settings.partitions, forever),
        TopicSpec(settings.commands_topic + ".dlq", 1, forever),
        TopicSpec(settings.legacy_topic, settings.partitions, forever),
        TopicSpec(settings.legacy_topic + ".dlq", 1, forever),
        # Every writer schema of the three above, keyed by fingerprint (streams/_schema_topic.py).
        schemas_topic_spec(settings),
        # The processor's state changelog (streams/_snapshot.py): partition p is command partition p's.
        TopicSpec(_state_topic(settings), settings.partitions, _state_topic_config()),
    ]


@contextlib.asynccontextmanager
async def admin_client(settings: Settings, principal: Principal = "admin") -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**kafka_client_options(settings, principal), request_timeout_ms=15000)
    await start_kafka_client(admin, settings, principal, f"connecting to {settings.kafka_bootstrap}")
    try:
        yield admin
    finally:
        await admin.close()


async def ensure_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, *, principal: Principal = "admin"
) -> list[str]:
    """Create the missing topics; returns the names created. Existing topics are left as they are.

    Only ``admin`` may create topics on a kafka_secure stack (which creates them all at ``stack up``);
    the other principals may describe every topic, so for them this is a check that finds none missing."""
    specs = specs if specs is not None else store_topics(settings)
    created: list[str] = []
    async with admin_client(settings, principal) as admin:
        with translate_kafka_errors("creating topics", kafka_principal(settings, principal)):
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            for spec in missing:
                try:
                    response = await admin.create_topics(
                        [NewTopic(spec.name, spec.partitions, settings.topic_replication_factor,
                                   topic_configs={"min.insync.replicas": str(settings.min_insync_replicas),
                                                  **spec.config})]
                    )
                except TopicAlreadyExistsError:
                    continue  # another process created it between list and create
                # CreateTopics reports a refusal per topic in its answer, not as an exception:
                # without this check a refused topic was counted as created.
                if _created(response, spec.name, kafka_principal(settings, principal)):
                    created.append(spec.name)
            # A created topic's partitions reach the metadata a moment later: wait (bounded), so a
            # caller describing it next (partition counts) does not see it without partitions.
            deadline = asyncio.get_running_loop().time() + 10.0
            while created and asyncio.get_running_loop().time() < deadline:
                described = await admin.describe_topics(created)
                if all(d.get("partitions") for d in described):
                    break
                await asyncio.sleep(0.05)
    return created


def _created(response: Any, topic: str, principal: str | None) -> bool:
    """True if the CreateTopics ``response`` created ``topic``; False if it already existed; raises
    ``KafkaAccessDenied`` when an ACL forbids it and ``TopicRefused`` for any other error code."""
    for entry in response.topic_errors:
        # Every version's entries start (name, error_code[, error_message, ...]).
        name, code = entry[0], int(entry[1])
        if name != topic:
            continue
        if code == 0:
            return True
        if code == TopicAlreadyExistsError.errno:
            return False
        kind = kafka_errors.for_code(code)
        message = entry[2] if len(entry) > 2 and entry[2] else kind.__name__
        if issubclass(kind, _AUTHORIZATION):
            raise KafkaAccessDenied(f"creating topic {topic}", principal, "authorization", f"{kind.__name__}: {message}")
        raise TopicRefused(topic, code, f"{kind.__name__}: {message}", retriable=bool(getattr(kind, "retriable", False)))
    raise TopicRefused(topic, -1, "the broker's answer did not mention the topic")


async def partition_counts(settings: Settings, topics: list[str], *, principal: Principal = "admin") -> dict[str, int]:
    async with admin_client(settings, principal) as admin:
        with translate_kafka_errors("describing topics", kafka_principal(settings, principal)):
            described = await admin.describe_topics(topics)
    return {d["topic"]: len(d["partitions"]) for d in described}


async def topic_end_offsets(settings: Settings, topic: str, *, principal: Principal = "admin") -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get); empty when the topic does not exist."""
    partitions = range((await partition_counts(settings, [topic], principal=principal)).get(topic, 0))
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, principal))
    with translate_kafka_errors(f"reading the end offsets of {topic}", kafka_principal(settings, principal)):
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        finally:
            await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}
