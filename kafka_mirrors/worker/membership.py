"""Several workers per link: the link's mirror partitions are shared out through Kafka's
own consumer group protocol, on the DESTINATION cluster (it stays up when the source is
lost, which is when failover needs every worker to answer).

Every mirror partition belongs to one of state.SLOTS slots (state.slot_of). The slots are
the partitions of one internal topic, SLOTS_TOPIC, and the workers of link L are the
members of the classic consumer group `kafka-mirrors-workers.<L>` subscribed to it, with
the cooperative-sticky assignor: a join or a leave moves only the slots it must, and a
worker copies on with the slots it keeps while the group rebalances. The topic holds no
records: the group's committed offsets carry each slot's owner as metadata.

The rules that keep two workers from writing one partition:

- A lease. A worker commits its slots' offsets every COMMIT_S; the broker accepts a
  commit only from a member of the current generation. The worker writes only while its
  last accepted commit began less than `lease_s` ago (a quarter of the session timeout,
  at least 2 s), so a worker paused, cut off or expelled stops writing on its own,
  before the coordinator (after the session timeout) can give its slots to another.
- A release. A slot revoked in a rebalance is handed back only after the copy plane let
  go of it: its copiers stopped and every write of them confirmed or failed. The commit
  of a released slot says so (`released: true`).
- A grace. A worker given a slot whose last owner did not release it (killed, paused,
  cut off) waits `grace_s` (the lease, the delivery timeout of writes, a margin) before
  it writes, unless that owner was a process of this host that is gone. Only then are
  its last writes surely landed or failed.
- The fence and the offset check stay: a new owner's transactional producer of the slot
  fences the old one, and each copier starts from the destination's log end offset and
  proves every write's offset.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kafka_mirrors import state as st
from kafka_mirrors.errors import ConflictError, KafkaMirrorsError, NotFoundError
from kafka_mirrors.kafka import topics as kt
from kafka_mirrors.kafka.admin import Admin

log = logging.getLogger("kafka_mirrors.worker")

SLOTS_TOPIC = "__kafka_mirrors_slots"
COMMIT_S = 1.0
POLL_S = 0.2
GRACE_MARGIN_S = 2.0


def group_id(link: str) -> str:
    # under the group prefix `kafka-mirrors-` the README's ACLs grant already
    return f"kafka-mirrors-workers.{link}"


def lease_seconds(session_timeout_ms: int) -> float:
    return max(2.0, session_timeout_ms / 4000.0)


def grace_seconds(session_timeout_ms: int, delivery_timeout_ms: int) -> float:
    return lease_seconds(session_timeout_ms) + delivery_timeout_ms / 1000.0 + GRACE_MARGIN_S


def ensure_slots_topic(admin: Admin) -> None:
    """SLOTS_TOPIC with state.SLOTS partitions (shared by every link of the cluster: each
    link's group assigns it on its own)."""
    hint = (f"the link's principal needs Create, Read and Describe on topic {SLOTS_TOPIC} and Read on "
            f"group prefix kafka-mirrors- on the destination (README: ACLs)")
    try:
        try:
            info = kt.describe_topic(admin, SLOTS_TOPIC)
        except NotFoundError:
            try:
                kt.create_topic(admin, SLOTS_TOPIC, st.SLOTS, -1, {"retention.ms": "3600000"})
                return
            except ConflictError:
                info = kt.describe_topic(admin, SLOTS_TOPIC)  # another worker made it a moment ago
    except KafkaMirrorsError as exc:
        raise KafkaMirrorsError(f"the worker group's topic {SLOTS_TOPIC} on {admin.label}: {exc.message}",
                                hint) from None
    if info.partitions != st.SLOTS:
        raise KafkaMirrorsError(
            f"topic {SLOTS_TOPIC} on {admin.label} has {info.partitions} partitions, not {st.SLOTS}: "
            f"delete it (kafka-topics --delete --topic {SLOTS_TOPIC}) and start the workers again")


def previous_owner_gone(meta: dict, now_host: str) -> bool:
    """Whether the owner named in a slot's commit metadata is surely not writing: it
    released the slot, or it was a process of this host that no longer exists."""
    if meta.get("released"):
        return True
    if meta.get("host") != now_host or not isinstance(meta.get("pid"), int):
        return False
    if meta["pid"] == os.getpid():
        return False  # this process: its own writes are waited for by the copy plane
    try:
        os.kill(meta["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Membership:
    """The worker's membership of its link's group, in a thread of its own. The copy plane
    reads `owned` (the slots it copies) and `lease_ok(now)` (whether it may write now)."""

    def __init__(self, conf: dict, link: str, worker_id: str, *, session_timeout_ms: int,
                 delivery_timeout_ms: int, instance_id: str | None = None, plane=None):
        self.link = link
        self.worker_id = worker_id
        self.instance_id = instance_id
        self.session_timeout_ms = session_timeout_ms
        self.lease_s = lease_seconds(session_timeout_ms)
        self.grace_s = grace_seconds(session_timeout_ms, delivery_timeout_ms)
        self.delivery_s = delivery_timeout_ms / 1000.0
        self.release_wait_s = self.delivery_s + 5.0
        self.plane = plane  # held_slots(): the slots whose copiers or writes are not settled
        self.host = socket.gethostname()
        self.assigned: set[int] = set()           # slots the group gave us
        self.claimable_at: dict[int, float] = {}  # assigned slots in their grace: writable after
        self.owned: frozenset[int] = frozenset()  # assigned and past their grace
        self.lease_until = 0.0                    # monotonic: writes allowed before this
        self.error: str | None = None             # why the lease is not held, if it is not
        self.fatal: str | None = None             # membership ended for good (fenced instance id)
        self._new: list[int] = []                 # assigned in a callback, grace not yet read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conf = {
            **conf,
            "group.id": group_id(link),
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
            "max.poll.interval.ms": 300000,
            "client.id": f"kafka-mirrors-workers-{link}",
        }
        if instance_id:
            self._conf["group.instance.id"] = instance_id
        self.consumer: Consumer | None = None

    # ------------------------------------------------------------ for the copy plane

    def lease_ok(self, now: float) -> bool:
        """Whether this worker may write its owned slots now."""
        return now < self.lease_until

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.consumer = Consumer({**self._conf, "log_level": 3})
        self.consumer.subscribe([SLOTS_TOPIC], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self._thread = threading.Thread(target=self._run, name=f"membership-{self.link}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Leave the group: the slots are released first (the copy plane has stopped by
        now), so the others take them without a grace."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_commit = 0.0
        try:
            while not self._stop.is_set():
                msg = self.consumer.poll(POLL_S)
                if msg is not None and msg.error() is not None:
                    self._consumer_error(msg.error())
                if self.fatal:
                    break
                now = time.monotonic()
                if self._new:
                    self._read_grace(now)
                self._claim(now)
                if now >= next_commit:
                    self._commit(released=())
                    next_commit = now + COMMIT_S
        except Exception as exc:  # noqa: BLE001 - the worker reports it and stops
            self.fatal = f"{type(exc).__name__}: {exc}"
            log.error("[%s] group membership stopped: %s", self.link, self.fatal)
        finally:
            self.lease_until = 0.0
            self.owned_before_close, self.owned = self.owned, frozenset()
            try:
                owned = set(self.owned_before_close)
                if not self.fatal and owned and self._wait_released(owned, self.release_wait_s):
                    self._commit(released=tuple(sorted(owned)), only=owned)
                self.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.debug("leaving the group: %s", exc)

    def _consumer_error(self, err: KafkaError) -> None:
        if err.fatal():
            # e.g. FENCED_INSTANCE_ID: another worker runs with this --instance-id
            self.fatal = f"{err.str()} (another worker of link '{self.link}' runs with instance id " \
                         f"'{self.instance_id}'?)" if self.instance_id else err.str()
            log.error("[%s] group membership ended: %s", self.link, self.fatal)
        else:
            log.debug("[%s] worker group: %s", self.link, err.str())

    # ------------------------------------------------------------ rebalance callbacks

    def _on_assign(self, consumer, partitions) -> None:
        slots = [tp.partition for tp in partitions]
        if not slots:
            return
        self.assigned |= set(slots)
        self._new.extend(slots)
        log.info("[%s] worker group gave this worker slot(s) %s", self.link, _ranges(slots))

    def _on_revoke(self, consumer, partitions) -> None:
        slots = {tp.partition for tp in partitions} & self.assigned
        if not slots:
            return
        owned = slots & self.owned  # the others were still in their grace: never written
        log.info("[%s] worker group takes slot(s) %s: releasing them", self.link, _ranges(slots))
        self._drop(slots)
        if not owned:
            return  # their last owner's metadata stays as it was (unreleased: the next waits)
        if self._wait_released(owned, self.release_wait_s):
            self._commit(released=tuple(sorted(owned)), only=owned)
        else:
            log.warning("[%s] slot(s) %s not settled cleanly (writes still in flight after %.0f s, or one "
                        "failed): handed over unreleased (the next owner waits %.0f s)", self.link,
                        _ranges(owned), self.release_wait_s, self.grace_s)

    def _on_lost(self, consumer, partitions) -> None:
        slots = {tp.partition for tp in partitions} & self.assigned
        self.lease_until = 0.0  # another member may own them already
        log.warning("[%s] this worker lost its group membership (slot(s) %s): it stops writing them",
                    self.link, _ranges(slots))
        self._drop(slots)

    def _drop(self, slots: set[int]) -> None:
        self.assigned -= slots
        for k in slots:
            self.claimable_at.pop(k, None)
        self._new = [k for k in self._new if k not in slots]
        self.owned = frozenset(self.owned - slots)

    def _wait_released(self, slots: set[int], timeout: float) -> bool:
        """Until the copy plane let go of `slots` cleanly (every write confirmed); False
        when it did not within `timeout`, or a write of them failed (it may land late)."""
        if self.plane is None:
            return True
        deadline = time.monotonic() + timeout
        next_commit = time.monotonic() + COMMIT_S
        while self.plane.held_slots() & slots:
            now = time.monotonic()
            if now > deadline:
                return False
            if now >= next_commit and self.owned:
                self._commit(released=())  # the slots kept stay writable meanwhile
                next_commit = now + COMMIT_S
            time.sleep(0.05)
        return not (self.plane.unclean_slots() & slots)

    # ------------------------------------------------------------ claiming and the lease

    def _read_grace(self, now: float) -> None:
        new, self._new = self._new, []
        try:
            committed = self.consumer.committed([TopicPartition(SLOTS_TOPIC, k) for k in new], timeout=10)
        except KafkaException as exc:
            log.debug("committed(): %s", exc)
            committed = []
        # unknown (the read failed) is not "never owned": it waits the grace
        known = {tp.partition: _meta(tp.metadata) for tp in committed if tp.error is None}
        for k in new:
            if k not in self.assigned:
                continue
            meta = known.get(k, "unknown")
            if meta is None or (isinstance(meta, dict) and (
                    meta.get("worker") == self.worker_id or previous_owner_gone(meta, self.host))):
                self.claimable_at[k] = now
                continue
            grace = self.grace_s
            if isinstance(meta, dict):
                # the last owner's own lease and delivery timeout, if longer than ours
                try:
                    grace = max(grace, float(meta.get("lease_s") or 0) + float(meta.get("delivery_s") or 0)
                                + GRACE_MARGIN_S)
                except (TypeError, ValueError):
                    pass
            self.claimable_at[k] = now + grace
            who = meta.get("worker") if isinstance(meta, dict) else "unknown (its commit could not be read)"
            log.info("[%s] slot %d: its last owner %s did not release it; copying it starts in %.0f s, once "
                     "that owner's last writes are surely settled", self.link, k, who, grace)

    def _claim(self, now: float) -> None:
        """Slots past their grace are owned once a commit naming this worker as their
        owner was accepted: a later owner reads that commit, never an older release."""
        due = {k for k, at in self.claimable_at.items() if now >= at}
        if due and self._commit(released=(), only=set(self.owned) | due):
            for k in due:
                del self.claimable_at[k]
            self.owned = frozenset(self.owned | due)

    def _commit(self, released: tuple[int, ...], only: set[int] | None = None) -> bool:
        """Commit the owned slots (not those in their grace: their last owner's metadata
        stays until we own them); an accepted commit that releases nothing renews the lease."""
        slots = sorted(only if only is not None else self.owned)
        if not slots:
            return False
        started = time.monotonic()
        meta = {"worker": self.worker_id, "host": self.host, "pid": os.getpid(), "at": time.time(),
                "lease_s": self.lease_s, "delivery_s": self.delivery_s}
        offsets = [TopicPartition(SLOTS_TOPIC, k, 0, metadata=json.dumps(
            {**meta, "released": k in released}, separators=(",", ":"))) for k in slots]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            self.error = err.str() if isinstance(err, KafkaError) else str(exc)
            log.debug("[%s] slot commit refused: %s", self.link, self.error)
            return False
        if not released:
            self.lease_until = started + self.lease_s
            self.error = None
        return True


def _meta(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        v = json.loads(raw)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def _ranges(slots) -> str:
    return st.format_partition_ranges(sorted(slots)) or "-"
