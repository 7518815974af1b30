"""One URL for the store: a single Redis, a Sentinel-managed master, or a Redis Cluster.

``OTPSVC_REDIS_URL`` takes the schemes of the ``limits`` library, so one URL describes every
deployment:

- ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path?db=0``;
- ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]`` (``rediss+sentinel``
  for TLS): the sentinels are asked for the current master of ``service_name``, and again after a
  failover; the password is the data nodes' (sentinels without AUTH);
- ``redis+cluster://[:password@]host:port[,host:port...]`` (``rediss+cluster``): any nodes of the
  cluster; the client learns the slot map and follows it through failovers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from otpsvc import metrics
from otpsvc.errors import StoreUnavailable

log = logging.getLogger("otpsvc.store")

#: redis-py typed ``Sentinel`` and ``master_for`` only in 8.2: called through this untyped name,
#: the same code type-checks against the locked 8.1 and any newer release, with no ignore that one
#: of them reports as unused.
_make_sentinel: Callable[..., Any] = Sentinel

SINGLE = ("redis", "rediss", "unix")
SENTINEL = ("redis+sentinel", "rediss+sentinel")
CLUSTER = ("redis+cluster", "rediss+cluster")

#: What every part of the store talks to: a client for one server (single or Sentinel master)
#: or for a cluster. Both take the same commands for what otpsvc does.
RedisClient = redis.Redis | RedisCluster


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # "single" | "sentinel" | "cluster"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """The deployment a URL names; ValueError with a message fit for the operator otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in (*SINGLE, *SENTINEL, *CLUSTER):
        raise ValueError(
            "must be redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// "
            "(rediss+ for TLS)"
        )
    if scheme in SINGLE:
        return RedisTarget("single", url)
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    hosts_text, _, path = hostpart.partition("/")
    hosts: list[tuple[str, int]] = []
    for item in hosts_text.split(","):
        parsed = urlsplit(f"//{item.strip()}")
        try:
            port = parsed.port or 6379 if scheme in CLUSTER else parsed.port or 26379
        except ValueError as exc:
            raise ValueError(f"{item.strip()!r} is not host:port") from exc
        if not parsed.hostname:
            raise ValueError(f"{item.strip()!r} is not host:port")
        hosts.append((parsed.hostname, port))
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    parts = [p for p in path.split("/") if p]
    service: str | None = None
    db = 0
    if scheme in SENTINEL:
        if not parts:
            raise ValueError("name the Sentinel service: redis+sentinel://host:port/service_name")
        service = parts[0]
        if len(parts) > 1:
            if not parts[1].isdecimal():
                raise ValueError(f"{parts[1]!r} is not a database number")
            db = int(parts[1])
    elif parts:
        raise ValueError("a cluster URL names nodes only: redis+cluster://host:port,host:port")
    return RedisTarget(
        "sentinel" if scheme in SENTINEL else "cluster",
        url,
        hosts=tuple(hosts),
        service=service,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=scheme.startswith("rediss"),
    )


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


#: Every error a client can raise about the store: the cluster client's own errors (a slot no
#: node serves during a failover, say) are not all ``RedisError``s.
STORE_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)


@contextmanager
def store_guard() -> Iterator[None]:
    """Every Redis failure leaves the store as :class:`StoreUnavailable` (HTTP 503)."""
    try:
        yield
    except STORE_ERRORS as exc:
        log.warning("redis unavailable: %s", type(exc).__name__)
        metrics.STORE_ERRORS.inc()
        raise StoreUnavailable("the verification store did not answer") from exc


def connect(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    tls: Mapping[str, str] | None = None,
) -> RedisClient:
    """A client with bounded waits: no command waits longer than ``socket_timeout``.

    A connection error is retried once on a fresh connection (after a restart or a failover the
    pool holds dead sockets); a timeout is never retried, since the command may have run.
    ``tls`` (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) applies to a TLS URL.
    """
    target = parse_redis_url(url)
    ssl_options = dict(tls or {}) if url.startswith("rediss") else {}
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), retries=1, supported_errors=(redis.ConnectionError,)),
        "decode_responses": True,
        "client_name": "otpsvc",
    }
    if target.kind == "single":
        return redis.Redis.from_url(url, health_check_interval=30, **common, **ssl_options)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.tls:
        auth.update(ssl=True, **ssl_options)
    if target.kind == "sentinel":
        sentinel = _make_sentinel(
            list(target.hosts),
            sentinel_kwargs={
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": connect_timeout,
                **({"ssl": True, **ssl_options} if target.tls else {}),
            },
        )
        assert target.service is not None
        master: redis.Redis = sentinel.master_for(
            target.service, db=target.db, health_check_interval=30, **common, **auth
        )
        return master
    return RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in target.hosts
        ],
        # ``retry`` (in ``common``) bounds the cluster client too: one retry on a connection
        # error, so a slot whose master is gone answers 503 within a few timeouts, and the client
        # follows the new slot map once the replica has taken over.
        **common,
        **auth,
    )


def per_node(
    client: RedisClient, keys: list[str], command: Callable[[Any, str], object]
) -> dict[str, Any]:
    """``command(pipeline, key)`` for every key, in one pipeline per server (on a cluster,
    to the node of each key's slot, one command per key); each key's answer, an exception
    when that command failed. A cluster that moved a slot has its map read again."""
    r: Any = client
    groups: dict[str, tuple[Any, list[str]]] = {}
    if is_cluster(r):
        for key in keys:
            node = r.get_node_from_key(key)
            groups.setdefault(node.name, (node.redis_connection, []))[1].append(key)
    else:
        groups[""] = (r, list(keys))
    answers: dict[str, Any] = {}
    try:
        for connection, group in groups.values():
            pipe = connection.pipeline(transaction=False)
            for key in group:
                command(pipe, key)
            answers.update(zip(group, pipe.execute(raise_on_error=False), strict=True))
    except STORE_ERRORS:
        if is_cluster(r):
            r.nodes_manager.initialize()
        raise
    for answer in answers.values():
        if isinstance(answer, redis.ResponseError) and str(answer).startswith(("MOVED", "ASK")):
            r.nodes_manager.initialize()
            raise redis.ConnectionError(f"slot moved: {answer}")
    return answers
