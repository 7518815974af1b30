"""The verification store's base: its scripts, its key names (see
:mod:`otpsvc.store.redis_store` for the layout), the server's state, and how a script runs (on
the master, and on a replica too where a check's attempt must survive a failover)."""

from __future__ import annotations

import logging
from typing import Any, cast

import redis

from otpsvc.errors import StoreUnavailable
from otpsvc.store.connection import STORE_ERRORS, RedisClient, is_cluster, store_guard
from otpsvc.store.due import DueIndex
from otpsvc.store.gate import Chains, Gate
from otpsvc.store.records import EventOptions, script_source
from otpsvc.store.shards import ID_PREFIX_LENGTH, event_keys, tag_of
from otpsvc.telemetry import TracedScript, span

log = logging.getLogger("otpsvc.store")


class StoreBase:
    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        wait_ms: int = 0,
        events: EventOptions | None = None,
    ) -> None:
        """``wait_ms`` > 0: a check's attempt must reach a replica (``WAIT 1 wait_ms``) before
        the code is compared, so a failover cannot hand an attempt back. ``events``: which
        clients' verifications write events (none by default)."""
        self.redis = client
        self.prefix = prefix
        self.wait_ms = wait_ms
        #: The ladder's due index, made on the first look for due steps (workers only).
        self._due: DueIndex | None = None
        self.events = events or EventOptions()
        self._reserve = self._register(client, "reserve")
        self._finalize = self._register(client, "finalize")
        self._begin_check = self._register(client, "begin_check")
        self._approve = self._register(client, "approve")
        self._failure = self._register(client, "failure")
        self._cancel = self._register(client, "cancel")
        self._delivery = self._register(client, "delivery")
        self._keypress = self._register(client, "keypress")
        self._ladder_claim = self._register(client, "ladder_claim")
        self._ladder_stop = self._register(client, "ladder_stop")
        self._ladder_skip = self._register(client, "ladder_skip")
        self._chains = Chains(client)

    @staticmethod
    def _register(client: RedisClient, name: str) -> TracedScript:
        return TracedScript(name, client.register_script(script_source(name)))

    # Key names -----------------------------------------------------------------------------

    @staticmethod
    def tag_of(phone_key: str) -> str:
        return tag_of(phone_key)

    @staticmethod
    def id_prefix(phone_key: str) -> str:
        """What a verification id of the number starts with (its tag first)."""
        return phone_key[:ID_PREFIX_LENGTH]

    def record_key(self, verification_id: str) -> str:
        return f"{self.prefix}:{{{tag_of(verification_id)}}}:v:{verification_id}"

    def _with_events(
        self, verification_id: str, keys: list[str], args: list[Any]
    ) -> tuple[list[str], list[Any]]:
        """A script's keys and args followed by the event shard's (see ``_events.lua``)."""
        return (
            [*keys, *event_keys(self.prefix, tag_of(verification_id))],
            [*args, *self.events.args()],
        )

    def open_key(self, owner: str, phone_key: str) -> str:
        """The index of the open verification ``owner`` has for the number: the client's name, or
        behind a gateway the client's name and a keyed hash of the person
        (:meth:`Starting.owner_of <otpsvc.core.start.Starting.owner_of>`)."""
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:o:{owner}:{phone_key}"

    def deny_key(self, client: str, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:d:{client}:{phone_key}"

    def denials_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:dn:{phone_key}"

    def failure_key(self, client: str, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:x:{client}:{phone_key}"

    def all_failures_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:xa:{phone_key}"

    def slow_key(self, phone_key: str) -> str:
        return f"{self.prefix}:{{{self.tag_of(phone_key)}}}:sl:{phone_key}"

    def message_key(self, provider: str, message_id: str) -> str:
        return f"{self.prefix}:msg:{provider}:{message_id}"

    # Operations ----------------------------------------------------------------------------

    def load(self, verification_id: str) -> dict[str, str]:
        """The record's fields; empty when there is none."""
        with store_guard():
            return cast(dict[str, str], self.redis.hgetall(self.record_key(verification_id)))

    def ping(self) -> None:
        with store_guard():
            self.redis.ping()

    def check_writable(self) -> None:
        """A write Redis takes: a server at ``maxmemory`` under ``noeviction`` answers every read
        and refuses every write (``OOM``), and a read-only replica refuses them too; either way
        no start or check can work, so readiness must not say otherwise."""
        try:
            with store_guard():
                self.redis.set(f"{self.prefix}:ready", 1, px=10_000)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, redis.exceptions.ResponseError):
                # The server's own words ("command not allowed when used memory >
                # 'maxmemory'", "You can't write against a read only replica").
                raise StoreUnavailable(f"redis refuses writes: {str(cause)[:120]}") from cause
            raise

    def persistence(self) -> str | None:
        """How Redis keeps its data across a restart: ``aof``, ``rdb``, ``none``; None when it
        does not say (a managed Redis that refuses CONFIG, say)."""
        with store_guard():
            info: dict[str, Any] = self.redis.info("persistence")
            if int(info.get("aof_enabled", 0)):
                return "aof"
            try:
                save = self.redis.config_get("save").get("save")
            except redis.exceptions.ResponseError:
                return None
        return "rdb" if save else "none"

    def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy``, or None when the server does not say."""
        with store_guard():
            info: dict[str, Any] = self.redis.info("memory")
        policy = info.get("maxmemory_policy")
        return str(policy) if policy is not None else None

    # Plumbing ------------------------------------------------------------------------------

    def _run_replicated(self, script: TracedScript, keys: list[str], args: list[Any]) -> Any:
        """Run a script, then ``WAIT`` for one replica, on the one connection that wrote (WAIT
        covers only that connection's writes), in one round trip. A connected replica that does
        not acknowledge within ``wait_ms``: StoreUnavailable, before anything is compared. With
        no replica connected at all there is nothing to wait for, and the check goes on."""
        node: Any = self.redis
        if is_cluster(self.redis):
            node = self.redis.get_node_from_key(keys[0]).redis_connection  # type: ignore[union-attr]
        try:
            with span(
                f"redis {script.name}",
                client=True,
                **{"db.system": "redis", "db.operation": "WAIT"},
            ):
                return self._wait_on(node, script, keys, args)
        except STORE_ERRORS:
            if is_cluster(self.redis):
                # This path talks to the slot's node directly, past the cluster client's own
                # handling of moved slots: have it learn the slot map again for the next try.
                self.redis.nodes_manager.initialize()  # type: ignore[union-attr]
            raise

    def _wait_on(self, node: Any, script: TracedScript, keys: list[str], args: list[Any]) -> Any:
        for _ in range(2):
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", 1, self.wait_ms)
            answer, acked = pipe.execute(raise_on_error=False)
            if isinstance(answer, redis.exceptions.NoScriptError):
                node.script_load(script.text)
                continue
            if isinstance(answer, Exception):
                raise answer
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < 1 and int(node.info("replication").get("connected_slaves", 0)) > 0:
                # A replica exists but did not confirm: the attempt could still be lost.
                raise StoreUnavailable("no replica acknowledged the attempt in time")
            if int(acked) < 1:
                # No replica to wait for (after a failover, until one rejoins): the attempt is
                # as safe as it can be on this master alone.
                log.warning("no replica connected to wait for; checks run on the master alone")
            return answer
        raise StoreUnavailable("the script could not be loaded")

    @staticmethod
    def _run(script: TracedScript, keys: list[str], args: list[Any]) -> Any:
        return script(keys=keys, args=args)

    def _gated(
        self,
        gate: Gate | None,
        script: TracedScript,
        keys: list[str],
        args: list[Any],
        *,
        replicated: bool = False,
    ) -> Any:
        """``script``'s answer, run only once ``gate`` passed; the gate's refusal is raised by
        its ``settle``. One round trip on one server (see :mod:`otpsvc.store.gate`); on a
        cluster, or a server that refused keys across slots, the gate goes first, on its own."""
        run = self._run_replicated if replicated else self._run
        return self._chains.run(gate, script, keys, args, run)
