"""From the append-only `memes.reviews` topic to one label per content hash.

The resolution policy (docs/learning.md, "Which decision counts"):
1. A retraction (undo) cancels the review it names; the retraction itself is no vote.
2. Per content hash and moderator, that moderator's latest standing review is their vote (a moderator who
   changed their mind counts once, with the later decision).
3. Per content hash, the majority of the moderators' votes is the label. A tie is a disagreement: recorded
   in the dataset's manifest and left out of the records. A majority that was not unanimous is kept and also
   recorded, so agreement between moderators can be measured.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from consumer.kafka.topic_reader import Record


@dataclass(frozen=True)
class Vote:
    moderator: str
    decision: str  # the review's final_decision: "block" or "allow"
    review: dict[str, Any]


@dataclass(frozen=True)
class Resolved:
    content_hash: str
    decision: str | None  # None: a tie between moderators
    votes: list[Vote]
    latest: dict[str, Any] | None = None  # the newest review on the winning side

    @property
    def unanimous(self) -> bool:
        return len({v.decision for v in self.votes}) == 1


@dataclass
class Resolution:
    resolved: list[Resolved] = field(default_factory=list)
    invalid: int = 0  # records that are not review/retraction JSON
    retracted: int = 0

    @property
    def labelled(self) -> list[Resolved]:
        return [r for r in self.resolved if r.decision is not None]

    @property
    def disagreements(self) -> list[Resolved]:
        return [r for r in self.resolved if not r.unanimous]


def _order(review: dict[str, Any]) -> tuple[str, str]:
    # ISO-8601 UTC timestamps written by the review page sort as text; the review id breaks exact ties.
    return str(review.get("reviewed_at") or ""), str(review.get("review_id") or "")


def parse_reviews(records: list[Record]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    reviews, retractions, invalid = [], [], 0
    for r in records:
        try:
            msg = json.loads(r.value or b"")
        except (UnicodeDecodeError, json.JSONDecodeError):
            invalid += 1
            continue
        if not isinstance(msg, dict) or not isinstance(msg.get("content_hash"), str) or not msg.get("moderator"):
            invalid += 1
        elif msg.get("type") == "review" and msg.get("final_decision") in ("block", "allow"):
            reviews.append(msg)
        elif msg.get("type") == "retraction":
            retractions.append(msg)
        else:
            invalid += 1
    return reviews, retractions, invalid


def resolve(records: list[Record]) -> Resolution:
    reviews, retractions, invalid = parse_reviews(records)
    cancelled = {m.get("retracts") for m in retractions}
    standing = [m for m in reviews if m.get("review_id") not in cancelled]
    latest_per_moderator: dict[tuple[str, str], dict[str, Any]] = {}
    for m in sorted(standing, key=_order):
        latest_per_moderator[(m["content_hash"], str(m["moderator"]))] = m
    by_hash: dict[str, list[Vote]] = {}
    for (h, who), m in sorted(latest_per_moderator.items()):
        by_hash.setdefault(h, []).append(Vote(who, m["final_decision"], m))
    out = Resolution(invalid=invalid, retracted=len(reviews) - len(standing))
    for h, votes in sorted(by_hash.items()):
        counts = Counter(v.decision for v in votes).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            out.resolved.append(Resolved(h, None, votes))
            continue
        winner = counts[0][0]
        latest = max((v.review for v in votes if v.decision == winner), key=_order)
        out.resolved.append(Resolved(h, winner, votes, latest))
    return out
