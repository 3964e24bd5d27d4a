"""The control channel: commands every worker must see (reload a bundle), broadcast over a topic.

Read without a consumer group (assign all partitions) so each worker gets every command; commands
older than the worker's start are skipped, which needs no "seek to end" (unreliable on some brokers).
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import BaseModel, ValidationError

from consumer.kafka_config import client_config

log = logging.getLogger(__name__)


class ControlCommand(BaseModel):
    action: Literal["reload"]
    bundle_path: str | None = None


def send_command(bootstrap: str, topic: str, command: ControlCommand) -> None:
    producer = Producer(client_config(bootstrap))
    producer.produce(topic, value=command.model_dump_json().encode())
    if producer.flush(10):
        raise TimeoutError(f"control command not acknowledged by {bootstrap}")


class ControlListener:
    def __init__(self, bootstrap: str, topic: str, on_command: Callable[[ControlCommand], None]) -> None:
        self.bootstrap, self.topic, self.on_command = bootstrap, topic, on_command
        self._started_ms = int(time.time() * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-listener", daemon=True)

    def start(self) -> "ControlListener":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        consumer = Consumer(client_config(self.bootstrap, {"group.id": "memeguard-control",
                                                              "enable.auto.commit": False}))
        try:
            parts = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() or msg.timestamp()[1] < self._started_ms:
                    continue
                try:
                    command = ControlCommand.model_validate_json(msg.value())
                except ValidationError as e:
                    log.warning("ignoring invalid control command at offset %d: %s", msg.offset(), e)
                    continue
                log.info("control command: %s", command.model_dump())
                self.on_command(command)
        except Exception:
            log.exception("control listener stopped; bundle reloads still follow the watched path")
        finally:
            consumer.close()
