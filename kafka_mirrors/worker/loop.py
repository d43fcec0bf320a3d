"""The replication worker (`kafka-mirrors run --link NAME`): its control plane.

    state store ──follow──► control loop (this thread) ──Command──► copy plane (tasks.py,
         ▲                     │  acks, heartbeats,     ◄──Event───   own thread: every
         └── writes ───────────┘  progress, FAILED                    copy client)
                               ▲
                               └── notes ── jobs (jobs.py, own thread: source metadata,
                                            config and ACL sync, offset sync, auto-create)

The control loop follows the state store and tells the copy plane which mirrors to copy
and stop; it never waits on the copy nor on the jobs, so a stop is acknowledged as soon
as the copy plane reports that mirror's writes settled (each confirmed or failed), within
about a second whatever else is being copied. Only this thread writes mirror states,
acknowledgements, heartbeats and progress (at most every PROGRESS_S, only mirrors whose
progress changed, one record per mirror).

The source may vanish at any moment (that is what failover is for). Once it looks
unreachable (a fetch error, a failed call) copying waits while a non-blocking probe
watches for its return; the state store keeps being followed all the while, and the
freshest source high watermark seen is written as progress at once (failover's RPO).

Any number of workers may run for one link, on any hosts: membership.py (a fourth
thread) shares the link's slots of mirror partitions among them through a consumer group
on the destination; the copy plane copies only the partitions of this worker's slots.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid

from kafka_mirrors import state as st
from kafka_mirrors.errors import ConflictError, KafkaMirrorsError, NotFoundError
from kafka_mirrors.kafka.admin import Admin
from kafka_mirrors.offsetsync import SyncFence
from kafka_mirrors.worker.autocreate import AutoCreator
from kafka_mirrors.worker.jobs import Jobs
from kafka_mirrors.worker.membership import Membership, ensure_slots_topic
from kafka_mirrors.worker.source_watch import SourceWatch
from kafka_mirrors.worker.tasks import Command, CopyPlane

log = logging.getLogger("kafka_mirrors.worker")

HEARTBEAT_S = 2.0
PROGRESS_S = 5.0
FOLLOW_WAIT_S = 0.1
RETRY_WRITE_S = 2.0  # a failed write of acknowledgements or FAILED is tried again after this
# Source calls made by the worker wait at most this long: a failover waits a few seconds
# for acknowledgements, and the source may be the cluster that is gone.
SOURCE_CALL_S = 2.0
# The copy plane writes only while its view of the state store is fresh: every record of
# the state topic written before some moment less than STATE_FRESH_S ago has been applied
# (a stop it holds reached the copy plane before any later write). The end of the state
# topic is asked every STATE_END_ASK_S, without waiting on the answer. STATE_FRESH_S is
# below failover's wait for acknowledgements (dr.FAILOVER_ACK_WAIT_S): a worker that was
# stopped (SIGSTOP, a stalled VM) through a failover it could not acknowledge writes
# nothing after it resumes, since the failover's record is older than any view it may
# write on by the time the failover reads its failover point.
STATE_FRESH_S = 3.0
STATE_END_ASK_S = 0.5


class Worker:
    def __init__(self, link, *, worker_id: str | None = None, delivery_timeout_ms: int = 30000,
                 metrics: tuple[str, int] | None = None, instance_id: str | None = None):
        self.link = link
        self.metrics = metrics  # (host, port) of the Prometheus endpoint (kafka_mirrors.metrics), or None
        self.last_heartbeat_at: float | None = None  # when a heartbeat was last written (for metrics)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.instance_id = instance_id
        timeout = float(link.option("request.timeout.s"))
        self.timeout = timeout
        self.src_conf = link.source.client_config()
        self.dst_conf = link.destination.client_config()
        # short timeouts on the source: see SOURCE_CALL_S
        self.source_timeout = min(timeout, SOURCE_CALL_S)
        self.src_admin = Admin(self.src_conf, f"source cluster {link.source.bootstrap}", self.source_timeout)
        self.dst_admin = Admin(self.dst_conf, f"destination cluster {link.destination.bootstrap}", timeout)
        self.store = st.StateStore(self.dst_conf, link.name, timeout)
        self.known: dict[str, st.MirrorRecord] = {}  # latest record of every mirror of the link
        self.running: set[str] = set()  # mirrors the copy plane was told to copy and has not let go
        self.errors: dict[str, str] = {}  # mirror -> the error it is backing off from
        self.notes: queue.SimpleQueue = queue.SimpleQueue()  # from the jobs thread
        self.source = SourceWatch(self.src_admin, max(self.source_timeout, 1.0))
        self.membership = Membership(self.dst_conf, link.name, self.worker_id,
                                     session_timeout_ms=int(link.option("worker.session.timeout.ms")),
                                     delivery_timeout_ms=delivery_timeout_ms, instance_id=instance_id)
        self.plane = CopyPlane(link, self.src_conf, self.dst_conf, self.src_admin, self.dst_admin,
                               self.source_timeout, timeout, self.worker_id, delivery_timeout_ms,
                               ownership=self.membership)
        self.plane.state_fresh_s = STATE_FRESH_S
        self.membership.plane = self.plane
        # the state topic's end, asked by a thread of its own (started in _run), and its
        # answers (asked at, end offset) the follower has not caught up with yet
        self.state_ends: st.StateTopicEnds | None = None
        self._state_ends: list[tuple[float, int]] = []
        self.auto_create = AutoCreator(link, self._create_mirror) \
            if link.option("auto.create.mirror.topics.enable") else None
        self.jobs = Jobs(self)
        self.state_error: str | None = None  # why the state store cannot be followed now
        self.seen_offset: int | None = None  # state records below this offset are applied
        self._acks: list[str] = []
        self._acks_retry_at = 0.0  # after a failed write of acknowledgements
        # a stopped mirror's group offsets are not written after its acknowledgement
        self.offset_fence = SyncFence()
        # mirror -> (partition, offset, message) of a failure not yet recorded in the store
        self._failing: dict[str, tuple[int | None, int | None, str]] = {}
        # FAILED written, not yet seen by the follower: an ACTIVE record before it (an ACL
        # re-check, a config change) must not start the copy again
        self._failed: set[str] = set()
        self._fails_retry_at = 0.0
        self._written: dict[str, dict] = {}  # mirror -> the progress last written
        self._view_serial = -1

    # ------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> int:
        from kafka_mirrors.metrics import MetricsServer
        # first: a port that cannot be bound fails the start before anything else runs
        metrics = MetricsServer(self, *self.metrics).start() if self.metrics else None
        try:
            return self._run(stop)
        finally:
            if metrics is not None:
                metrics.close()

    def leads(self) -> bool:
        """Whether this worker does the link's single-writer jobs (config, ACL and offset
        sync, auto-create): the owner of slot 0, while its lease holds."""
        return 0 in self.membership.owned and self.membership.lease_ok(time.monotonic())

    def _run(self, stop: threading.Event) -> int:
        self.store.ensure_topic()
        ensure_slots_topic(self.dst_admin)
        snap = self.store.snapshot()
        follower = self.store.follow(snap.end_offset, snap.mirror_offsets)
        self.state_ends = st.StateTopicEnds(self.store, STATE_END_ASK_S).start()
        self.seen_offset = snap.end_offset  # every state record below it has been applied
        _quiet_gc()
        self.membership.start()
        self.plane.start()
        self.jobs.start()
        log.info("[%s] worker %s started; %d mirror(s) on the link", self.link.name, self.worker_id,
                 len(snap.mirrors))
        for rec in snap.mirrors.values():
            self._reconcile(rec)
        code = 0
        next_beat = next_progress = 0.0
        try:
            while not stop.is_set():
                self._follow_state(follower, FOLLOW_WAIT_S)
                self._state_freshness()
                self._events()
                self._record_failures()
                self._watch_source()
                now = time.monotonic()
                if now >= next_progress or self.plane.view_serial != self._view_serial and not self.source.ok:
                    self._write_progress()
                    next_progress = now + PROGRESS_S
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + HEARTBEAT_S
                if self.membership.fatal or not self.membership.alive():
                    log.error("[%s] the worker left its group (%s); the worker stops: run it again%s",
                              self.link.name, self.membership.fatal or "membership thread ended",
                              " with another --instance-id" if self.instance_id else "")
                    code = 1
                    break
                if not self.plane.alive():
                    log.error("[%s] the copy thread ended (%s); the worker stops: run it again", self.link.name,
                              self.plane.crashed)
                    code = 1
                    break
        finally:
            self.jobs.close()
            self.plane.inbox.put(Command("shutdown"))
            self.plane.join(30)
            self.membership.close()
            self._events()
            self._write_progress()
            self._heartbeat(final=True)
            follower.close()
            self.state_ends.close()
            self.store.close()
            log.info("[%s] worker %s stopped", self.link.name, self.worker_id)
        return code

    def _follow_state(self, follower: st.StateFollower, timeout: float) -> None:
        before = follower.error
        for key, value in follower.poll(timeout):
            if key.startswith("mirror/") and value is not None:
                self._reconcile(st.MirrorRecord.from_json(value))
        self.state_error = follower.error
        if follower.position is not None:
            self.seen_offset = follower.position
        if follower.error != before:
            if follower.error is not None:
                # it cannot see a pause, promote or failover now: said in the heartbeat
                # (describe shows it, failover does not count on this worker)
                log.error("[%s] cannot follow the state store: %s; stops are not seen until it reads "
                          "again", self.link.name, follower.error)
                self._heartbeat()
            else:
                log.info("[%s] reads the state store again", self.link.name)

    def _state_freshness(self) -> None:
        """Tell the copy plane how fresh its view of the state store is (STATE_FRESH_S):
        once every record below an end offset of the state topic is applied, the copy
        plane gets a "fresh" command stamped with the time that end was asked, after the
        commands those records gave (its inbox is in order)."""
        while True:
            try:
                self._state_ends.append(self.state_ends.answers.get_nowait())
            except queue.Empty:
                break
        del self._state_ends[:-64]  # a follower that cannot read keeps only the latest
        if self._state_ends and self.seen_offset is not None:
            caught_up = [at for at, end in self._state_ends if end <= self.seen_offset]
            if caught_up:
                at = max(caught_up)
                if time.monotonic() - at > STATE_FRESH_S / 2:
                    log.debug("[%s] the state store view sent as fresh is %.1f s old", self.link.name,
                              time.monotonic() - at)
                self.plane.inbox.put(Command("fresh", at=at))
                self._state_ends = [(at, end) for at, end in self._state_ends if end > self.seen_offset]

    # ------------------------------------------------------------ mirrors

    def _reconcile(self, rec: st.MirrorRecord) -> None:
        self.known[rec.topic] = rec
        # before any acknowledgement of a stop: no offset sync write for it starts after this
        self.offset_fence.set_open(rec.topic, rec.state in (st.ACTIVE, st.PAUSED))
        running = rec.topic in self.running
        if rec.state == st.ACTIVE and (rec.topic in self._failing or rec.topic in self._failed):
            return  # its copy failed: FAILED goes (or went) over this record
        self._failed.discard(rec.topic)  # the FAILED (or a later state) has been seen
        if rec.state == st.ACTIVE and not running:
            self.running.add(rec.topic)
            self.plane.inbox.put(Command("start", rec.topic, record=rec))
        elif rec.state != st.ACTIVE and running:
            # acknowledged when the copy plane reports its writes settled (_events)
            self.plane.inbox.put(Command("stop", rec.topic, why=f"state is now {rec.state}", ack=True))
        elif rec.state == st.PENDING_STOPPED:
            # not copying it (never started, or stopped already): it will not start it again.
            # Written at the end of the turn (_events), once seen_offset covers this record
            self._acks.append(rec.topic)
        elif running:
            self.plane.inbox.put(Command("update", rec.topic, record=rec))

    def _events(self) -> None:
        while True:
            try:
                ev = self.plane.outbox.get_nowait()
            except queue.Empty:
                break
            if ev.kind == "stopped":
                self.running.discard(ev.topic)
                self.errors.pop(ev.topic, None)
                if ev.ack:
                    self._acks.append(ev.topic)
                rec = self.known.get(ev.topic)
                if rec is not None and rec.state == st.ACTIVE:
                    self._reconcile(rec)  # made ACTIVE again while it was stopping
            elif ev.kind == "failed":
                self.running.discard(ev.topic)
                self._fail(ev.topic, ev.partition, ev.offset, ev.error)
            elif ev.kind == "backoff":
                self.errors[ev.topic] = ev.error
            elif ev.kind == "started":
                self.errors.pop(ev.topic, None)
        self._flush_acks()
        while True:
            try:
                kind, why = self.notes.get_nowait()
            except queue.Empty:
                break
            if kind == "suspect":
                self._suspect_source(why)

    def _flush_acks(self) -> None:
        if not self._acks or time.monotonic() < self._acks_retry_at:
            return
        # a mirror made ACTIVE again meanwhile (and copying) is not acknowledged as stopped;
        # one whose group offsets the offset sync is writing now waits for a later turn
        # (SyncFence: no write of them lands after the acknowledgement)
        pending = sorted(set(self._acks) - self.running)
        writing = self.offset_fence.writing()
        topics = [t for t in pending if t not in writing]
        self._acks = [t for t in pending if t in writing]
        if not topics:
            return
        # the stopped mirrors' last progress first: failover reads the last known source
        # offsets from it as soon as it sees the acknowledgement
        self._write_progress()
        try:
            self.store.ack_many(topics, self.worker_id, "stopped", seen_offset=self.seen_offset)
        except KafkaMirrorsError as exc:
            # kept and written again: a failover waits for it (and names this worker if
            # the store stays unwritable past its bound)
            self._acks = topics + self._acks
            self._acks_retry_at = time.monotonic() + RETRY_WRITE_S
            log.warning("[%s] stop of %s not acknowledged yet (again in %.0f s): %s", self.link.name,
                        ", ".join(topics), RETRY_WRITE_S, exc)

    def _fail(self, topic: str, partition: int | None, offset: int | None, msg: str) -> None:
        """The copy of `topic` has stopped on a failure: record FAILED, but only over the
        ACTIVE record this worker copied from (a pause or failover that landed meanwhile
        wins: the mirror is not copied either way). Until the store has it, the failure is
        kept, shown in the heartbeat, and written again."""
        self._failing[topic] = (partition, offset, msg)
        self.errors[topic] = f"FAILED, not recorded yet: {msg}"
        self._fails_retry_at = 0.0
        self._record_failures()

    def _record_failures(self) -> None:
        if not self._failing or time.monotonic() < self._fails_retry_at:
            return
        for topic, (partition, offset, msg) in list(self._failing.items()):
            rec = self.known.get(topic)
            if rec is None or rec.state != st.ACTIVE:
                log.warning("[%s/%s] copy failed (%s), but the mirror is %s now: not marked FAILED",
                            self.link.name, topic, msg, rec.state if rec else "gone")
                del self._failing[topic]
                self.errors.pop(topic, None)
                continue
            try:
                self.store.set_state(topic, st.FAILED, reason=msg, current=rec,
                                     failed={"partition": partition, "offset": offset, "message": msg})
            except (ConflictError, NotFoundError) as exc:
                log.warning("[%s/%s] copy failed (%s), not marked FAILED: %s", self.link.name, topic, msg, exc)
            except KafkaMirrorsError as exc:
                self._fails_retry_at = time.monotonic() + RETRY_WRITE_S
                log.error("[%s/%s] FAILED not recorded yet (again in %.0f s): %s", self.link.name, topic,
                          RETRY_WRITE_S, exc)
                continue
            else:
                self._failed.add(topic)
            del self._failing[topic]
            self.errors.pop(topic, None)

    def _create_mirror(self, topic: str) -> None:
        from kafka_mirrors.mirrors import create_mirrors
        for rec in create_mirrors(self.link, [topic], timeout=max(self.source_timeout, 5.0)):
            self.known.setdefault(rec.topic, rec)  # the follower brings it back and it starts

    # ------------------------------------------------------------ the source

    def _watch_source(self) -> None:
        if self.plane.source_error is not None:
            why, self.plane.source_error = self.plane.source_error, None
            self._suspect_source(why)
        change = self.source.tick(time.monotonic())
        if change == "down":
            log.warning("[%s] source cluster %s is unreachable (%s); copying waits for it, stops are still "
                        "acknowledged", self.link.name, self.link.source.bootstrap, self.source.why)
        elif change == "up":
            log.info("[%s] source cluster %s answers again; copying resumes", self.link.name,
                     self.link.source.bootstrap)
        if self.source.ok:
            self.plane.source_ok.set()

    def _suspect_source(self, why: str) -> None:
        if self.source.suspect(why):
            # copying waits; the copy plane publishes its freshest high watermarks, written
            # at once as progress: the source may be gone for good
            self.plane.source_ok.clear()
            self.plane.publish_now.set()

    # ------------------------------------------------------------ reporting

    def _write_progress(self) -> None:
        serial, view = self.plane.view_serial, self.plane.view
        self._view_serial = serial
        now = time.time()
        changed = {}
        for topic, parts in view.items():
            if self._written.get(topic) != parts:
                changed[topic] = parts
        if not changed:
            return
        try:
            self.store.put_progress_many({(t, p): {**v, "updated_at": now}
                                          for t, parts in changed.items() for p, v in parts.items()})
            self._written.update(changed)
        except KafkaMirrorsError as exc:
            log.warning("[%s] progress not written: %s", self.link.name, exc)

    def _serving(self) -> dict[str, str]:
        """The partitions this worker answers for, as ranges per mirror: those of its slots
        in the mirrors it copies and in ACTIVE mirrors waiting to start. It acknowledges
        every stop of the link either way, so failover waits for it (dr.py)."""
        out = {}
        status = self.plane.status()
        owned = self.membership.owned
        for t in sorted(self.running | {t for t, r in self.known.items() if r.state == st.ACTIVE}):
            rec = self.known.get(t)
            parts = set(status.get(t, {}).get("partitions") or ()) | {
                p for p in range(rec.partitions if rec else 0) if st.slot_of(t, p) in owned}
            if parts:
                out[t] = st.format_partition_ranges(parts)
        return out

    def _state_view_age(self) -> float | None:
        """Seconds since the copy plane's view of the state store was last proved fresh
        (None: never yet)."""
        at = self.plane.state_fresh_at
        return None if at == -math.inf else round(max(0.0, time.monotonic() - at), 1)

    def _not_writing(self) -> str | None:
        """Why this worker writes nothing now, or None: its view of the state store is not
        fresh (it waits to have applied what the store says, a failover included), or its
        group lease does not hold."""
        age = self._state_view_age()
        if age is None:
            return "its view of the state store is not fresh yet (starting)"
        if age >= STATE_FRESH_S:
            return (f"its view of the state store is {age:.0f} s old (the state topic's end not read, or "
                    f"not caught up with)")
        if not self.membership.lease_ok(time.monotonic()):
            return f"its group lease does not hold ({self.membership.error or 'no accepted commit yet'})"
        return None

    def _heartbeat(self, final: bool = False) -> None:
        try:
            if final:
                self.store.remove_worker(self.worker_id)
            else:
                self.store.heartbeat(self.worker_id, {
                    "worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                    "heartbeat_at": time.time(),
                    "serving": self._serving(),
                    "mirror_errors": dict(self.errors),
                    "source_reachable": self.source.ok,
                    "source_unreachable_since": self.source.down_since,
                    "consumer_offset_sync": self.jobs.offset_sync,
                    "state_store_error": self.state_error,
                    # seconds since its view of the state store was last proved fresh, and
                    # why it writes nothing now (describe shows it)
                    "state_view_age_s": self._state_view_age(),
                    "not_writing": self._not_writing(),
                    # the slots it owns (describe's OWNER), those in their grace, its group lease
                    "slots": sorted(self.membership.owned) if self.membership.lease_ok(time.monotonic()) else [],
                    "slots_waiting": sorted(self.membership.claimable_at),
                    "instance_id": self.instance_id,
                    "group_lease_error": None if self.membership.lease_ok(time.monotonic())
                    else (self.membership.error or "no accepted commit yet"),
                })
                self.last_heartbeat_at = time.time()
        except KafkaMirrorsError as exc:
            log.warning("[%s] heartbeat not written: %s", self.link.name, exc)


def _quiet_gc() -> None:
    """The copy makes and drops a Message object per record fetched (and one per run's
    delivery report): with Python's default thresholds (700 allocations) the cyclic
    collector runs thousands of times a second and walks the worker's long-lived
    bookkeeping (10,000 partitions' tasks) again and again. It took 7% of the copy thread
    when every record had a delivery report (py-spy, bench/copy_rate.py), about 3% of the
    copy path's instructions after (bench/copy_instructions.py). Those objects are freed
    by reference counting, never by the collector: what exists at start-up is frozen out
    of its sight, and it runs after 50,000 allocations instead of 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)

