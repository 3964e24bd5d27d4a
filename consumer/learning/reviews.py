"""From the append-only `memes.reviews` topic to one label per content hash.

Authenticity (docs/learning.md, "Which reviews count"). Anyone who can write the topic must not be able to
outvote, replace or retract a moderator, or inject labels, so a record is used only when:
1. it fits the schema (schemas/review.py) and is signed by the review page: HMAC-SHA256 with
   MEMEGUARD_REVIEW_SIGNING_KEY over its canonical JSON and the topic's name (without a key, unsigned
   records are taken only from a loopback development broker). The moderator, the review time and the
   labels are read from the signed content only;
2. its review id is seen for the first time (ordered by the broker's timestamp, then partition and offset):
   a copy of a signed record is a replay, and a record whose broker timestamp is earlier than its signed
   `reviewed_at` (beyond CLOCK_SKEW_MS) is refused, so a replayed copy cannot be moved before the original;
3. a retraction names a review of the same moderator and content (another moderator's review, or one that
   is not on the topic, is refused);
4. its labels and rejected labels are technique names the verdict it reviewed flagged (checked by
   `dataset build`, which holds the verdicts: `refuse_labels`).
Whatever fails is counted (`Checked.counts`), listed (`Checked.rejected`: partition, offset, reason; signed
ids only) and logged without its content, never used, and never stops the read.

The resolution policy (docs/learning.md, "Which decision counts"), over what verified:
1. A retraction (undo) cancels the review it names; the retraction itself is no vote.
2. Per content hash and moderator, that moderator's latest standing review (by broker timestamp) is their vote
   (a moderator who changed their mind counts once, with the later decision).
3. Per content hash, the majority of the moderators' votes is the label. A tie is a disagreement: recorded
   in the dataset's manifest and left out of the records. A majority that was not unanimous is kept and also
   recorded, so agreement between moderators can be measured.
"""

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from pydantic import SecretStr, ValidationError

from consumer.kafka.topic_reader import Record
from consumer.kafka.topics import is_loopback
from schemas.review import (
    MAX_REVIEW_BYTES,
    REVIEW_CONTEXT,
    REVIEW_RECORD,
    RetractionMessage,
    ReviewMessage,
)
from schemas.signing import signature_refusal

log = logging.getLogger(__name__)

CLOCK_SKEW_MS = 5 * 60 * 1000  # how much earlier than its signed time a record's broker timestamp may be
ACCEPTED = ("verified", "unchecked")  # unchecked: unsigned, taken because no key is set and the broker is loopback
REFUSED = ("invalid", "unsigned", "bad_signature", "replayed", "timestamp_before_review", "foreign_retraction",
           "retracts_unknown_review", "labels_not_in_verdict")
MAX_LISTED = 1000  # rejected records listed in the manifest (all are counted)


class _FromSettings:
    """The default key: MEMEGUARD_REVIEW_SIGNING_KEY, read where it is needed."""


FROM_SETTINGS: Any = _FromSettings()
Key = SecretStr | str | bytes | None


def key_bytes(key: "Key | _FromSettings") -> bytes | None:
    if isinstance(key, _FromSettings):
        from consumer.settings import KafkaSettings

        key = KafkaSettings().review_signing_key
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    if isinstance(key, str):
        key = key.encode()
    return key or None


Message = ReviewMessage | RetractionMessage


@dataclass(frozen=True)
class ReviewAuth:
    """How a reader of the reviews topic decides whether a record is a review it may use."""

    key: bytes | None
    allow_unsigned: bool

    @classmethod
    def of(cls, bootstrap: str, key: "Key | _FromSettings" = FROM_SETTINGS) -> "ReviewAuth":
        secret = key_bytes(key)
        return cls(secret, secret is None and is_loopback(bootstrap))

    def read(self, topic: str, value: bytes | None) -> tuple[Message | None, str]:
        """The message in a record value and `verified` / `unchecked`, or None and why it is refused. Never
        raises, whatever the bytes."""
        if value is None or len(value) > MAX_REVIEW_BYTES:
            return None, "invalid"
        try:
            # pydantic's parser: bounded nesting, no lone surrogates, strict UTF-8 (ValueError otherwise)
            doc = pydantic_core.from_json(value)
        except (ValueError, RecursionError):
            return None, "invalid"
        if not isinstance(doc, dict):
            return None, "invalid"
        refused = signature_refusal(doc, self.key, self.allow_unsigned, REVIEW_CONTEXT, topic)
        if refused:
            return None, refused
        try:
            message = REVIEW_RECORD.validate_python(doc)
        except (ValidationError, ValueError, RecursionError):
            return None, "invalid"
        return message, "verified" if self.key is not None else "unchecked"


@dataclass(frozen=True)
class Signed:
    """A message that verified, with where and when the broker has it."""

    message: Message
    timestamp_ms: int
    partition: int
    offset: int

    @property
    def order(self) -> tuple[int, int, int]:
        return self.timestamp_ms, self.partition, self.offset


@dataclass(frozen=True)
class Rejected:
    partition: int
    offset: int
    reason: str
    review_id: str | None = None  # only from signed content
    moderator: str | None = None

    def listed(self) -> dict[str, Any]:
        out: dict[str, Any] = {"partition": self.partition, "offset": self.offset, "reason": self.reason}
        if self.review_id is not None:
            out.update(review_id=self.review_id, moderator=self.moderator)
        return out


@dataclass
class Checked:
    reviews: list[Signed] = field(default_factory=list)
    retractions: list[Signed] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    used_as: str = "verified"  # or "unchecked": what the used records count as

    def recount(self) -> None:
        self.counts[self.used_as] = len(self.reviews) + len(self.retractions)
        self.counts = +self.counts

    def refuse(self, record: Record | Signed, reason: str, topic: str = "") -> None:
        signed = record if isinstance(record, Signed) else None
        self.rejected.append(Rejected(record.partition, record.offset, reason,
                                      signed.message.review_id if signed else None,
                                      signed.message.moderator if signed else None))
        self.counts[reason] += 1
        # where and why, never the record's content
        log.warning("review record refused, not used", extra={
            "result": reason, "topic": topic, "partition": record.partition, "offset": record.offset})


def verify(records: list[Record], topic: str, auth: ReviewAuth) -> Checked:
    """Rules 1-3 of the module's docstring over every record of the reviews topic."""
    out = Checked(used_as="verified" if auth.key is not None else "unchecked")
    accepted: list[Signed] = []
    for r in records:
        message, result = auth.read(topic, r.value)
        if message is None:
            out.refuse(r, result, topic)
            continue
        signed = Signed(message, r.timestamp_ms, r.partition, r.offset)
        if auth.key is not None and r.timestamp_ms < message.reviewed_at.timestamp() * 1000 - CLOCK_SKEW_MS:
            out.refuse(signed, "timestamp_before_review", topic)
            continue
        accepted.append(signed)
    seen: dict[str, Signed] = {}
    for s in sorted(accepted, key=lambda s: s.order):
        if s.message.review_id in seen:
            out.refuse(s, "replayed", topic)
            continue
        seen[s.message.review_id] = s
    for s in seen.values():
        (out.retractions if isinstance(s.message, RetractionMessage) else out.reviews).append(s)
    reviews = {s.message.review_id: s for s in out.reviews}
    kept = []
    for s in out.retractions:
        assert isinstance(s.message, RetractionMessage)
        target = reviews.get(s.message.retracts)
        if target is None:
            out.refuse(s, "retracts_unknown_review", topic)
        elif (target.message.moderator, target.message.content_hash) != (s.message.moderator, s.message.content_hash):
            out.refuse(s, "foreign_retraction", topic)
        else:
            kept.append(s)
    out.retractions = kept
    out.recount()
    return out


def refuse_labels(checked: Checked, labels_allowed: Callable[[ReviewMessage], bool | None], topic: str = ""
                  ) -> None:
    """Rule 4: drop the reviews whose labels `labels_allowed` refuses (False; None: no verdict to check against,
    kept: such a review's content is skipped when it would become a record). Retractions of a dropped review
    then cancel nothing."""
    kept = []
    for s in checked.reviews:
        assert isinstance(s.message, ReviewMessage)
        if labels_allowed(s.message) is False:
            checked.refuse(s, "labels_not_in_verdict", topic)
        else:
            kept.append(s)
    checked.reviews = kept
    checked.recount()


@dataclass(frozen=True)
class Vote:
    moderator: str
    decision: str  # the review's final_decision: "block" or "allow"
    review: Signed

    @property
    def message(self) -> ReviewMessage:
        assert isinstance(self.review.message, ReviewMessage)
        return self.review.message


@dataclass(frozen=True)
class Resolved:
    content_hash: str
    decision: str | None  # None: a tie between moderators
    votes: list[Vote]
    latest: ReviewMessage | None = None  # the newest review on the winning side

    @property
    def unanimous(self) -> bool:
        return len({v.decision for v in self.votes}) == 1


@dataclass
class Resolution:
    resolved: list[Resolved] = field(default_factory=list)
    checked: Checked = field(default_factory=Checked)
    retracted: int = 0

    @property
    def invalid(self) -> int:
        """Records that are not review/retraction JSON fitting the schema."""
        return self.checked.counts["invalid"]

    @property
    def labelled(self) -> list[Resolved]:
        return [r for r in self.resolved if r.decision is not None]

    @property
    def disagreements(self) -> list[Resolved]:
        return [r for r in self.resolved if not r.unanimous]


def resolve(checked: Checked) -> Resolution:
    """The policy of the module's docstring over the verified reviews and retractions."""
    cancelled = {s.message.retracts for s in checked.retractions if isinstance(s.message, RetractionMessage)}
    standing = [s for s in checked.reviews if s.message.review_id not in cancelled]
    latest_per_moderator: dict[tuple[str, str], Signed] = {}
    for s in sorted(standing, key=lambda s: s.order):
        latest_per_moderator[(s.message.content_hash, s.message.moderator)] = s
    by_hash: dict[str, list[Vote]] = {}
    for (h, who), s in sorted(latest_per_moderator.items()):
        assert isinstance(s.message, ReviewMessage)
        by_hash.setdefault(h, []).append(Vote(who, s.message.final_decision, s))
    out = Resolution(checked=checked, retracted=len(checked.reviews) - len(standing))
    for h, votes in sorted(by_hash.items()):
        counts = Counter(v.decision for v in votes).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            out.resolved.append(Resolved(h, None, votes))
            continue
        winner = counts[0][0]
        latest = max((v.review for v in votes if v.decision == winner), key=lambda s: s.order)
        assert isinstance(latest.message, ReviewMessage)
        out.resolved.append(Resolved(h, winner, votes, latest.message))
    return out
