"""The worker's reader of the control topic (the records and their verification: worker/control.py)."""

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.kafka.config import client_config
from consumer.worker.control import ControlAuth, ControlCommand

log = logging.getLogger(__name__)


class ControlListener:
    """Reads the control topic from its beginning (no group: every worker sees every command).

    The records already there when it starts are history: handed to `on_history` at once (the fleet
    member takes its latest rollout from them; old `reload`s are not replayed), then each new command to
    `on_command`. `caught_up` is set once the history is through. Only commands `auth` accepts are handed
    on, each command_id once; `counts` has every record's outcome (ACCEPTED or REFUSED), and no record,
    whatever its bytes, and no failing callback stops the listener."""

    def __init__(self, bootstrap: str, topic: str, on_command: Callable[[ControlCommand], None],
                 on_history: Callable[[list[ControlCommand]], None] | None = None,
                 auth: ControlAuth | None = None) -> None:
        self.bootstrap, self.topic, self.on_command, self.on_history = bootstrap, topic, on_command, on_history
        self.auth = auth if auth is not None else ControlAuth.of(bootstrap)
        self.counts: Counter[str] = Counter()
        self.caught_up = threading.Event()
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-listener", daemon=True)

    def start(self) -> "ControlListener":
        if self.auth.key is None:
            if self.auth.allow_unsigned:
                log.warning("MEMEGUARD_CONTROL_KEY is not set: unsigned control commands are accepted (loopback "
                            "development broker only)")
            else:
                log.error("MEMEGUARD_CONTROL_KEY is not set: every control command on %s is refused (rollouts "
                          "and reloads need the fleet's key); the watched bundle path still reloads", self.topic)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def accept(self, value: bytes | None, partition: int, offset: int) -> ControlCommand | None:
        """The command to act on in one record, or None; counted and, when refused, logged."""
        command, result = self.auth.read(self.topic, value)
        if command is not None and command.command_id is not None:
            if command.command_id in self._seen:
                command, result = None, "replayed"
            else:
                self._seen.add(command.command_id)
        self.counts[result] += 1
        if command is None:
            log.warning("control record refused, not acted on", extra={
                "result": result, "topic": self.topic, "partition": partition, "offset": offset})
        return command

    def _run(self) -> None:
        consumer = Consumer(client_config(self.bootstrap, {"group.id": "memeguard-control",
                                                              "enable.auto.commit": False}))
        try:
            parts = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            marks = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in parts}
            ends = {p: high for p, (_low, high) in marks.items()}
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            history: list[ControlCommand] = []
            behind = {p for p, (low, high) in marks.items() if high > low}
            while not self._stop.is_set():
                if not behind and not self.caught_up.is_set():
                    if self.on_history is not None:
                        self._call(self.on_history, history)
                    self.caught_up.set()
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                try:
                    command = self.accept(msg.value(), msg.partition(), msg.offset())
                except Exception:  # never expected (accept() takes any bytes), never fatal
                    log.exception("control record at offset %d not read", msg.offset())
                    self.counts["failed"] += 1
                    command = None
                if msg.partition() in behind:
                    if msg.offset() >= ends[msg.partition()] - 1:
                        behind.discard(msg.partition())
                    if command is not None:
                        history.append(command)
                    continue
                if command is not None:
                    log.info("control command: %s", command.model_dump(exclude_none=True))
                    self._call(self.on_command, command)
        except Exception:
            log.exception("control listener stopped; bundle reloads still follow the watched path")
        finally:
            self.caught_up.set()  # nobody waits on a listener that died
            consumer.close()

    def _call(self, callback: Callable[[Any], None], what: Any) -> None:
        """A command that fails to apply is logged and counted; the next one is still read."""
        try:
            callback(what)
        except Exception:
            log.exception("control command not applied")
            self.counts["failed"] += 1
