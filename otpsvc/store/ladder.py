"""The escalation ladder's steps in the store: claimed by one worker, stopped, skipped,
delayed, and found by their due time."""

from __future__ import annotations

from otpsvc.store.base import StoreBase
from otpsvc.store.connection import per_node, store_guard
from otpsvc.store.due import DueIndex, due_channel
from otpsvc.store.records import LadderClaim
from otpsvc.store.shards import ladder_key, tag_of, tags


class LadderSteps(StoreBase):
    def claim_step(self, verification_id: str, *, now_ms: int, lease_ms: int) -> LadderClaim | None:
        """A due escalation step of this verification, held for ``lease_ms``; None when none is
        due (another worker holds it, or the verification ended)."""
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [verification_id, now_ms, lease_ms]
        )
        with store_guard():
            answer = self._run(self._ladder_claim, keys, args)
        if not answer:
            return None
        ladder, current, sealed, client, mode, locale, why, owner, pk, brand, person = (
            str(a) for a in answer
        )
        return LadderClaim(
            ladder, int(current), sealed, client, mode, locale, why, owner, pk, brand, person
        )

    def stop_ladder(self, verification_id: str, *, now_ms: int, why: str) -> bool:
        """End the verification's ladder, telling its client why; False when it had ended."""
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [now_ms, why]
        )
        with store_guard():
            return bool(self._run(self._ladder_stop, keys, args))

    def skip_step(self, verification_id: str, *, step: int, now_ms: int) -> bool:
        """Go past a step another worker took and never finished: not placed again; the next
        one is due after its wait. False when the ladder is over."""
        keys, args = self._with_events(
            verification_id, [self.record_key(verification_id)], [step, now_ms]
        )
        with store_guard():
            return bool(self._run(self._ladder_skip, keys, args))

    def mark_placing(self, verification_id: str, gen: int) -> None:
        """An escalation step's call is about to be placed: from here on a worker that dies
        leaves the step taken (its call may have rung), never placed again."""
        with store_guard():
            self.redis.hset(self.record_key(verification_id), "lp", gen)

    def delay_step(self, verification_id: str, *, until_ms: int) -> None:
        """Make a claimed step due again at ``until_ms`` (instead of at its lease's end)."""
        with store_guard():
            key = ladder_key(self.prefix, tag_of(verification_id))
            self.redis.zadd(key, {verification_id: until_ms}, xx=True)
            self.redis.publish(due_channel(self.prefix), f"{key} {until_ms}")

    def next_step_at(self, verification_id: str) -> float | None:
        """When the verification's next escalation step is due (epoch seconds), if one is."""
        with store_guard():
            due = self.redis.zscore(
                ladder_key(self.prefix, tag_of(verification_id)), verification_id
            )
        return None if due is None else float(due) / 1000

    def due_steps(self, now_ms: int, limit: int = 50) -> list[str]:
        """Verifications with an escalation step due, across every shard (asking only the
        shards the due index says have one)."""
        if self._due is None:
            shards = [ladder_key(self.prefix, tag) for tag in tags()]
            self._due = DueIndex(self.redis, shards, due_channel(self.prefix))
        with store_guard():
            shards = self._due.due(now_ms)
            if not shards:
                return []
            answers = per_node(
                self.redis,
                shards,
                lambda pipe, key: pipe.zrangebyscore(key, "-inf", now_ms, 0, limit),
            )
        due: list[str] = []
        for answer in answers.values():
            if isinstance(answer, Exception):
                raise answer
            due += [str(vid) for vid in answer]
        return due
