"""The local broker's authenticated mode (``kafka_secure``): credentials, certificates and ACLs.

Generated at the broker's first start, like PostgreSQL's passwords, never in the repository:

* ``<data_dir>/kafka-credentials`` (0600): one ``principal:password`` line per SCRAM user. The
  users are created by the storage tool when the log directory is formatted (KRaft keeps SCRAM
  credentials in its metadata log, so they must exist before the broker first authenticates).
* ``<data_dir>/kafka/tls/``: a private CA and the broker's key and certificate (0600);
  ``<data_dir>/kafka-ca.pem`` is the CA certificate clients verify the broker with (public).

The broker then has one client listener, SASL_SSL with SCRAM-SHA-512/256, and the controller
listener on loopback with SASL PLAIN as ``admin``: with the StandardAuthorizer an unauthenticated
controller connection would have to be a super user, and the controller answers some admin
requests (ACLs among them) itself. ACLs (``acl_bindings``) give each principal what its role needs.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from assessment_store.core import ServiceFailed, Settings

__all__ = [
    "Acl", "AclOp", "acl_bindings", "apply_acls", "ensure_credentials", "ensure_tls", "format_scram_args",
    "secure_broker_props", "secure_topics",
]

_SCRAM = ("SCRAM-SHA-512", "SCRAM-SHA-256")
LISTENER = "SASL_SSL"
"""The client listener's name (and protocol)."""


# --- credentials ------------------------------------------------------------------------------


def ensure_credentials(settings: Settings) -> dict[str, str]:
    """Every principal's password: read from the credentials file, generated for those missing."""
    from assessment_store.streams import PRINCIPALS
    from assessment_store.streams import read_credentials

    path = settings.kafka_credentials_file
    creds = read_credentials(path) if path.exists() else {}
    missing = [p for p in PRINCIPALS if p not in creds]
    if missing:
        creds.update({p: secrets.token_urlsafe(24) for p in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before the first byte is written: never readable by another account.
        fd = os.open(path.with_suffix(".partial"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{name}:{pw}\n" for name, pw in creds.items()))
        os.replace(path.with_suffix(".partial"), path)
    return creds


def format_scram_args(creds: dict[str, str]) -> list[str]:
    """The storage tool's ``--add-scram`` arguments creating every principal (passwords are URL-safe
    base64: no character the tool's ``[name=..,password=..]`` syntax would need quoted)."""
    args: list[str] = []
    for mechanism in _SCRAM:
        for name, pw in creds.items():
            args += ["--add-scram", f"{mechanism}=[name={name},password={pw}]"]
    return args


# --- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    broker_pem: Path
    """The broker's unencrypted PKCS#8 key followed by its certificate chain (a PEM key store)."""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_tls(settings: Settings, tls_dir: Path) -> TlsFiles:
    """A CA and a broker certificate for ``kafka_host`` (and localhost/127.0.0.1), made once."""
    files = TlsFiles(ca_cert=settings.kafka_ca_file, broker_pem=tls_dir / "broker.pem")
    if files.ca_cert.exists() and files.broker_pem.exists():
        return files
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # X.509 caps a common name at 64 characters and data dirs can be any length: name the CA by a
    # digest of its data dir, which keeps two stacks' CAs apart without depending on the path's length.
    data_dir_digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:16]
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"assessment-store local CA {data_dir_digest}")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(settings.kafka_host)))
    except ValueError:
        names.append(x509.DNSName(settings.kafka_host))
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, settings.kafka_host[:64])]))
        .issuer_name(ca_name).public_key(broker_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # The broker is also a TLS client of itself (inter-broker listener): both usages.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(tls_dir / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    _write_private(files.broker_pem, broker_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption())
                   + broker_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.ca_cert.chmod(0o644)  # a certificate is public; clients of other accounts need it
    return files


# --- broker configuration ---------------------------------------------------------------------


def _jaas(module: str, **options: str) -> str:
    return f"{module} required " + " ".join(f'{k}="{v}"' for k, v in options.items()) + ";"


def secure_broker_props(
    settings: Settings, creds: dict[str, str], tls: TlsFiles, port: int | None = None, controller_port: int | None = None,
) -> dict[str, str]:
    """The listener, SASL, TLS and authorizer settings of the secure mode (merged over the plain ones)
    of the node listening on ``port`` / ``controller_port`` (default: node 1's)."""
    s = settings
    port = port or s.kafka_port
    controller_port = controller_port or s.kafka_controller_port
    admin_pw = creds["admin"]
    scram_jaas = _jaas("org.apache.kafka.common.security.scram.ScramLoginModule", username="admin", password=admin_pw)
    name = LISTENER.lower()
    return {
        "listeners": f"{LISTENER}://{s.kafka_host}:{port},CONTROLLER://{s.kafka_host}:{controller_port}",
        "advertised.listeners": f"{LISTENER}://{s.kafka_host}:{port}",
        "inter.broker.listener.name": LISTENER,
        "listener.security.protocol.map": f"CONTROLLER:SASL_PLAINTEXT,{LISTENER}:SASL_SSL",
        "sasl.enabled.mechanisms": ",".join(_SCRAM),
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        f"listener.name.{name}.sasl.enabled.mechanisms": ",".join(_SCRAM),
        f"listener.name.{name}.scram-sha-512.sasl.jaas.config": scram_jaas,
        f"listener.name.{name}.scram-sha-256.sasl.jaas.config": scram_jaas,
        # The controller cannot check SCRAM (its credentials live in the metadata it serves), so
        # broker -> controller authenticates with PLAIN against this static entry.
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas(
            "org.apache.kafka.common.security.plain.PlainLoginModule",
            username="admin", password=admin_pw, user_admin=admin_pw),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.broker_pem),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca_cert),
        "ssl.client.auth": "none",
        "ssl.endpoint.identification.algorithm": "https",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:admin",
        "allow.everyone.if.no.acl.found": "false",
    }


# --- ACLs -------------------------------------------------------------------------------------


class _Resource(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class _Pattern(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class AclOp(IntEnum):
    READ = 3
    WRITE = 4
    DESCRIBE = 8


@dataclass(frozen=True)
class Acl:
    """ALLOW ``principal`` to ``op`` on a resource, from any host."""

    principal: str
    resource: str  # "topic" | "group" | "transactional_id"
    name: str
    op: AclOp
    prefixed: bool = False


def secure_topics(settings: Settings) -> list[Any]:
    """Every topic a store component uses, as ``TopicSpec``s: on the secure stack only ``admin``
    creates topics, so ``stack up`` creates them all, also those the other components would create
    on first use in the plain mode (the reverse sync's and the migration flags' topics)."""
    from assessment_store.migration import (
        FLAGS_TOPIC, flags_topic_spec, observations_topic_spec, reverse_topic_spec, rollout_topic_spec,
    )
    from assessment_store.streams import store_topics

    return [*store_topics(settings), reverse_topic_spec(settings, settings.legacy_reverse_topic),
            flags_topic_spec(FLAGS_TOPIC), observations_topic_spec(), rollout_topic_spec()]


def acl_bindings(settings: Settings) -> list[Acl]:
    """What each principal may do (``admin`` is a super user and needs none).

    * every principal may describe every store topic (metadata: partition counts, and the check
      of ``ensure_topics`` that nothing is missing);
    * the schemas topic (docs/events.md): every writer of Avro records (processor, client, bridge)
      writes it, every reader of them (processor, projector, reverse-sync, dashboard) reads it;
    * ``processor``: read commands, events, outcomes and its state topic (it rebuilds its state from
      them), write events, outcomes, the commands' DLQ and its state topic; its group; transactional ids under its group's name;
    * ``client``: write commands, read the migration flags, publish the router's observations (a
      service embedding ``MigrationRouter`` is a client) and read the rollout's decisions; read the
      events and the schemas topic (``AssessmentStore.subscribe``: assigned partitions, so no group);
    * ``projector``: read events and outcomes, its group;
    * ``bridge``: read the legacy topic, write commands and the legacy DLQ, its group;
    * ``reverse-sync``: read events, write the legacy reverse topic, its group;
    * ``legacy-tap`` (the Node tap): write the legacy topic, read the reverse topic, groups
      ``assessment-legacy*`` / ``legacy*``;
    * ``dashboard``: read every store topic, describe every group (lag), and consume only in
      groups named ``dashboard*``: reading another group would let it commit that group's offsets.

    The rollout controller (``migrate rollout``) is an operator's tool and runs as ``admin``.
    """
    from assessment_store.bridge import BridgeOptions
    from assessment_store.migration import FLAGS_TOPIC, OBSERVATIONS_TOPIC, ROLLOUT_TOPIC
    from assessment_store.streams import schemas_topic, state_topic

    s = settings
    ev, cmd, out, rev = s.events_topic, s.commands_topic, s.outcomes_topic, s.legacy_reverse_topic
    cmd_dlq, leg, leg_dlq = cmd + ".dlq", s.legacy_topic, s.legacy_topic + ".dlq"
    sch = schemas_topic(s)  # every writer publishes its writer schema there; every reader may look one up
    state = state_topic(s)  # the processor's snapshots (streams/_snapshot.py)
    topics = [ev, cmd, out, cmd_dlq, leg, leg_dlq, rev, sch, state]
    acls: list[Acl] = []

    def topic(principal: str, op: AclOp, *names: str) -> None:
        acls.extend(Acl(principal, "topic", n, op) for n in names)

    def group(principal: str, name: str, op: AclOp = AclOp.READ, *, prefixed: bool = False) -> None:
        acls.append(Acl(principal, "group", name, op, prefixed))

    for principal in ("processor", "client", "projector", "bridge", "reverse-sync", "legacy-tap", "dashboard"):
        topic(principal, AclOp.DESCRIBE, *topics, OBSERVATIONS_TOPIC, ROLLOUT_TOPIC)
        acls.append(Acl(principal, "topic", FLAGS_TOPIC, AclOp.DESCRIBE, prefixed=True))
    topic("processor", AclOp.READ, cmd, ev, out, sch, state)
    topic("processor", AclOp.WRITE, ev, out, cmd_dlq, sch, state)
    group("processor", s.processor_group)
    acls += [Acl("processor", "transactional_id", s.processor_group, op, prefixed=True)
             for op in (AclOp.WRITE, AclOp.DESCRIBE)]
    topic("client", AclOp.WRITE, cmd, sch)
    acls.append(Acl("client", "topic", FLAGS_TOPIC, AclOp.READ, prefixed=True))
    topic("client", AclOp.WRITE, OBSERVATIONS_TOPIC)
    topic("client", AclOp.READ, ROLLOUT_TOPIC)
    topic("client", AclOp.READ, ev, sch)  # subscriptions (client/_subscription.py)
    topic("projector", AclOp.READ, ev, out, sch)
    group("projector", s.projector_group)
    topic("bridge", AclOp.READ, leg)
    topic("bridge", AclOp.WRITE, cmd, leg_dlq, sch)
    group("bridge", BridgeOptions().group_id)
    topic("reverse-sync", AclOp.READ, ev, sch)
    topic("reverse-sync", AclOp.WRITE, rev)
    group("reverse-sync", s.reverse_sync_group)
    topic("legacy-tap", AclOp.WRITE, leg)
    topic("legacy-tap", AclOp.READ, rev)
    group("legacy-tap", "assessment-legacy", prefixed=True)
    group("legacy-tap", "legacy", prefixed=True)
    topic("dashboard", AclOp.READ, *topics)
    acls.append(Acl("dashboard", "topic", FLAGS_TOPIC, AclOp.READ, prefixed=True))
    topic("dashboard", AclOp.READ, OBSERVATIONS_TOPIC, ROLLOUT_TOPIC)
    group("dashboard", "*", AclOp.DESCRIBE)  # the literal "*" is Kafka's wildcard: every group
    group("dashboard", "dashboard", prefixed=True)
    return acls


async def apply_acls(settings: Settings) -> int:
    """Create ``acl_bindings`` as ``admin`` (creating an existing ACL is a no-op); returns the count."""
    from aiokafka.admin import AIOKafkaAdminClient

    from assessment_store.streams import kafka_client_options, start_kafka_client, translate_kafka_errors

    acls = acl_bindings(settings)
    resource = {"topic": _Resource.TOPIC, "group": _Resource.GROUP, "transactional_id": _Resource.TRANSACTIONAL_ID}
    creations = [
        (int(resource[a.resource]), a.name, int(_Pattern.PREFIXED if a.prefixed else _Pattern.LITERAL),
         f"User:{a.principal}", "*", int(a.op), 3)  # 3: ALLOW
        for a in acls
    ]
    admin = AIOKafkaAdminClient(**kafka_client_options(settings, "admin"), request_timeout_ms=15000)
    await start_kafka_client(admin, settings, "admin", "creating ACLs")
    try:
        with translate_kafka_errors("creating ACLs", "admin"):
            response = await admin._send_request(_create_acls_request(creations))  # noqa: SLF001 - no public API
    finally:
        await admin.close()
    failed = [(a, code, msg) for a, (code, msg) in zip(acls, response.results, strict=True) if code != 0]
    if failed:
        raise ServiceFailed("kafka", f"creating ACLs failed: {failed[:3]}")
    return len(acls)


def _create_acls_request(creations: list[tuple[int, str, int, str, str, int, int]]) -> Any:
    """CreateAcls v1 (API key 30), which aiokafka does not implement: the non-flexible version
    every Kafka 4 broker still accepts."""
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import Array, Int8, Int16, Int32, Schema, String

    class CreateAclsResponse_v1(Response):  # type: ignore[misc]  # noqa: N801 - aiokafka's naming
        API_KEY = 30
        API_VERSION = 1
        SCHEMA = Schema(("throttle_time_ms", Int32),
                        ("results", Array(("error_code", Int16), ("error_message", String("utf-8")))))

    class CreateAclsRequest_v1(RequestStruct):  # type: ignore[misc]  # noqa: N801
        API_KEY = 30
        API_VERSION = 1
        RESPONSE_TYPE = CreateAclsResponse_v1
        SCHEMA = Schema(("creations", Array(
            ("resource_type", Int8), ("resource_name", String("utf-8")), ("resource_pattern_type", Int8),
            ("principal", String("utf-8")), ("host", String("utf-8")), ("operation", Int8),
            ("permission_type", Int8))))

    class CreateAclsRequest(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
        API_KEY = 30

        def __init__(self, rows: list[tuple[int, str, int, str, str, int, int]]) -> None:
            self._rows = rows

        def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
            return request_struct_class(self._rows)

    return CreateAclsRequest(creations)
