"""Alert state in Redis, shared by every alerter replica, so de-duplication and author windows survive a
restart and hold across replicas.

Keys (the `{rule:subject}` / `{rule:author}` hash tag puts an alert's keys in one Redis Cluster slot, so the
claim script and the mark-sent transaction never cross slots):
- `alert:sent:{rule:subject}`: set once every destination has the alert (TTL `dedup_ttl_s`; for author
  rules the window length, so a persistent offender alerts again once per window).
- `alert:claim:{rule:subject}`: the replica sending the alert right now (TTL `claim_ttl_s`). Two replicas can
  hold the same verdict for a moment (a partition moving between them, a re-delivery): the claim makes one
  of them send and the other wait for the outcome, instead of both alerting.
- `alert:window:{rule:author}`: sorted set of post ids scored by the verdict's time. Post ids as members
  make a re-delivered verdict (or two replicas seeing it) count once. The window ends at the newest post
  in it, not at the verdict just read: an author's posts are on different partitions (keyed by post id),
  read by different replicas in no particular order, and whichever arrives last still sees them all.
"""

import enum
import uuid

from consumer.core.redis_client import async_client, hash_tag
from consumer.errors import ConfigError

CLAIM_TTL_S = 120  # longer than a delivery with retries takes; a replica that died holding a claim delays
# that alert by at most this long (the next owner of the partition waits, then sends it)

# KEYS[1] sent, KEYS[2] claim; ARGV[1] owner, ARGV[2] claim TTL (ms). 0: sent already, 1: ours, 2: another's.
CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 2
"""
# KEYS[1] window; ARGV: post id, its time, window length, key TTL. Returns the posts in the window that ends
# at the newest post. One script: two replicas adding to one author's window do not interleave.
WINDOW_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local newest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', newest - tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""
# KEYS[1] claim; ARGV[1] owner: drop the claim only if it is still ours.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim(enum.Enum):
    SENT = 0  # already delivered (by anyone): suppress
    OURS = 1  # this replica sends it
    BUSY = 2  # another replica is sending it now


class AlertState:
    def __init__(self, url: str, dedup_ttl_s: int, claim_ttl_s: float = CLAIM_TTL_S, timeout_s: float = 5.0) -> None:
        if not url:
            raise ConfigError("The alerter needs Redis for its windows and de-duplication: set MEMEGUARD_REDIS_URL.")
        self.redis = async_client(url, timeout_s)
        self.dedup_ttl_s = dedup_ttl_s
        self.claim_ttl_ms = int(claim_ttl_s * 1000)
        self.owner = uuid.uuid4().hex  # this process: a claim left by a previous run of it is not "ours"
        self._claim = self.redis.register_script(CLAIM_SCRIPT)
        self._release = self.redis.register_script(RELEASE_SCRIPT)
        self._window = self.redis.register_script(WINDOW_SCRIPT)

    @staticmethod
    def _keys(rule: str, subject: str) -> tuple[str, str]:
        tag = hash_tag(f"{rule}:{subject}")
        return f"alert:sent:{tag}", f"alert:claim:{tag}"

    async def already_sent(self, rule: str, subject: str) -> bool:
        return bool(await self.redis.exists(self._keys(rule, subject)[0]))

    async def claim(self, rule: str, subject: str) -> Claim:
        """Atomically: sent already, or claimed by this replica (again: a retry after a Redis error), or busy."""
        return Claim(int(await self._claim(keys=list(self._keys(rule, subject)), args=[self.owner, self.claim_ttl_ms])))

    async def release(self, rule: str, subject: str) -> None:
        """Give a claim back without marking the alert sent (its delivery failed: another attempt may send it)."""
        await self._release(keys=[self._keys(rule, subject)[1]], args=[self.owner])

    async def mark_sent(self, rule: str, subject: str, ttl_s: float | None = None) -> None:
        sent, claim = self._keys(rule, subject)
        async with self.redis.pipeline(transaction=True) as pipe:  # MULTI/EXEC: both keys in the tag's slot
            pipe.set(sent, "1", ex=max(1, int(ttl_s or self.dedup_ttl_s)))
            pipe.delete(claim)
            await pipe.execute()

    async def count_in_window(self, rule: str, author: str, post_id: str, at: float, window_s: float) -> int:
        """Add this post (at `at`, event time) to the author's window and return the window's size."""
        key = f"alert:window:{hash_tag(f'{rule}:{author}')}"
        return int(await self._window(keys=[key], args=[post_id, at, window_s, int(window_s) + 60]))

    async def close(self) -> None:
        await self.redis.aclose()
