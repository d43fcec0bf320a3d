"""The data plane: copies the worker's (mirror, partition) tasks in one thread of its own.

    control plane --Command--> inbox ─┐                      ┌─> outbox --Event--> control plane
                                      ▼                      │
                   CopyPlane.run(): commands, starts, steps, stops settling, pump

A task belongs to a mirror and a partition, never to a source partition alone: two
mirrors of one source topic are two tasks, each with its own position and its own feed
buffer (kafka.partition.SourceFeeds). The plane owns every client of the copy (the source
feeds, the sink producers) and is the only thread that touches them.

Nothing here waits long. Commands are taken between any two partition steps and between
any two partition starts; a step hands the producer a bounded batch (in records and in
bytes); a stop marks the mirror stopping at once (nothing more is fetched, planned or
sent for it) and is reported STOPPED only once the sink holds none of its writes in
flight: every write it made is confirmed or failed, so none can land after the control
plane acknowledges.

Errors are charged where they happen. PartitionFailed fails that mirror (the control
plane records FAILED); anything else (a stall, a refused write, a client error) backs
that mirror alone off and starts it again later from the destination log end offsets.
Only an unreachable source pauses every task, as a whole, until it answers again.
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import random
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException

from kafka_mirrors import state as st
from kafka_mirrors.errors import KafkaMirrorsError, NotFoundError, NotWriting
from kafka_mirrors.kafka import topics as kt
from kafka_mirrors.kafka.admin import Admin, await_result
from kafka_mirrors.kafka.partition import (
    KafkaPartitionSink,
    KafkaPartitionSource,
    OffsetReader,
    SinkProducers,
    SourceFeeds,
)
from kafka_mirrors.replication.copier import PartitionCopier, PartitionFailed
from kafka_mirrors.worker.source_watch import SOURCE_DOWN_CODES

log = logging.getLogger("kafka_mirrors.worker")
copy_log = logging.getLogger("kafka_mirrors.copy")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
# a mirror that went this long without backing off starts again from BACKOFF_MIN_S (the
# back-off never came down before: after five in a worker's life, every one was 30 s)
BACKOFF_RESET_S = 60.0
REPORT_S = 2.0          # how often the plane publishes its progress view
START_BUDGET_S = 0.05   # partition starts per turn stop after this long (commands come first)
READ_AHEAD = 64         # partitions whose slots are fenced and offsets read together before they start
# Idle partitions are looked at (a ListOffsets to the destination) at most this many times
# a second in all, so 10,000 idle partitions do not flood the brokers.
IDLE_CHECKS_PER_S = 20.0
# every task is looked at this often (idle checks fall due then); in between a turn steps
# only tasks with something to do: at 10,000 idle partitions, looking at all of them every
# turn took a third of a core
FULL_SCAN_S = 0.5
SHUTDOWN_DRAIN_S = 10.0
# how long an idle turn waits while a partition waits for its gap transaction
GAP_WAIT_POLL_S = 0.002
# After a write whose outcome is unknown (it timed out: it may still land), its partition is
# not copied again, here or by another worker, for this long past the delivery timeout
UNKNOWN_WRITE_HOLD_S = 5.0


def unknown_outcome(exc: PartitionFailed) -> bool:
    """A write that failed without proof it did not land (librdkafka's message timeout,
    a purge): not a broken invariant, but nothing may be written after it until it surely
    landed or not. Any other failed write (refused by the broker: a record too large, an
    ACL) or a misplaced one fails the mirror."""
    reason = exc.reason.lower()
    return reason.startswith("delivery failed") and ("timed out" in reason or "purge" in reason)



class SourceTopicChanged(KafkaMirrorsError):
    """The source topic was deleted or re-created: mixing two topics' data is never right."""


# ---------------------------------------------------------------- the hand-off

@dataclass(frozen=True)
class Command:
    """From the control plane. kind: start (record), update (record), stop (topic, why,
    ack), fail (topic, partition, error), partitions (topic, count: new source partitions),
    fresh (at: the control plane had applied every state record written before this
    monotonic time when it sent this; every command before it has been applied here),
    shutdown."""
    kind: str
    topic: str = ""
    record: st.MirrorRecord | None = None
    why: str = ""
    ack: bool = False
    partition: int | None = None
    error: str = ""
    offset: int | None = None
    count: int = 0
    at: float = 0.0


@dataclass(frozen=True)
class Event:
    """To the control plane. kind: stopped (topic, ack: acknowledge it), failed (topic,
    partition, offset, error: record FAILED), backoff (topic, error), source_down (error),
    started (topic)."""
    kind: str
    topic: str = ""
    ack: bool = False
    partition: int | None = None
    offset: int | None = None
    error: str = ""


@dataclass
class _Task:
    copier: PartitionCopier
    source: KafkaPartitionSource
    next_idle: float = 0.0
    slot: int = -1


@dataclass
class _Mirror:
    record: st.MirrorRecord
    compacted: bool = False
    tasks: dict[int, _Task] = field(default_factory=dict)
    # tasks of slots this worker gave up (worker/membership.py), until their writes settled
    releasing: dict[int, _Task] = field(default_factory=dict)
    to_start: list[int] = field(default_factory=list)
    source_partitions: int = 0           # of the source topic, as the last prepare saw it
    prepared: bool = False
    stopping: bool = False
    stop_why: str = ""
    stop_ack: bool = False
    stop_failed: Event | None = None     # the FAILED to record once the stop settled
    restart_at: float | None = None      # backing off until then
    backoff: float = BACKOFF_MIN_S
    backed_off_at: float = -math.inf  # monotonic: the restart after the last back-off (not NotWriting)
    error: str | None = None             # the last error that backed it off
    partitions: int = 0                  # the destination's partitions as the producer knows them
    new_partitions_at: float = 0.0       # when to look again whether the producer knows new ones
    starts_at: float = 0.0               # a partition start failed: the next start not before
    start_backoff: float = BACKOFF_MIN_S


class AllSlots:
    """The ownership of a worker alone on its link: every slot, always writable."""
    owned = frozenset(range(st.SLOTS))

    def lease_ok(self, now: float) -> bool:
        return True


class CopyPlane:
    state_fresh_s: float | None = None  # no bound unless the worker sets one (see __init__)
    state_fresh_at = -math.inf
    _waiting_cmds: tuple = ()  # commands taken from the inbox by _take_fresh, applied first by _commands
    _step_cursor: tuple[str, int] | None = None  # the (mirror, partition) stepped last
    _stale_warned = False  # a stale view was logged (once, until it is fresh again)
    _gap_waits = 0  # partitions of the last turn that wait for a gap transaction
    def __init__(self, link, src_conf: dict, dst_conf: dict, src_admin: Admin, dst_admin: Admin,
                 source_timeout: float, timeout: float, worker_id: str,
                 delivery_timeout_ms: int = 30000, ownership=None):
        self.link = link
        self.name = link.name
        self.src_conf = src_conf
        self.dst_conf = dst_conf
        self.src_admin = src_admin
        self.dst_admin = dst_admin
        self.timeout = timeout
        self.source_timeout = source_timeout
        self.worker_id = worker_id
        self.delivery_timeout_ms = delivery_timeout_ms
        # which slots this worker copies (owned) and whether it may write now (lease_ok):
        # worker/membership.py, or AllSlots
        self.ownership = ownership or AllSlots()
        # with a bound (the worker sets STATE_FRESH_S), nothing is written unless a "fresh"
        # command came less than it ago: a worker that resumes after a stop (SIGSTOP, a
        # stalled host) writes nothing before it has applied what the state store says now,
        # a failover it did not see included (worker/loop.py)
        self.state_fresh_s: float | None = None
        self.state_fresh_at = -math.inf
        self._owned: frozenset[int] = frozenset()  # the slots the tasks were last brought to
        self._held: frozenset[int] = frozenset()   # _owned and slots with writes still settling
        # slot -> until when: a write of it had an unknown outcome (it may still land). Such a
        # slot is not released (the next owner waits its grace) nor started again here before
        self._unclean: dict[int, float] = {}
        # writes in flight of mirrors that ended (failed) while they settled: (topic, p) ->
        # the producer's report queue of that partition, until it is empty
        self._orphans: dict[tuple[str, int], object] = {}
        # what a turn steps besides the full look at every task each FULL_SCAN_S: tasks
        # busy after their last step (writes in flight or planned, a held record) and
        # those whose source buffer has something (SourceFeeds.ready, mapped to tasks
        # through _by_source: (id(feed), source topic, partition) -> (mirror, partition))
        self._busy: set[tuple[str, int]] = set()
        self._by_source: dict[tuple[int, str, int], tuple[str, int]] = {}
        self._next_full_scan = 0.0
        self.inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.mirrors: dict[str, _Mirror] = {}
        self.src_offsets = OffsetReader(src_admin.client, src_admin.label, source_timeout)
        self.dst_offsets = OffsetReader(dst_admin.client, dst_admin.label, timeout)
        self.feeds: SourceFeeds | None = None
        self.producers: SinkProducers | None = None
        # set by the control plane (the source watch); read here before any source call
        self.source_ok = threading.Event()
        self.source_ok.set()
        self.source_error: str | None = None  # from the feeds' error_cb, read by the control plane
        self.source_hw: dict[tuple[str, int], int] = {}  # freshest high watermark seen
        # the progress view: {topic: {partition: {...}}}, replaced whole (one assignment)
        self.view: dict[str, dict[int, dict]] = {}
        self.view_serial = 0
        self.publish_now = threading.Event()
        self._thread: threading.Thread | None = None
        self.crashed: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._open_clients()
        self._thread = threading.Thread(target=self._run, name=f"copy-{self.name}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _open_clients(self) -> None:
        self.feeds = SourceFeeds(self.src_conf, f"[{self.name}]", self._on_source_error)
        self.producers = SinkProducers(self.dst_conf, self.name, f"[{self.name}]", self.delivery_timeout_ms,
                                       compression=self.link.option("mirror.compression.type"))
        # a produce waiting for room in a full queue gives up once it may not write
        self.producers.may_write = lambda topic, p: (st.slot_of(topic, p) in self.ownership.owned
                                                      and self.may_write_now(time.monotonic()))
        self.producers.write_deadline = self.write_deadline
        self.producers.gate_open = self.gate_open

    def _on_source_error(self, err) -> None:
        if err.code() in SOURCE_DOWN_CODES:
            self.source_error = err.str()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the control plane reports it and exits
            log.error("[%s] the copy thread stopped on an unexpected error: %s: %s", self.name,
                      type(exc).__name__, exc)
            log.debug("the copy thread's error", exc_info=True)
            self.crashed = exc
        finally:
            self._close()

    def _close(self) -> None:
        try:
            if self.producers is not None:
                self.producers.close(5)
            if self.feeds is not None:
                self.feeds.close()
        except Exception as exc:  # noqa: BLE001 - closing must not hide the real error
            log.warning("[%s] closing the copy clients: %s", self.name, exc)

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        shutdown_at: float | None = None
        next_report = 0.0
        was_ok = True
        while True:
            now = time.monotonic()
            if self._commands():
                shutdown_at = now
                for m in self.mirrors.values():
                    self._begin_stop(m, "worker shutting down", ack=False)
            self._apply_ownership()
            copying = self.source_ok.is_set() and shutdown_at is None
            progressed = False
            if copying and self.may_write_now(now):
                self._restart_due(now)
                self._starts(now)
                progressed = self._steps(now)
            self.producers.poll(0)
            self._settle_stops()
            if shutdown_at is not None and (not self.mirrors or now - shutdown_at > SHUTDOWN_DRAIN_S):
                self._publish()
                if not self.mirrors:
                    self._held = frozenset()  # every write settled: membership releases all
                return
            if was_ok and not copying:
                self.publish_now.set()  # the freshest high watermarks, for failover's RPO
            was_ok = copying
            if now >= next_report or self.publish_now.is_set():
                self.publish_now.clear()
                self._publish()
                self.producers.close_idle(now)
                next_report = now + REPORT_S
            if not progressed:
                if self._gap_waits:
                    # a partition waits for its gap transaction (another thread) or for the
                    # writes before it: a delivery report wakes this, the gap thread's end
                    # is seen within GAP_WAIT_POLL_S
                    self.producers.poll(GAP_WAIT_POLL_S)
                    if copying and self.feeds.assigned:
                        self.feeds.pump(0)
                elif copying and self.feeds.assigned:
                    self.feeds.pump(0.05)
                else:
                    time.sleep(0.02)

    # ------------------------------------------------------------ slots

    def state_fresh(self, now: float) -> bool:
        if self.state_fresh_s is None or now < self.state_fresh_at + self.state_fresh_s:
            return True
        self._take_fresh()
        fresh = now < self.state_fresh_at + self.state_fresh_s
        if not fresh and not self._stale_warned and self.state_fresh_at > -math.inf:
            self._stale_warned = True
            log.warning("[%s] not writing: its view of the state store is %.1f s old (the state topic's end "
                        "not read, or not caught up with); copying goes on once it is fresh", self.name,
                        now - self.state_fresh_at)
        return fresh

    def may_write_now(self, now: float) -> bool:
        """The group lease holds and the view of the state store is fresh."""
        return self.ownership.lease_ok(now) and self.state_fresh(now)

    def gate_open(self, topic: str, p: int) -> bool:
        """may_write for other threads (the gap threads of SinkProducers): it reads only.
        The inbox is the copy thread's alone: a "fresh" command another thread took could
        put a stop behind commands that came after it."""
        return (st.slot_of(topic, p) in self.ownership.owned
                and time.monotonic() < self._deadline())

    def write_deadline(self) -> float:
        """Monotonic time until which writes may be queued (SinkProducers.write_deadline).
        Past it, "fresh" commands that came while this thread was busy in one step (a
        source call on a slow link can take seconds) are taken first, if no other command
        came before them: they vouch for no state change left to apply."""
        until = self._deadline()
        if self.state_fresh_s is not None and time.monotonic() >= until:
            self._take_fresh()
            until = self._deadline()
        return until

    def _deadline(self) -> float:
        until = getattr(self.ownership, "lease_until", math.inf)
        if self.state_fresh_s is not None:
            until = min(until, self.state_fresh_at + self.state_fresh_s)
        return until

    def _take_fresh(self) -> None:
        if self._waiting_cmds:
            return  # a command waits: so does every fresh one after it
        while True:
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                return
            if cmd.kind != "fresh":
                self._waiting_cmds = collections.deque([cmd])  # it and all after it wait for _commands
                return
            self._fresh(cmd.at)

    def _fresh(self, at: float) -> None:
        if self._stale_warned and time.monotonic() < at + (self.state_fresh_s or math.inf):
            self._stale_warned = False
            log.info("[%s] its view of the state store is fresh again: copying goes on", self.name)
        self.state_fresh_at = max(self.state_fresh_at, at)

    def held_slots(self) -> frozenset[int]:
        """The slots this worker copies or still has writes of in flight (membership hands
        a slot over once it left this set)."""
        return self._held

    def unclean_slots(self) -> frozenset[int]:
        return frozenset(self._unclean)

    def _hold_unknown(self, topic: str, p: int) -> None:
        until = time.monotonic() + self.delivery_timeout_ms / 1000 + UNKNOWN_WRITE_HOLD_S
        k = st.slot_of(topic, p)
        self._unclean[k] = max(self._unclean.get(k, 0.0), until)

    def _writable(self, task: _Task) -> bool:
        """Checked before every step and start: the lease may end, or the slot go, in the
        middle of a turn."""
        return task.slot in self.ownership.owned and self.may_write_now(time.monotonic())

    def _apply_ownership(self) -> None:
        owned = self.ownership.owned
        if owned != self._owned:
            removed, added = self._owned - owned, owned - self._owned
            self._owned = owned
            if removed:
                self._forget_read_ahead()
            for topic, m in self.mirrors.items():
                if removed:
                    self._release(m, removed)
                if added and m.prepared and not m.stopping and m.restart_at is None:
                    self._add_partitions(m, range(m.source_partitions))
            if removed:
                log.info("[%s] slot(s) %s released: their copiers stop", self.name,
                         st.format_partition_ranges(sorted(removed)))
            if added:
                log.info("[%s] slot(s) %s taken: their partitions start", self.name,
                         st.format_partition_ranges(sorted(added)))
        held = set(owned)
        if self._unclean:
            now = time.monotonic()
            over = {k for k, until in self._unclean.items() if now >= until}
            for k in over:
                del self._unclean[k]
            held.update(self._unclean)
            if over & owned:  # held back until now: their partitions start
                for m in self.mirrors.values():
                    if m.prepared and not m.stopping and m.restart_at is None:
                        self._add_partitions(m, [p for p in range(m.source_partitions)
                                                 if st.slot_of(m.record.topic, p) in over])
        for m in self.mirrors.values():
            if m.releasing:
                self._settle_releases(m)
                held.update(st.slot_of(m.record.topic, p) for p in m.releasing)
        if self._orphans:
            self.producers.poll(0)
            for key, reports in list(self._orphans.items()):
                if reports:
                    held.add(st.slot_of(*key))
                else:
                    del self._orphans[key]
        if held != self._held:
            # a slot gone and settled: its transactional producer goes too (fenced by the
            # next owner anyway; made and fenced again if the slot comes back)
            dropped = [k for k in self.producers.transactional if k not in held]
            for k in dropped:
                self.producers.drop_slot(k)
            if dropped:
                self._forget_read_ahead()  # read before a fence that is gone with its producer
            self._held = frozenset(held)

    def _mine(self, topic: str, p: int) -> bool:
        k = st.slot_of(topic, p)
        return k in self._owned and k not in self._unclean

    def _add_partitions(self, m: _Mirror, partitions) -> list[int]:
        topic = m.record.topic
        new = [p for p in partitions if self._mine(topic, p) and p not in m.tasks and p not in m.releasing
               and p not in m.to_start]
        m.to_start.extend(new)
        return new

    def _release(self, m: _Mirror, slots: frozenset[int]) -> None:
        topic = m.record.topic
        m.to_start = [p for p in m.to_start if st.slot_of(topic, p) not in slots]
        gone = [p for p in m.tasks if st.slot_of(topic, p) in slots]
        if not gone:
            return
        for p in gone:
            task = m.tasks.pop(p)
            hw = self.feeds.high_watermark(m.record.source_topic, p)
            if hw is not None:
                self.source_hw[(topic, p)] = hw
            task.source.release()
            m.releasing[p] = task

    def _settle_releases(self, m: _Mirror) -> None:
        """Take the reports of released tasks; a task whose writes all settled goes (and
        starts again if its slot came back meanwhile). A write that failed is no harm
        here (the next owner starts from the destination's log end offset and checks
        it); one that landed at another offset is, and fails the mirror."""
        topic = m.record.topic
        for p, task in list(m.releasing.items()):
            try:
                task.copier.settle()
            except PartitionFailed as exc:
                if not unknown_outcome(exc):
                    self._fail(m, p, str(exc), exc.offset)
                    continue
                log.warning("[%s/%s-p%d] a write timed out while its slot was released (%s); the next owner "
                            "waits its grace, then copies from the destination log end offset", self.name,
                            topic, p, exc)
                self._hold_unknown(topic, p)
            if self.producers.in_flight(topic, p):
                continue
            del m.releasing[p]
            self.producers.forget(topic, p)
            if m.prepared and not m.stopping and m.restart_at is None:
                self._add_partitions(m, [p])

    def _commands(self) -> bool:
        """Apply every waiting command; True on shutdown."""
        shutdown = False
        while True:
            if self._waiting_cmds:
                cmd = self._waiting_cmds.popleft()
            else:
                try:
                    cmd = self.inbox.get_nowait()
                except queue.Empty:
                    return shutdown
            if cmd.kind == "shutdown":
                shutdown = True
                continue
            if cmd.kind == "fresh":
                self._fresh(cmd.at)
                continue
            m = self.mirrors.get(cmd.topic)
            if cmd.kind == "start":
                # a mirror still settling a stop is started again by the control plane once
                # it reported the stop
                if m is None:
                    self.mirrors[cmd.topic] = _Mirror(cmd.record)
            elif m is None:
                if cmd.kind == "stop" and cmd.ack:
                    self.outbox.put(Event("stopped", cmd.topic, ack=True))
                continue
            elif cmd.kind == "update":
                m.record = cmd.record
            elif cmd.kind == "stop":
                self._begin_stop(m, cmd.why, cmd.ack)
            elif cmd.kind == "fail":
                self._fail(m, cmd.partition, cmd.error, cmd.offset)
            elif cmd.kind == "partitions" and not m.stopping and m.prepared:
                m.source_partitions = max(m.source_partitions, cmd.count)
                new = self._add_partitions(m, range(cmd.count))
                if new:
                    log.info("[%s/%s] new source partition(s) %s: copying", self.name, cmd.topic, new)

    # ------------------------------------------------------------ starting

    def _restart_due(self, now: float) -> None:
        """Mirrors whose back-off is over start again, once every write of their old
        copiers is confirmed or failed (a new copier reads the destination log end offset)."""
        for m in self.mirrors.values():
            if m.restart_at is None or now < m.restart_at or m.stopping:
                continue
            topic = m.record.topic
            if any(self.producers.in_flight(topic, p) for p in m.tasks):
                continue
            if self._settle_or_fail(m):
                continue
            for p in m.tasks:
                self.producers.forget(topic, p)
            m.tasks.clear()
            m.restart_at = None
            m.prepared = False

    def _starts(self, now: float) -> None:
        """Prepare mirrors and start partitions, for START_BUDGET_S at most: commands are
        looked at again before more starts."""
        deadline = now + START_BUDGET_S
        interval = None
        for topic, m in list(self.mirrors.items()):
            if m.stopping or m.restart_at is not None or now < m.starts_at:
                continue
            try:
                if not m.prepared:
                    self._prepare(m)
                while m.to_start:
                    p = m.to_start[0]
                    if not (st.slot_of(topic, p) in self.ownership.owned
                            and self.may_write_now(time.monotonic())):
                        self._forget_read_ahead()  # read while the slots were ours: read again
                        return  # the lease ended or slots went: the next turn sees it
                    if p >= m.partitions and not self._producer_knows(m, p):
                        break  # added a moment ago: the next turns look again
                    if not self.dst_offsets.has_read_ahead(m.record.topic, p):
                        self._read_ahead(m)
                    interval = interval or self._idle_interval()
                    try:
                        self._start_partition(m, p, interval)
                    except (KafkaMirrorsError, KafkaException) as exc:
                        if isinstance(exc, (PartitionFailed, NotFoundError, SourceTopicChanged)) or not m.tasks:
                            raise
                        self._start_later(m, p, exc)
                        break
                    m.to_start.pop(0)
                    if m.start_backoff != BACKOFF_MIN_S:
                        m.start_backoff = BACKOFF_MIN_S
                        self.outbox.put(Event("started", topic))  # clears the error shown
                    if time.monotonic() > deadline:
                        return
            except PartitionFailed as exc:
                self._fail(m, getattr(exc, "partition", None), str(exc), exc.offset)
            except (NotFoundError, SourceTopicChanged) as exc:
                self._fail(m, None, str(exc), None)
            except (KafkaMirrorsError, KafkaException, BufferError) as exc:
                self._back_off(m, f"cannot start: {exc}")
            except Exception as exc:  # noqa: BLE001 - one mirror's surprise is that mirror's
                log.debug("starting %s", topic, exc_info=True)
                self._back_off(m, f"cannot start: unexpected {type(exc).__name__}: {exc}")
            if time.monotonic() > deadline:
                return

    def _read_ahead(self, m: _Mirror) -> None:
        """Before the next READ_AHEAD partitions of a mirror start: fence their slots at
        once (init_transactions in parallel) and then read their offsets, a request per
        kind for all of them, on both clusters. Their starts then ask the clusters nothing
        more when the destination is empty; one after another, those round trips had a
        mirror of 6 partitions take 3 s to start them all. A destination partition's
        offsets are read only after its slot is fenced, as its start reads them."""
        rec = m.record
        chunk = [p for p in m.to_start[:READ_AHEAD]
                 if p < m.partitions and st.slot_of(rec.topic, p) in self.ownership.owned]
        if not chunk:
            return
        fenced = self.producers.fence_slots({st.slot_of(rec.topic, p) for p in chunk})
        self.dst_offsets.read_ahead([(rec.topic, p) for p in chunk if st.slot_of(rec.topic, p) in fenced])
        self.src_offsets.read_ahead([(rec.source_topic, p) for p in chunk])

    def _forget_read_ahead(self) -> None:
        self.dst_offsets.forget()
        self.src_offsets.forget()

    def _start_later(self, m: _Mirror, p: int, exc: Exception) -> None:
        """A partition of a mirror that copies already could not start (a broker behind on
        metadata, a leader moving): that partition goes last and starts are held back
        briefly; the mirror's running partitions copy on (a whole-mirror back-off would
        start them all over, which at 100 partitions a mirror fed the very errors it met)."""
        m.to_start.append(m.to_start.pop(0))
        m.starts_at = time.monotonic() + m.start_backoff
        # describing the topics makes the admin clients take fresh metadata: ListOffsets
        # finds the leaders of partitions added a moment ago through it ("No leaders found")
        for admin, name in ((self.src_admin, m.record.source_topic), (self.dst_admin, m.record.topic)):
            try:
                kt.describe_topic(admin, name)
            except KafkaMirrorsError:
                pass  # the next start says what is wrong, if anything still is
        log.warning("[%s/%s-p%d] cannot start (%s); starts of the mirror resume in %.0f s, its other "
                    "partitions copy on", self.name, m.record.topic, p, exc, m.start_backoff)
        m.start_backoff = min(m.start_backoff * 2, BACKOFF_MAX_S)
        # shown by describe (the heartbeat's mirror_errors) until a partition starts again
        self.outbox.put(Event("backoff", m.record.topic, error=f"partition {p} cannot start: {exc}"))

    def _prepare(self, m: _Mirror) -> None:
        rec = m.record
        self._forget_read_ahead()  # nothing read for an earlier life of this mirror is used
        info = source_topic(self.src_admin, rec)
        configs = kt.topic_overrides(self.dst_admin, rec.topic)
        m.compacted = "compact" in configs.get("cleanup.policy", "")
        dst_parts = kt.describe_topic(self.dst_admin, rec.topic).partitions
        if info.partitions > dst_parts:
            add_destination_partitions(self.dst_admin, rec.topic, info.partitions, self.timeout)
            log.info("[%s/%s] destination now has %d partitions", self.name, rec.topic, info.partitions)
        m.source_partitions = info.partitions
        m.to_start = []
        self._add_partitions(m, range(info.partitions))
        m.partitions = dst_parts  # partitions added just now are checked first (_producer_knows)
        m.new_partitions_at = 0.0
        m.prepared = True
        log.info("[%s/%s] copying %d of %d partition(s) from '%s'", self.name, rec.topic,
                 len(m.to_start), info.partitions, rec.source_topic)
        self.outbox.put(Event("started", rec.topic))

    def _producer_knows(self, m: _Mirror, p: int) -> bool:
        """Whether the sink producer's metadata has partition p (one the source added since
        the mirror started): producing to it before fails with an unknown partition."""
        now = time.monotonic()
        if now < m.new_partitions_at:
            return False
        m.new_partitions_at = now + 1.0
        md = self.producers.producer.list_topics(m.record.topic, timeout=1.0)
        t = md.topics.get(m.record.topic)
        m.partitions = len(t.partitions) if t is not None and t.error is None else m.partitions
        return p < m.partitions

    def _idle_interval(self) -> float:
        n = sum(len(m.tasks) + len(m.to_start) for m in self.mirrors.values())
        return max(1.0, n / IDLE_CHECKS_PER_S)

    def _start_partition(self, m: _Mirror, p: int, interval: float) -> None:
        rec = m.record
        source = KafkaPartitionSource(self.feeds, self.src_offsets, rec.source_topic, p)
        sink = KafkaPartitionSink(self.producers, self.dst_offsets, self.dst_admin, self.dst_conf,
                                  rec.topic, p, m.compacted)
        copier = PartitionCopier(source, sink, label=f"{self.name}/{rec.topic}-p{p}", logger=copy_log,
                                 idle_check_interval=interval)
        try:
            copier.start()
        except PartitionFailed as exc:
            source.release()
            exc.partition = p
            raise
        except BaseException:
            source.release()
            raise
        finally:
            self.dst_offsets.forget(rec.topic, p)
            self.src_offsets.forget(rec.source_topic, p)
        m.tasks[p] = _Task(copier, source, time.monotonic() + random.uniform(0, interval),
                           st.slot_of(rec.topic, p))
        if source.feed is not None:
            self._by_source[(id(source.feed), rec.source_topic, p)] = (rec.topic, p)
        self._busy.add((rec.topic, p))  # stepped at the next turn

    # ------------------------------------------------------------ copying

    def _candidates(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for key in list(self._busy):
            m = self.mirrors.get(key[0])
            if m is None or key[1] not in m.tasks:
                self._busy.discard(key)  # its task is gone (stopped, released, restarted anew)
                continue
            out.setdefault(key[0], set()).add(key[1])
        for feed, (source_topic, p) in self.feeds.ready():
            key = self._by_source.get((id(feed), source_topic, p))
            if key is not None:
                out.setdefault(key[0], set()).add(key[1])
        return out

    def _steps(self, now: float) -> bool:
        progressed = False
        interval = None
        picks = None
        if now >= self._next_full_scan:
            self._next_full_scan = now + FULL_SCAN_S
        else:
            picks = self._candidates()
        busy = self._busy
        # in order of mirror and partition, from the one after the last stepped: a turn cut
        # short by a command (every half second at least: the "fresh" ones) starts where the
        # last one stopped, so partitions late in the order are not starved by busy early ones
        order = []
        cursor_topic, cursor_p = self._step_cursor or (None, -1)
        start = None  # the index of the first entry after the cursor
        for topic, m in self.mirrors.items():
            if topic == cursor_topic:
                start = -1  # the cursor's mirror: its first partition after cursor_p
            if m.stopping or m.restart_at is not None:
                continue
            if picks is None:
                ps = sorted(m.tasks)
            else:
                ps = sorted(p for p in picks.get(topic, ()) if p in m.tasks)
            for p in ps:
                if start == -1 and (topic != cursor_topic or p > cursor_p):
                    start = len(order)
                order.append((topic, m, p, m.tasks[p]))
            if start == -1 and topic != cursor_topic:
                start = len(order)
        if start is not None and start >= 0:
            order = order[start:] + order[:start]
        skip: set[str] = set()  # mirrors that failed or backed off in this turn
        self._gap_waits = waits = 0
        for topic, m, p, task in order:
            if topic in skip or m.stopping or m.restart_at is not None:
                continue
            copier = task.copier
            if not (copier.busy() or task.source.has_data() or now >= task.next_idle):
                busy.discard((topic, p))
                continue
            if not self._writable(task):
                return progressed  # the lease ended or slots went: the next turn sees it
            if now >= task.next_idle:
                interval = interval or self._idle_interval()
                task.next_idle = now + interval
            before = copier.progress.next_offset
            self._step_cursor = (topic, p)
            try:
                copier.step(0.0)
            except PartitionFailed as exc:
                if unknown_outcome(exc):
                    self._hold_unknown(topic, p)
                    self._back_off(m, f"partition {p}: {exc} (copying it again once that write surely "
                                      f"landed or not)")
                    skip.add(topic)
                    continue
                cause = str(exc)
                # a source topic deleted and re-created under the copy shows up as
                # offsets going back: name the cause when it is that
                try:
                    source_topic(self.src_admin, m.record)
                except SourceTopicChanged as changed:
                    cause = str(changed)
                except KafkaMirrorsError:
                    pass
                self._fail(m, p, cause, exc.offset)
                skip.add(topic)
                continue
            except NotWriting as exc:
                # the gate closed in the middle of the step (the lease lapsed, the view of
                # the state store went stale): no error; copying goes on once it opens
                self._back_off(m, f"partition {p}: {exc}", not_writing=True)
                skip.add(topic)
                continue
            except (KafkaMirrorsError, KafkaException, BufferError) as exc:
                if self._destination_topic_gone(m, exc):
                    self._fail(m, p, f"destination topic '{topic}' was deleted ({exc})", None)
                else:
                    self._back_off(m, f"partition {p}: {exc}")
                skip.add(topic)
                continue
            except Exception as exc:  # noqa: BLE001 - one mirror's surprise is that mirror's
                log.debug("copying %s-%d", topic, p, exc_info=True)
                self._back_off(m, f"partition {p}: unexpected {type(exc).__name__}: {exc}")
                skip.add(topic)
                continue
            if copier.busy():
                busy.add((topic, p))
                if copier.gap_planned():
                    waits += 1
                    self._gap_waits = waits
            else:
                busy.discard((topic, p))
            if copier.progress.next_offset != before:
                progressed = True
            if self._waiting_cmds or not self.inbox.empty():
                return True  # commands first: a stop waits for no other partition
        return progressed

    # ------------------------------------------------------------ stopping

    def _begin_stop(self, m: _Mirror, why: str, ack: bool) -> None:
        """Nothing more is fetched, planned or sent for the mirror from now on."""
        self._forget_read_ahead()
        if not m.stopping:
            m.stopping, m.stop_why = True, why
            self._remember_hw(m)  # the feed forgets it once the partition is unassigned
            for task in m.tasks.values():
                task.source.release()
        m.stop_ack = m.stop_ack or ack

    def _settle_stops(self) -> None:
        for topic, m in list(self.mirrors.items()):
            if not m.stopping:
                continue
            left = 0
            for p, task in m.tasks.items():
                try:
                    task.copier.settle()
                except PartitionFailed as exc:
                    if m.stop_failed is None and m.stop_why != "worker shutting down":
                        log.error("[%s/%s-p%d] while stopping: %s", self.name, topic, p, exc)
                left += self.producers.in_flight(topic, p)
            # and those of partitions whose slot this worker gave up meanwhile
            left += sum(self.producers.in_flight(topic, p) for p in m.releasing)
            # a stop is reported once the writes settled; a failure at once (what it
            # wrote no longer matters, and nothing of it is read again)
            if left and m.stop_failed is None:
                continue
            for p in [*m.tasks, *m.releasing]:
                reports = self.producers.outstanding(topic, p)
                if reports:
                    # a failure is reported at once, its writes may still be in flight: their
                    # slot stays held (membership does not release it) until they are not
                    self._orphans[(topic, p)] = reports
                self.producers.forget(topic, p)  # nothing left over for a new copier
            self._publish_one(topic, m)
            del self.mirrors[topic]
            log.info("[%s/%s] stopped copying: %s", self.name, topic, m.stop_why)
            if m.stop_failed is not None:
                self.outbox.put(m.stop_failed)
            else:
                self.outbox.put(Event("stopped", topic, ack=m.stop_ack))

    def _destination_topic_gone(self, m: _Mirror, exc: Exception) -> bool:
        """An unknown-topic error on a write, and the mirror topic is really gone: its
        writes would wait out delivery.timeout.ms, so the mirror fails at once."""
        if "Unknown topic" not in str(exc) and "UNKNOWN_TOPIC" not in str(exc):
            return False
        try:
            kt.describe_topic(self.dst_admin, m.record.topic)
        except NotFoundError:
            return True
        except KafkaMirrorsError:
            return False
        return False

    def _settle_or_fail(self, m: _Mirror) -> bool:
        """Take the delivery reports of a mirror that is not being stepped: a failed or
        misplaced write fails the mirror (True), as it would while copying; a timed-out
        one holds its partition back (unknown_outcome)."""
        for p, task in m.tasks.items():
            try:
                task.copier.settle()
            except PartitionFailed as exc:
                if unknown_outcome(exc):
                    self._hold_unknown(m.record.topic, p)
                    continue
                self._fail(m, p, str(exc), exc.offset)
                return True
        return False

    def _fail(self, m: _Mirror, partition: int | None, error: str, offset: int | None) -> None:
        topic = m.record.topic
        log.error("[%s/%s%s] FAILED: %s", self.name, topic,
                  f"-p{partition}" if partition is not None else "", error)
        self._begin_stop(m, "failed", ack=False)
        m.stop_failed = Event("failed", topic, partition=partition, offset=offset, error=error)

    def _back_off(self, m: _Mirror, error: str, not_writing: bool = False) -> None:
        """This mirror alone stops now (its writes settle) and starts again after a back-off,
        from the destination log end offsets. The back-off doubles from BACKOFF_MIN_S to
        BACKOFF_MAX_S, and starts from BACKOFF_MIN_S again once the mirror went
        BACKOFF_RESET_S without one. not_writing: the write gate closed (NotWriting), which
        is not an error: BACKOFF_MIN_S, not doubled, not reported as the mirror's error."""
        topic = m.record.topic
        now = time.monotonic()
        if now - m.backed_off_at >= BACKOFF_RESET_S:
            m.backoff = BACKOFF_MIN_S
        if not_writing:
            log.info("[%s/%s] %s; copying it starts again once this worker may write", self.name, topic, error)
        else:
            log.warning("[%s/%s] %s; copying it starts over in %.0f s", self.name, topic, error, m.backoff)
        self._remember_hw(m)
        for task in m.tasks.values():
            task.source.release()
        if self._settle_or_fail(m):
            return
        # the old copiers stay until their writes settled (_restart_due): no wait here
        m.to_start = []
        m.starts_at, m.start_backoff = 0.0, BACKOFF_MIN_S  # a restart starts afresh
        if not_writing:
            m.restart_at = now + BACKOFF_MIN_S
            return
        m.error = error
        m.restart_at = now + m.backoff
        m.backed_off_at = m.restart_at  # the quiet minute counts from the restart
        m.backoff = min(m.backoff * 2, BACKOFF_MAX_S)
        self.outbox.put(Event("backoff", topic, error=error))

    # ------------------------------------------------------------ reporting

    def _remember_hw(self, m: _Mirror) -> None:
        for p in m.tasks:
            hw = self.feeds.high_watermark(m.record.source_topic, p)
            if hw is not None:
                self.source_hw[(m.record.topic, p)] = hw

    def _progress(self, topic: str, p: int, task: _Task) -> dict:
        pr = task.copier.progress
        return {
            # the source's high watermark as of the last fetch response (no request): what
            # failover reports as the last known source offset when the source is gone
            "source_high_watermark": self.source_hw.get((topic, p)),
            "next_offset": pr.next_offset,
            "records_copied": pr.records_copied,
            "records_fetched": pr.records_fetched,
            "bytes_fetched": pr.bytes_fetched,
            "bytes_copied": pr.bytes_copied,
            "fillers_written": pr.fillers_written,
            "offsets_lost_to_source_retention": pr.offsets_lost_to_source_retention,
            "last_error": pr.last_error,
            "worker_id": self.worker_id,
        }

    def _publish_one(self, topic: str, m: _Mirror) -> None:
        view = dict(self.view)
        view[topic] = {p: self._progress(topic, p, t) for p, t in m.tasks.items()}
        self.view = view
        self.view_serial += 1

    def _publish(self) -> None:
        view: dict[str, dict[int, dict]] = {}
        for topic, m in self.mirrors.items():
            self._remember_hw(m)
            if m.tasks:
                view[topic] = {p: self._progress(topic, p, t) for p, t in m.tasks.items()}
        # mirrors that stopped since keep their last progress in the view until written
        for topic, parts in self.view.items():
            view.setdefault(topic, parts)
        self.view = view
        self.view_serial += 1

    def status(self) -> dict[str, dict]:
        """{topic: {"state": copying|starting|backoff|stopping, "error": ...}} (a copy)."""
        out = {}
        for topic, m in list(self.mirrors.items()):
            state = ("stopping" if m.stopping else "backoff" if m.restart_at is not None
                     else "starting" if (not m.prepared or m.to_start) else "copying")
            out[topic] = {"state": state, "error": m.error, "partitions": sorted(m.tasks)}
        return out


# ---------------------------------------------------------------- source and destination topics

def source_topic(src_admin: Admin, rec: st.MirrorRecord) -> kt.TopicInfo:
    """The source topic as it is now; SourceTopicChanged when it is gone or is no longer
    the topic the mirror was made from (new topic ID)."""
    try:
        info = kt.describe_topic(src_admin, rec.source_topic)
    except NotFoundError:
        raise SourceTopicChanged(f"source topic '{rec.source_topic}' was deleted") from None
    if rec.source_topic_id and info.topic_id != rec.source_topic_id:
        raise SourceTopicChanged(f"source topic '{rec.source_topic}' was re-created "
                                 f"(topic ID {info.topic_id}, mirror made from {rec.source_topic_id})")
    return info


def add_destination_partitions(dst_admin: Admin, topic: str, count: int, timeout: float) -> None:
    from confluent_kafka.admin import NewPartitions
    futs = dst_admin.client.create_partitions([NewPartitions(topic, count)], request_timeout=timeout)
    await_result(futs[topic], f"adding partitions to '{topic}'", dst_admin.label, timeout)
