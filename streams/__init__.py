"""Topics, producers and the command processor: everything that writes the log."""

from ._appender import Appender
from ._commands import REPLY_CHANNEL_PREFIX, REPLY_HEADER, CommandSender, is_reply_channel
from ._kafka import (
    PRINCIPALS, Principal, TopicSpec, ensure_topics, kafka_client_options, partition_counts, schemas_topic,
    schemas_topic_spec, store_topics,
    topic_end_offsets, translate_kafka_errors,
)
from ._processor import COMMAND_OFFSET_HEADER, CommandProcessor, ProcessorStats
from ._schema_topic import PartitionStops, SchemaResolver, read_schemas
from ._registry import COMPATIBILITY, SchemaRegistryClient, register_writer_schemas, registry_subject
from ._snapshot import state_topic
from ._kafka import publish_schemas
from ._fence import LogFence, Verdict, fence_metadata, header, metadata_epoch
from ._kafka import admin_client, committed_with_metadata, kafka_principal, node_client_env, read_credentials, start_kafka_client

__all__ = [
    "Appender",
    "SchemaResolver",
    "PartitionStops",
    "COMPATIBILITY",
    "SchemaRegistryClient",
    "register_writer_schemas",
    "registry_subject",
    "publish_schemas",
    "read_schemas",
    "schemas_topic",
    "schemas_topic_spec",
    "admin_client",
    "committed_with_metadata",
    "kafka_principal",
    "node_client_env",
    "read_credentials",
    "start_kafka_client",
    "LogFence",
    "header",
    "Verdict",
    "fence_metadata",
    "metadata_epoch",
    "COMMAND_OFFSET_HEADER",
    "PRINCIPALS",
    "Principal",
    "CommandProcessor",
    "CommandSender",
    "REPLY_CHANNEL_PREFIX",
    "REPLY_HEADER",
    "is_reply_channel",
    "ProcessorStats",
    "TopicSpec",
    "ensure_topics",
    "kafka_client_options",
    "partition_counts",
    "state_topic",
    "store_topics",
    "topic_end_offsets",
    "translate_kafka_errors",
]
