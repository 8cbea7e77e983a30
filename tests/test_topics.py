"""Creating topics (streams.ensure_topics) against the real broker: a refusal is an error naming the
topic and Kafka's reason, never a topic counted as created."""

from __future__ import annotations

import uuid

import pytest

from assessment_store import Settings
from assessment_store.core import TopicRefused
from assessment_store.streams import TopicSpec, ensure_topics, partition_counts


@pytest.mark.stack
async def test_a_topic_the_broker_refuses_raises_and_is_not_reported_created(stack_settings: Settings) -> None:
    """An invalid topic config: TopicRefused with the topic, the error code and the broker's message; the topic does not exist."""
    name = f"refused-{uuid.uuid4().hex[:8]}"
    with pytest.raises(TopicRefused) as caught:
        await ensure_topics(stack_settings, [TopicSpec(name, 1, {"cleanup.policy": "no-such-policy"})])
    err = caught.value
    assert err.topic == name and err.error_code == 40 and not err.retriable  # INVALID_CONFIG
    assert "no-such-policy" in str(err) and name in str(err)
    assert (await partition_counts(stack_settings, [name])).get(name, 0) == 0


@pytest.mark.stack
async def test_creating_topics_reports_the_new_ones_and_not_the_existing(stack_settings: Settings) -> None:
    """ensure_topics returns the topics it created; a second call finds them and creates nothing."""
    specs = [TopicSpec(f"created-{uuid.uuid4().hex[:8]}", 2, {}) for _ in range(2)]
    assert await ensure_topics(stack_settings, specs) == [s.name for s in specs]
    assert await ensure_topics(stack_settings, specs) == []
    assert await partition_counts(stack_settings, [s.name for s in specs]) == {s.name: 2 for s in specs}
