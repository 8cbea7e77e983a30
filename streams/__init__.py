"""Topics, producers and the command processor: everything that writes the log."""

from ._commands import CommandSender
from ._kafka import (
    PRINCIPALS, Principal, TopicSpec, ensure_topics, kafka_client_options, partition_counts, store_topics,
    topic_end_offsets, translate_kafka_errors,
)
from ._processor import COMMAND_OFFSET_HEADER, CommandProcessor, ProcessorStats

__all__ = [
    "COMMAND_OFFSET_HEADER",
    "PRINCIPALS",
    "Principal",
    "CommandProcessor",
    "CommandSender",
    "ProcessorStats",
    "TopicSpec",
    "ensure_topics",
    "kafka_client_options",
    "partition_counts",
    "store_topics",
    "topic_end_offsets",
    "translate_kafka_errors",
]
