"""Every error the store raises derives from one root, ``AssessmentStoreError``.

The tree::

    AssessmentStoreError
    ├── StoreUsageError                     the caller asked for something impossible
    │   ├── ValidationError                 a field is missing or out of range (.field, .reason)
    │   ├── AssessmentNotFound              no assessment has that id (.assessment_id)
    │   ├── InvalidTransition               the state machine forbids it (.assessment_id, .state, .transition)
    │   ├── VersionConflict                 expected_version differs (.assessment_id, .expected, .actual)
    │   └── NotQuarantined                  a re-fold of an assessment that is not quarantined (.assessment_id)
    ├── WaitTimeout                         a wait ended before its condition (.assessment_id, .timeout_s)
    │   └── CommandTimeout                  no outcome for a command (.command_id, .assessment_id)
    ├── CodecError                          bytes that are not one of our events (.reason)
    │   └── UnresolvableSchema              a record whose writer schema is unknown or unreadable here
    │                                       (.fingerprint, .topic, .partition, .offset, .reason)
    ├── BackendError                        Kafka or PostgreSQL failed; .retriable says whether to retry
    │   ├── KafkaUnavailable
    │   ├── KafkaAccessDenied               the broker refused this principal (.principal, .what, .reason); never
    │   │                                   retriable: wrong credentials, or an ACL forbids the operation
    │   ├── TopicRefused                    the broker refused to create a topic (.topic, .error_code, .reason);
    │   │                                   retriable or not as Kafka's error code says
    │   ├── DatabaseUnavailable
    │   ├── DataRejected                    PostgreSQL refused a value (NUL, out of range; .sqlstate), never retriable
    │   ├── FencedOut                       the consumer group gave this member's partitions to another (.group,
    │   │                                   .partitions): what it was about to commit or write is no longer its own
    │   ├── SchemaRegistryUnavailable       the schema registry is unreachable or answered nonsense (.url, .status);
    │   │                                   retriable: a writer raises it rather than fall back to another format
    │   ├── SchemaRejected                  the schema registry refused a writer schema (.subject, .status, .reason:
    │   │                                   incompatible under the subject's compatibility mode, invalid); never retriable
    │   ├── migration.LegacyUnavailable     the legacy service is unreachable or answered nonsense (.url, .status)
    │   ├── migration.LegacyNotSynced       legacy lacks store changes it would serve (.assessment_id, .store_version,
    │   │                                   .legacy_version); raised by the router's sync before serve
    │   └── migration.StoreNotSynced        the store lacks a change this router made on legacy (.assessment_id,
    │                                       .timeout_s); the router's sync before serve, the other way
    └── StackError                          the local stack could not do what was asked
        ├── PortInUse                       (.port, .holder)
        ├── MissingTool                     java / mvn / initdb absent (.tool, .install_hint)
        ├── DownloadFailed                  mvn could not fetch the broker jars (.log_tail)
        └── ServiceFailed                   a service did not start (.service, .log_tail)

Driver exceptions (aiokafka, asyncpg) are translated into ``BackendError`` in one place per
driver (``streams._kafka.translate_kafka_errors`` and ``projections._db.translate_db_errors``)
with ``raise ... from e`` so the cause stays visible.
"""

from __future__ import annotations

__all__ = [
    "AssessmentNotFound",
    "AssessmentStoreError",
    "BackendError",
    "CodecError",
    "CommandTimeout",
    "DataRejected",
    "DatabaseUnavailable",
    "DownloadFailed",
    "FencedOut",
    "InvalidTransition",
    "KafkaAccessDenied",
    "KafkaUnavailable",
    "MissingTool",
    "NotQuarantined",
    "PortInUse",
    "SchemaRegistryUnavailable",
    "SchemaRejected",
    "ServiceFailed",
    "StackError",
    "StoreUsageError",
    "TopicRefused",
    "UnresolvableSchema",
    "ValidationError",
    "VersionConflict",
    "WaitTimeout",
    "error_from_rejection",
]


class AssessmentStoreError(Exception):
    """Root of every error raised by the store."""

    retriable: bool = False


class StoreUsageError(AssessmentStoreError):
    """The request cannot succeed as given; retrying it unchanged will fail again."""

    def details(self) -> dict[str, object]:
        """The ids and values this error names, as they travel in a command outcome."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class ValidationError(StoreUsageError):
    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")


class AssessmentNotFound(StoreUsageError):
    def __init__(self, assessment_id: str) -> None:
        self.assessment_id = assessment_id
        super().__init__(f"assessment {assessment_id!r} does not exist")


class InvalidTransition(StoreUsageError):
    def __init__(self, assessment_id: str, state: str, transition: str) -> None:
        self.assessment_id = assessment_id
        self.state = state
        self.transition = transition
        super().__init__(
            f"assessment {assessment_id!r} is {state}: {transition!r} is not allowed from {state}"
        )


class VersionConflict(StoreUsageError):
    def __init__(self, assessment_id: str, expected: int, actual: int) -> None:
        self.assessment_id = assessment_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"assessment {assessment_id!r} is at version {actual}, expected version {expected}"
        )


class NotQuarantined(StoreUsageError):
    def __init__(self, assessment_id: str) -> None:
        self.assessment_id = assessment_id
        super().__init__(f"assessment {assessment_id!r} is not quarantined")


_REJECTIONS: dict[str, type[StoreUsageError]] = {
    "ValidationError": ValidationError,
    "AssessmentNotFound": AssessmentNotFound,
    "InvalidTransition": InvalidTransition,
    "VersionConflict": VersionConflict,
}


def error_from_rejection(error_type: str, message: str, details: dict[str, object]) -> StoreUsageError:
    """Rebuild the typed error a command processor reported for a rejected command."""
    cls = _REJECTIONS.get(error_type)
    if cls is not None:
        try:
            return cls(**details)
        except TypeError:
            pass  # details from a newer or older processor: fall back to the message
    err = StoreUsageError(message)
    return err


class WaitTimeout(AssessmentStoreError):
    retriable = True

    def __init__(self, assessment_id: str, timeout_s: float, waiting_for: str = "completion") -> None:
        self.assessment_id = assessment_id
        self.timeout_s = timeout_s
        self.waiting_for = waiting_for
        super().__init__(
            f"assessment {assessment_id!r}: no {waiting_for} within {timeout_s:g} s"
        )


class CommandTimeout(WaitTimeout):
    """No outcome arrived for a command; re-sending it with the same command_id is always safe."""

    def __init__(
        self, command_id: str, assessment_id: str, timeout_s: float,
        waiting_for: str = "outcome (is the command processor running?)",
    ) -> None:
        self.command_id = command_id
        AssessmentStoreError.__init__(
            self,
            f"command {command_id!r} for assessment {assessment_id!r}: no {waiting_for} within {timeout_s:g} s; "
            "re-sending the same command_id is safe",
        )
        self.assessment_id = assessment_id
        self.timeout_s = timeout_s
        self.waiting_for = waiting_for


class CodecError(AssessmentStoreError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot decode event: {reason}")


class UnresolvableSchema(CodecError):
    """A record written with a schema this reader cannot resolve: its fingerprint is in neither
    the schemas it ships nor the schemas topic, or the writer schema cannot be read into the
    reader's. Not corrupt bytes: the record must not be skipped (docs/events.md)."""

    def __init__(self, fingerprint: str, reason: str, *, topic: str | None = None, partition: int | None = None,
                 offset: int | None = None) -> None:
        self.fingerprint = fingerprint
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = f" at {topic}/{partition}/{offset}" if topic is not None else ""
        super().__init__(f"writer schema {fingerprint}{where}: {reason}")
        self.reason = reason

    def at(self, topic: str, partition: int, offset: int) -> UnresolvableSchema:
        """The same error, naming the record it was met at."""
        return UnresolvableSchema(self.fingerprint, self.reason, topic=topic, partition=partition, offset=offset)


class BackendError(AssessmentStoreError):
    retriable = True


class KafkaUnavailable(BackendError):
    pass


class TopicRefused(BackendError):
    """CreateTopics answered with an error for ``topic`` (an invalid config, a policy, more partition
    records than the controller takes in one batch, ...): the topic does not exist. ``retriable`` is
    Kafka's own verdict for ``error_code`` (a timeout or a controller move is worth another try)."""

    def __init__(self, topic: str, error_code: int, reason: str, *, retriable: bool = False) -> None:
        self.topic = topic
        self.error_code = error_code
        self.reason = reason
        self.retriable = retriable
        super().__init__(f"Kafka refused to create topic {topic!r} (error {error_code}): {reason}")


class DatabaseUnavailable(BackendError):
    pass


class FencedOut(BackendError):
    """A rebalance gave this member's partitions to another member (typically after a stall past the
    session timeout): its offset commit was refused, so what it handled since is not its to write."""

    def __init__(self, message: str, group: str | None = None, partitions: tuple[int, ...] = ()) -> None:
        self.group = group
        self.partitions = partitions
        super().__init__(message)


class SchemaRegistryUnavailable(BackendError):
    """The schema registry did not answer, or answered something that is not its protocol (a 5xx, a
    body too large or not JSON). Retriable: the write that needed it was not attempted, and no record
    went out in another wire format instead (docs/events.md, "The schema registry")."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        code = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"schema registry {url}{code}: {reason}")


class SchemaRejected(BackendError):
    """The schema registry refused to register a writer schema under a subject: incompatible with
    the versions before it under the subject's compatibility mode (HTTP 409), or invalid (422). The
    same schema is refused again however often it is retried: a deployment problem, not an outage."""

    retriable = False

    def __init__(self, subject: str, status: int, reason: str) -> None:
        self.subject = subject
        self.status = status
        self.reason = reason
        super().__init__(f"schema registry refused the writer schema of subject {subject!r} (HTTP {status}): {reason}")


class KafkaAccessDenied(BackendError):
    """The broker authenticated nobody (wrong or missing credentials: ``reason`` "authentication") or
    its ACLs forbid this principal the operation (``reason`` "authorization": writing a topic it may
    only read, say). Retrying the same call fails the same way."""

    retriable = False

    def __init__(self, what: str, principal: str | None, reason: str, detail: str) -> None:
        self.what = what
        self.principal = principal
        self.reason = reason
        self.detail = detail
        who = f"principal {principal!r}" if principal else "an unauthenticated client"
        super().__init__(f"{what}: Kafka refused {who} ({reason}): {detail}")


class DataRejected(BackendError):
    """PostgreSQL refused a value as data (SQLSTATE class 22, a constraint, a limit): the same
    statement fails again however often it is retried, so this is not an outage. The projector
    quarantines the assessment whose event carries the value (``projections._projector``)."""

    retriable = False

    def __init__(self, what: str, sqlstate: str | None, reason: str) -> None:
        self.what = what
        self.sqlstate = sqlstate
        self.reason = reason
        super().__init__(f"{what}: PostgreSQL refused the data ({sqlstate or 'client-side'}): {reason}")


class StackError(AssessmentStoreError):
    pass


class PortInUse(StackError):
    def __init__(self, port: int, service: str, holder: str | None) -> None:
        self.port = port
        self.service = service
        self.holder = holder
        who = f" by {holder}" if holder else " by another process"
        super().__init__(
            f"port {port} needed by {service} is already in use{who}; "
            f"stop it or choose another port (see `assessment-store stack --help`)"
        )


class MissingTool(StackError):
    def __init__(self, tool: str, install_hint: str) -> None:
        self.tool = tool
        self.install_hint = install_hint
        super().__init__(f"{tool} not found on PATH; install it with: {install_hint}")


class DownloadFailed(StackError):
    def __init__(self, what: str, log_tail: str) -> None:
        self.what = what
        self.log_tail = log_tail
        super().__init__(f"could not download {what}; last lines of mvn output:\n{log_tail}")


class ServiceFailed(StackError):
    def __init__(self, service: str, reason: str, log_tail: str = "") -> None:
        self.service = service
        self.reason = reason
        self.log_tail = log_tail
        tail = f"\n--- last lines of its log ---\n{log_tail}" if log_tail else ""
        super().__init__(f"{service} failed: {reason}{tail}")
