"""The explainer follows the verdict: the pipeline hands over fresh `review` verdicts, the publisher sends
a VerdictExplanation on its own topic afterwards; a failing or slow explainer never touches the verdict."""

import asyncio

from PIL import Image

from consumer.core.pipeline import Outcome, RawRecord
from consumer.core.publish import ProducerTopic
from consumer.kafka.topic_reader import read_topic
from consumer.kafka.topics import ensure_topics
from consumer.settings import WorkerSettings
from consumer.worker.explanations import ExplanationPublisher
from consumer.worker.producer_config import explanations_topic
from schemas import Decision, ModelInfo, TechniqueScore, Verdict, VerdictExplanation
from schemas.enrichment import Explanation
from tests.inprocess import MemoryTopic


def outcome(event_id: str, decision: Decision = Decision.REVIEW) -> Outcome:
    v = Verdict(event_id=event_id, post_id=f"p-{event_id}", content_hash="h" * 64, model=ModelInfo(name="m", version="1"),
                techniques=[TechniqueScore(technique="Smears", score=0.7, threshold=0.5, flagged=True)],
                decision=decision, reasons=["flagged: Smears"])
    o = Outcome(RawRecord(key=None, value=b"{}", topic="raw", partition=0, offset=0), verdict=v)
    o.explain_input = (Image.new("RGB", (8, 8)), "text")
    return o


def test_explanations_follow_on_their_own_topic_and_failures_are_counted() -> None:
    async def explain(image, text, summary):
        if "boom" in summary:
            raise RuntimeError("explainer down")
        await asyncio.sleep(0.01)
        return Explanation(verdict="harmful", explanation=f"because: {summary}", model="vlm", latency_ms=10.0)

    async def scenario() -> tuple[MemoryTopic, ExplanationPublisher, list[Outcome]]:
        topic = MemoryTopic("memes.explanations")
        publisher = ExplanationPublisher(explain, topic, max_pending=2)
        batch = [outcome("a"), outcome("b"), outcome("c")]
        publisher.submit(batch, "m@1+abc")
        await publisher.drain(5)
        return topic, publisher, batch

    topic, publisher, batch = asyncio.run(scenario())
    [(key, value), (_, _)] = topic.messages
    message = VerdictExplanation.model_validate_json(value)
    assert key == b"p-a" and message.event_id == "a" and message.model_version == "m@1+abc"
    assert "Smears" in message.explanation.explanation
    assert publisher.counts == {"published": 2, "skipped": 1}  # max_pending=2: the third is skipped, not queued
    assert all(o.explain_input is None for o in batch[:2])  # the batch lets go of the images


def test_a_failing_explainer_is_counted_not_raised() -> None:
    async def explain(image, text, summary):
        raise RuntimeError("explainer down")

    async def scenario() -> ExplanationPublisher:
        publisher = ExplanationPublisher(explain, MemoryTopic("x"))
        publisher.submit([outcome("a")], "m")
        await publisher.drain(5)
        return publisher

    assert asyncio.run(scenario()).counts == {"failed": 1}


def test_both_engines_send_explanations_through_one_librdkafka_topic(stack, topics) -> None:
    """worker/producer_config.explanations_topic is what the confluent loop and the Faust agent both hand the
    publisher (the agent used a Faust topic before): an explanation sent through it is on the broker."""
    name = f"explanations-{topics.group}"
    ensure_topics(stack.bootstrap, [name], 1)
    topic = explanations_topic(WorkerSettings(kafka_bootstrap=stack.bootstrap, explanations_topic=name))
    assert isinstance(topic, ProducerTopic) and topic.name == name

    async def explain(image, text, summary):
        return Explanation(verdict="harmful", explanation="because", model="vlm", latency_ms=1.0)

    async def scenario() -> ExplanationPublisher:
        publisher = ExplanationPublisher(explain, topic)
        publisher.submit([outcome("a")], "m@1")
        await publisher.drain(30)
        return publisher

    assert asyncio.run(scenario()).counts == {"published": 1}
    [record] = read_topic(stack.bootstrap, name, timeout_s=30)
    assert record.key == b"p-a" and VerdictExplanation.model_validate_json(record.value).event_id == "a"
