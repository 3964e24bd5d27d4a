"""One place that turns a Redis URL into a client: a single server or a Redis Cluster.

URL forms (MEMEGUARD_REDIS_URL):
- `redis://[user:password@]host:port/db`, `rediss://…` (TLS): one server (or a managed endpoint that proxies a
  cluster), `redis.Redis`.
- `redis+cluster://[user:password@]host:port[,host:port…]`, `rediss+cluster://…` (TLS): a Redis Cluster,
  `redis.cluster.RedisCluster`. The hosts are seed nodes (list two or more, so a start does not depend on
  one node); the client discovers the rest and follows MOVED/ASK redirects. Database 0 only (a cluster has no
  other), so a path other than `/` or `/0` is refused.

In a cluster, a command that touches several keys (MGET, MULTI/EXEC, a Lua script, a transaction pipeline)
must find them all in one hash slot, or Redis answers CROSSSLOT. Keys that go together therefore carry the
same hash tag: only the part between `{` and `}` is hashed (`hash_tag`).

Timeouts are short and retries few, so a dead node costs a caller well under a second per command and the
caller's own error handling (counted, visible) decides what happens next, instead of the client retrying
for many seconds inside one call.
"""

from collections.abc import Callable
from urllib.parse import unquote

import redis
import redis.asyncio as aioredis
from purgatory import AsyncCircuitBreakerFactory
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from consumer.errors import ConfigError

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
# Every failure a Redis call can raise: RedisClusterException (e.g. no reachable node at start) is not a
# RedisError subclass, and a socket problem can surface as a bare OSError.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)
CLUSTER_RETRIES = 2  # MOVED after a failover, a node restarting: re-read the slot map, try again, then give up


def outage_breaker(retry_after_s: float) -> AsyncCircuitBreakerFactory:
    """A circuit breaker for a best-effort Redis user: one Redis error opens it for `retry_after_s` (a timed-out
    Redis would otherwise cost its timeout on every batch), then one call probes again. Only Redis errors count:
    a cancelled batch or a bug in our own code says nothing about Redis."""
    return AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=retry_after_s,
                                      exclude=[(BaseException, lambda e: not isinstance(e, REDIS_ERRORS))])


def hash_tag(value: str) -> str:
    """`{value}` for a key part that decides the slot; braces inside `value` would end the tag early, so they
    are replaced (keys stay distinct enough: the rest of the key is unchanged)."""
    return "{" + value.replace("{", "(").replace("}", ")") + "}"


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, object]]:
    """(seed nodes, client options) of a `redis+cluster://` URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ConfigError(f"not a Redis Cluster URL: {url!r} (expected redis+cluster://host:port[,host:port…])")
    netloc, _, path = rest.partition("/")
    if path.split("?", 1)[0] not in ("", "0"):
        raise ConfigError(f"Redis Cluster has database 0 only; remove /{path} from MEMEGUARD_REDIS_URL.")
    creds, _, hosts = netloc.rpartition("@")
    options: dict[str, object] = {"ssl": CLUSTER_SCHEMES[scheme.lower()]}
    if creds:
        user, has_password, password = creds.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) if has_password else None
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"Redis Cluster seed {part!r} in MEMEGUARD_REDIS_URL is not host:port.")
        nodes.append((host.strip("[]"), int(port)))
    return nodes, options


def sync_client(url: str, timeout_s: float = 5.0) -> redis.Redis | RedisCluster:
    """A blocking client for `url` (either form)."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    nodes, options = parse_cluster_url(url)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], socket_timeout=timeout_s,
                        socket_connect_timeout=timeout_s, retry=_cluster_retry(), **options)


def async_client(url: str, timeout_s: float = 5.0, **kwargs: object) -> aioredis.Redis | AsyncRedisCluster:
    """An asyncio client for `url` (either form); `kwargs` go to a single-server client only."""
    if not is_cluster_url(url):
        return aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **kwargs)
    nodes, options = parse_cluster_url(url)
    from redis.asyncio.retry import Retry

    return AsyncRedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes], socket_timeout=timeout_s,
                             socket_connect_timeout=timeout_s,
                             retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), CLUSTER_RETRIES), **options)


def _cluster_retry():
    from redis.retry import Retry

    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), CLUSTER_RETRIES)


def probe(url: str, timeout_s: float = 0.5) -> Callable[[], str | None] | None:
    """For /readyz: None while Redis (every master of a cluster) answers PING, else the problem in words."""
    if not url:
        return None
    clients: list[redis.Redis | RedisCluster] = []  # made at the first check: a cluster client reads the slot
    # map when it is made, and Redis may be down when the process starts

    def check() -> str | None:
        try:
            if not clients:
                clients.append(sync_client(url, timeout_s))
            client = clients[0]
            if isinstance(client, RedisCluster):
                client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                client.ping()
        except REDIS_ERRORS as e:
            return f"redis unreachable: {e}"
        return None

    return check
