"""The escalation ladder: when a call is not answered, the next step calls again.

A client's ladder (``OTPSVC_LADDER``, or its ``ladder`` in the client file) is an ordered list of
steps, each a provider and the time to wait for the person before the next step. The first
call takes the first step (the rest of the ladder is its failover, should a provider refuse
the call outright). The next step is due when the current call's delivery report says it failed
(no answer, busy, failed) or when its wait passes without an approval; the scripts that approve,
deny, cancel or lock a verification take its due step away in the same atomic step.

Due steps live in Redis, one sorted set per event shard; the workers (``otpsvc worker``, and
``otpsvc dev``) run them. A worker claims a due step for a lease (``ladder_claim.lua``; as long
as a start can take with the provider timeouts): one that dies with it leaves it due again when
the lease ends. Each step is a resend of the same
verification through the start path, so the send cap, the cooldown, every velocity limit and
the call budget apply; the reservation marks the step taken, so no step is placed twice. A
worker killed before the step's call went to the provider leaves it to be taken again; one
killed while the call was with the provider may lose that call (it may have rung: it is never
placed again), and the ladder goes on with the next step after that one's wait. A refusal ends the
ladder with ``verification.escalation_stopped`` naming the limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from otpsvc import metrics
from otpsvc.config.model import ladder_of
from otpsvc.core.draft import Escalation, StartAsk, StepNotTaken
from otpsvc.core.models import mode_of
from otpsvc.core.start import Starting
from otpsvc.errors import OtpError, ProvidersBusy
from otpsvc.phones import InvalidPhone, parse_phone
from otpsvc.store.connection import STORE_ERRORS

log = logging.getLogger("otpsvc.core")

#: How long a worker holds a step it claimed, unless the service sets its own
#: (:func:`lease_ms_for`): longer than a start can take.
LEASE_MS = 90_000


def lease_ms_for(connect_timeout: float, read_timeout: float, providers: int) -> int:
    """A lease longer than any start can take: every provider of a route, each up to its
    timeouts, and a margin."""
    return int(((connect_timeout + read_timeout) * max(1, providers) + 5) * 1000)


class Escalating(Starting):
    """Place the due steps of escalation ladders."""

    #: How long a claimed step is held (the app sets it from the provider timeouts).
    ladder_lease_ms = LEASE_MS

    def escalate(self, verification_id: str) -> str:
        """Place the verification's due step: ``placed``, ``stopped`` (a limit or an error ended
        the ladder), ``skipped`` (it ended, or another worker took the step), ``none`` (nothing
        was due), or ``later`` (no provider slot free here: the step is due again in a
        second)."""
        now_ms = self._now_ms()
        claim = self.store.claim_step(verification_id, now_ms=now_ms, lease_ms=self.ladder_lease_ms)
        if claim is None:
            return "none"
        steps = ladder_of(claim.ladder)
        step = claim.current + 1
        if step >= len(steps):
            self.store.stop_ladder(verification_id, now_ms=now_ms, why="no_step_left")
            return "stopped"
        e164 = self.keyring.open_phone(verification_id, claim.sealed)
        try:
            phone = parse_phone(e164 or "")
        except InvalidPhone:
            # Sealed under a secret that is no longer configured, or not this verification's.
            self.store.stop_ladder(verification_id, now_ms=now_ms, why="number_unreadable")
            return "stopped"
        metrics.LADDER_STEPS.labels(claim.why).inc()
        person = self.keyring.open_person(verification_id, claim.person)
        try:
            # The step counts against the person the verification was started for (their
            # address and account limits), as the first call did: never against a shared
            # "unknown" that one person could fill for everyone.
            escalation = Escalation(
                verification_id, step, steps, claim.owner or claim.client, claim.phone_key, person
            )
            self.start(
                StartAsk(
                    client=claim.client,
                    phone=phone,
                    locale=claim.locale,
                    brand=claim.brand or None,
                    mode=mode_of(claim.mode),
                    escalation=escalation,
                )
            )
        except StepNotTaken as exc:
            log.info("escalation step %d of %s not placed: %s", step + 1, verification_id, exc)
            if str(exc) == "taken":
                # A worker took this step and died before recording its call (which may or may
                # not have rung): never placed twice; the ladder goes on after its wait.
                self.store.skip_step(verification_id, step=step, now_ms=self._now_ms())
            return "skipped"
        except ProvidersBusy:
            # Every provider slot of this process is busy: due again in a second.
            self.store.delay_step(verification_id, until_ms=self._now_ms() + 1000)
            return "later"
        except OtpError as exc:
            why = getattr(exc, "limit", None) or exc.code
            self.store.stop_ladder(verification_id, now_ms=self._now_ms(), why=why)
            metrics.LADDER_STOPS.labels(why).inc()
            return "stopped"
        return "placed"


class LadderRunner:
    """Runs the due escalation steps, in a pool of its own threads (a step waits on a provider
    like a start does): what ``otpsvc worker`` and ``otpsvc dev`` do between their other work.

    Due steps wait here in one queue per API client and are handed to the threads in turn,
    client by client, never more than there are threads: one tenant's backlog of due steps
    delays another tenant's step by one step's time at most, not by the whole backlog."""

    def __init__(self, service: Escalating, threads: int = 8) -> None:
        """``threads``: steps placed at once (best the process's provider slots,
        ``OTPSVC_PROVIDER_CONCURRENCY``)."""
        self.service = service
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ladder")
        self._in_flight: set[str] = set()
        #: Per client, its due steps not yet handed to a thread, oldest first; and the clients
        #: in the order their turn comes.
        self._waiting: dict[str, deque[str]] = {}
        self._turns: deque[str] = deque()
        self._lock = threading.Lock()

    def run_due(self) -> int:
        """Take in every due step not already here, and hand steps to the free threads, client
        by client; how many steps were taken in."""
        due = self.service.store.due_steps(self.service._now_ms())
        with self._lock:
            here = self._in_flight.union(*self._waiting.values())
            new = [verification_id for verification_id in due if verification_id not in here]
        clients = self.service.store.clients_of(new) if new else {}
        with self._lock:
            for verification_id in new:
                client = clients.get(verification_id, "")
                if client not in self._waiting:
                    self._waiting[client] = deque()
                    self._turns.append(client)
                self._waiting[client].append(verification_id)
            self._hand_out()
        return len(new)

    def _hand_out(self) -> None:
        """Fill the free threads, one step of each waiting client in turn (under the lock)."""
        while len(self._in_flight) < self.threads and self._turns:
            client = self._turns.popleft()
            waiting = self._waiting[client]
            verification_id = waiting.popleft()
            if waiting:
                self._turns.append(client)
            else:
                del self._waiting[client]
            self._in_flight.add(verification_id)
            self._pool.submit(self._run, verification_id)

    def _run(self, verification_id: str) -> None:
        try:
            self.service.escalate(verification_id)
        except STORE_ERRORS as exc:
            # Still due (its lease runs out): the next round, here or elsewhere, tries again.
            log.warning(
                "escalation of %s: redis unavailable: %s", verification_id, type(exc).__name__
            )
        except Exception:
            log.exception("escalation of %s failed", verification_id)
        finally:
            with self._lock:
                self._in_flight.discard(verification_id)
                self._hand_out()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until the steps taken in are done (tests; a stopping worker)."""
        deadline = time.monotonic() + timeout
        while (self._in_flight or self._waiting) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
