"""Topics, producers and (later) the command processor: everything that writes the log."""

from ._kafka import TopicSpec, ensure_topics, store_topics, translate_kafka_errors
from ._producer import EventProducer

__all__ = ["EventProducer", "TopicSpec", "ensure_topics", "store_topics", "translate_kafka_errors"]
