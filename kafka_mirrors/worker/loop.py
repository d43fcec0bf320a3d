"""The replication worker (`kafka-mirrors run --link NAME`).

    state store (destination) --follow--> Worker --step--> PartitionCopier per partition
                                            |                 |            |
                                            |           SourceFeed    SinkProducers
                                            +--heartbeat/progress--> state store

Copies every ACTIVE mirror of one link, partition by partition, and stops a mirror's
partitions the moment its state leaves ACTIVE (the state store is followed continuously;
the stop is acknowledged there). Follows the source: new partitions are added to the
mirror and copied; a deleted or re-created source topic (new topic ID) fails the mirror.
A PartitionFailed from the copier fails the whole mirror with the partition and offset.
Around the copy: consumer-group offsets are copied every consumer.offset.sync.ms
(offsetsync.py), and with auto.create.mirror.topics.enable matching source topics get a
mirror as they appear (autocreate.py).

The source may vanish at any moment (that is what failover is for), so the loop never
waits long on it: source calls made from the loop have short timeouts, and once the
source looks unreachable (a fetch error, a failed call) copying waits while a
non-blocking probe watches for its return. The state store keeps being followed all the
while, so a stop is acknowledged within a fraction of a second even with the source down,
and the freshest source high watermark seen is written as progress at once (failover's
RPO).

One worker per link for now; several workers sharing partitions through Kafka's group
protocol is future work (DESIGN.md section 2).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafka_mirrors import state as st
from kafka_mirrors.worker.autocreate import AutoCreator
from kafka_mirrors.worker.source_watch import SourceWatch
from kafka_mirrors.errors import KafkaMirrorsError, KafkaUnavailableError, NotFoundError
from kafka_mirrors.kafka.admin import Admin
from kafka_mirrors.kafka.partition import (
    KafkaPartitionSink,
    KafkaPartitionSource,
    OffsetReader,
    SinkProducers,
    SourceFeed,
)
from kafka_mirrors.kafka import topics as kt
from kafka_mirrors.mirrors import mirror_configs
from kafka_mirrors.offsetsync import sync_consumer_offsets
from kafka_mirrors.replication.copier import PartitionCopier, PartitionFailed

log = logging.getLogger("kafka_mirrors.worker")

HEARTBEAT_S = 2.0
METADATA_S = 5.0  # partitions, topic identity; topic configs every topic.config.sync.ms
STOP_FLUSH_S = 30.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 10.0
# Source calls made from the loop wait at most this long: the loop must keep following the
# state store (a failover waits about 4 s for acknowledgements).
SOURCE_CALL_S = 2.0
AUTO_CREATE_S = 5.0
FOLLOW_WAIT_S = 0.2
# librdkafka errors that say the source's brokers cannot be reached
_SOURCE_DOWN_CODES = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}


class SourceTopicChanged(KafkaMirrorsError):
    """The source topic was deleted or re-created: mixing two topics' data is never right."""


@dataclass
class MirrorTask:
    record: st.MirrorRecord
    compacted: bool
    copiers: dict[int, PartitionCopier] = field(default_factory=dict)


class Worker:
    def __init__(self, link, *, worker_id: str | None = None, delivery_timeout_ms: int = 30000):
        self.link = link
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        timeout = float(link.option("request.timeout.s"))
        self.timeout = timeout
        self.src_conf = link.source.client_config()
        self.dst_conf = link.destination.client_config()
        # short timeouts on the source: see SOURCE_CALL_S
        self.source_timeout = min(timeout, SOURCE_CALL_S)
        self.src_admin = Admin(self.src_conf, f"source cluster {link.source.bootstrap}", self.source_timeout)
        self.dst_admin = Admin(self.dst_conf, f"destination cluster {link.destination.bootstrap}", timeout)
        self.store = st.StateStore(self.dst_conf, link.name, timeout)
        self.tasks: dict[str, MirrorTask] = {}
        self.known: dict[str, st.MirrorRecord] = {}  # latest record of every mirror of the link
        self.config_sync_s = int(link.option("topic.config.sync.ms")) / 1000.0
        self.next_config_sync = 0.0
        self.feed: SourceFeed | None = None
        self.producers: SinkProducers | None = None
        self.delivery_timeout_ms = delivery_timeout_ms
        self.src_offsets = OffsetReader(self.src_admin.client, self.src_admin.label, self.source_timeout)
        self.dst_offsets = OffsetReader(self.dst_admin.client, self.dst_admin.label, timeout)
        self.source = SourceWatch(self.src_admin, max(self.source_timeout, 1.0))
        self._source_error: str | None = None  # set by the feed's error_cb (served in poll)
        self.source_hw: dict[tuple[str, int], int] = {}  # freshest high watermark seen, kept across restarts
        self.restart_at: float | None = None  # copying starts over at this time (monotonic)
        self.backoff = BACKOFF_MIN_S
        self.offset_sync_enabled = bool(link.option("consumer.offset.sync.enable"))
        self.offset_sync_s = int(link.option("consumer.offset.sync.ms")) / 1000.0
        self.offset_sync: dict | None = None  # the last sync's summary, for the heartbeat
        self.auto_create = AutoCreator(link, self._create_mirror) \
            if link.option("auto.create.mirror.topics.enable") else None

    # ------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> int:
        self.store.ensure_topic()
        self._open_clients()
        snap = self.store.snapshot()
        follower = self.store.follow(snap.end_offset)
        log.info("[%s] worker %s started; %d mirror(s) on the link", self.link.name, self.worker_id,
                 len(snap.mirrors))
        for rec in snap.mirrors.values():
            self._reconcile(rec)
        now = time.monotonic()
        next_beat = 0.0
        next_meta = now + METADATA_S
        next_offsets = now + min(self.offset_sync_s, METADATA_S)
        next_auto = now
        try:
            while not stop.is_set():
                self._follow_state(follower, 0)
                progressed = False
                if self._copying():
                    try:
                        progressed = self._step_all()
                        if progressed:
                            self.backoff = BACKOFF_MIN_S
                    except (KafkaMirrorsError, KafkaException) as exc:
                        self._start_over(exc)
                self._watch_source()
                now = time.monotonic()
                if self.restart_at is not None and now >= self.restart_at and self.source.ok:
                    self.restart_at = None
                    self._start_waiting()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + HEARTBEAT_S
                if self._copying():
                    if now >= next_meta:
                        self._guard("following source metadata", self._follow_source_metadata)
                        next_meta = time.monotonic() + METADATA_S
                    if self.offset_sync_enabled and now >= next_offsets:
                        self._guard("consumer offset sync", self._sync_offsets)
                        next_offsets = time.monotonic() + self.offset_sync_s
                    if self.auto_create is not None and now >= next_auto:
                        self._guard("auto-creating mirrors", self._auto_create)
                        next_auto = time.monotonic() + AUTO_CREATE_S
                if not progressed:
                    # nothing to do anywhere: wait for the source, or for the state store
                    # when there is nothing to wait for on the source
                    if self._copying() and self.feed.buffers:
                        self.feed.pump(FOLLOW_WAIT_S)
                    else:
                        self._follow_state(follower, FOLLOW_WAIT_S)
        finally:
            for topic in list(self.tasks):
                self._stop_task(topic, "worker shutting down", ack=False)
            self._heartbeat(final=True)
            follower.close()
            self.feed.close()
            self.producers.close()
            self.store.close()
            log.info("[%s] worker %s stopped", self.link.name, self.worker_id)
        return 0

    def _follow_state(self, follower: st.StateFollower, timeout: float) -> None:
        for key, value in follower.poll(timeout):
            if key.startswith("mirror/") and value is not None:
                self._reconcile(st.MirrorRecord.from_json(value))

    def _copying(self) -> bool:
        """Copy, and make source calls, only while the source is thought reachable and no
        start-over is pending."""
        return self.source.ok and self.restart_at is None

    def _guard(self, what: str, fn) -> None:
        try:
            fn()
        except (KafkaMirrorsError, KafkaException) as exc:
            log.warning("[%s] %s: %s", self.link.name, what, exc)
            if isinstance(exc, KafkaUnavailableError) or isinstance(exc, KafkaException):
                self._suspect_source(str(exc))

    def _on_source_error(self, err: KafkaError) -> None:
        # librdkafka's error_cb, served inside the feed's poll: note it, act in the loop
        if err.code() in _SOURCE_DOWN_CODES:
            self._source_error = err.str()

    def _watch_source(self) -> None:
        if self._source_error is not None:
            why, self._source_error = self._source_error, None
            self._suspect_source(why)
        change = self.source.tick(time.monotonic())
        if change == "down":
            log.warning("[%s] source cluster %s is unreachable (%s); copying waits for it, stops are still "
                        "acknowledged", self.link.name, self.link.source.bootstrap, self.source.why)
        elif change == "up":
            log.info("[%s] source cluster %s answers again; copying resumes", self.link.name,
                     self.link.source.bootstrap)

    def _suspect_source(self, why: str) -> None:
        if self.source.suspect(why):
            # the freshest source high watermark is what failover reports as the last known
            # source offset: write it now, the source may be gone for good
            self._write_progress()

    def _start_over(self, exc: Exception) -> None:
        """The one failure path when nothing is known to be wrong (a stall, an unreachable
        cluster): drop the copiers now, start over from the destination log end offsets
        after a back-off. Meanwhile the loop keeps following the state store."""
        log.warning("[%s] %s; starting over from the destination log end offsets in %.0f s",
                    self.link.name, exc, self.backoff)
        self.source.suspect(str(exc))  # if the source answers, the probe says so at once
        self._write_progress()  # the freshest source high watermark, before the copiers go
        self._teardown()
        self.restart_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)

    def _open_clients(self) -> None:
        self.feed = SourceFeed({**self.src_conf, "error_cb": self._on_source_error}, f"[{self.link.name}]")
        self.producers = SinkProducers(self.dst_conf, self.link.name, f"[{self.link.name}]",
                                       self.delivery_timeout_ms)

    def _teardown(self) -> None:
        for topic, task in self.tasks.items():
            for p, copier in task.copiers.items():
                self._progress(topic, p, copier)  # remember the high watermarks
        self.tasks.clear()
        self.producers.purge()
        self.producers.close(1)
        self.feed.close()
        self._open_clients()

    def _start_waiting(self) -> None:
        """Start every ACTIVE mirror not being copied (after a start-over, or one that
        could not start before)."""
        for rec in list(self.known.values()):
            if rec.state == st.ACTIVE and rec.topic not in self.tasks:
                self._reconcile(rec)

    # ------------------------------------------------------------ mirrors

    def _reconcile(self, rec: st.MirrorRecord) -> None:
        self.known[rec.topic] = rec
        running = rec.topic in self.tasks
        if rec.state == st.ACTIVE and not running:
            if not self._copying():
                return  # _start_waiting starts it once the source answers
            try:
                self._start_task(rec)
            except PartitionFailed as exc:
                self._fail(rec.topic, getattr(exc, "partition", None), exc)
            except (NotFoundError, SourceTopicChanged) as exc:
                self._fail(rec.topic, None, exc)
            except (KafkaMirrorsError, KafkaException) as exc:
                # unreachable cluster and the like: leave it to the next reconcile
                self.tasks.pop(rec.topic, None)
                log.error("[%s/%s] cannot start yet: %s", self.link.name, rec.topic, exc)
                if isinstance(exc, (KafkaUnavailableError, KafkaException)):
                    self._suspect_source(str(exc))
        elif rec.state != st.ACTIVE and running:
            self._stop_task(rec.topic, f"state is now {rec.state}", ack=True)
        elif rec.state == st.PENDING_STOPPED:
            # not copying it right now (e.g. the source is down and copying starts over
            # later), but it is this worker's mirror: it will not start it again
            self._ack(rec.topic)
        elif running:
            self.tasks[rec.topic].record = rec

    def _start_task(self, rec: st.MirrorRecord) -> None:
        info = self._source_topic(rec)
        configs = kt.topic_overrides(self.dst_admin, rec.topic)
        compacted = "compact" in configs.get("cleanup.policy", "")
        task = MirrorTask(rec, compacted)
        self.tasks[rec.topic] = task
        dst_parts = kt.describe_topic(self.dst_admin, rec.topic).partitions
        if info.partitions > dst_parts:
            self._add_destination_partitions(rec.topic, info.partitions)
        # fence every partition's transactional id at once: each init_transactions waits on
        # the transaction coordinator (about 0.3 s here) and releases the GIL meanwhile
        with ThreadPoolExecutor(max_workers=min(16, info.partitions)) as pool:
            list(pool.map(lambda p: self.producers.txn_producer(rec.topic, p), range(info.partitions)))
        for p in range(info.partitions):
            self._start_partition(task, p)
        log.info("[%s/%s] copying %d partition(s) from '%s'", self.link.name, rec.topic,
                 info.partitions, rec.source_topic)

    def _start_partition(self, task: MirrorTask, p: int) -> None:
        rec = task.record
        label = f"{self.link.name}/{rec.topic}-p{p}"
        source = KafkaPartitionSource(self.feed, self.src_offsets, rec.source_topic, p)
        sink = KafkaPartitionSink(self.producers, self.dst_offsets, self.dst_admin, self.dst_conf,
                                  rec.topic, p, task.compacted)
        copier = PartitionCopier(source, sink, label=label, logger=logging.getLogger("kafka_mirrors.copy"))
        try:
            copier.start()
        except PartitionFailed as exc:
            exc.partition = p
            raise
        task.copiers[p] = copier

    def _add_destination_partitions(self, topic: str, count: int) -> None:
        from confluent_kafka.admin import NewPartitions
        futs = self.dst_admin.client.create_partitions([NewPartitions(topic, count)],
                                                       request_timeout=self.timeout)
        from kafka_mirrors.kafka.admin import await_result
        await_result(futs[topic], f"adding partitions to '{topic}'", self.dst_admin.label, self.timeout)
        log.info("[%s/%s] destination now has %d partitions", self.link.name, topic, count)

    def _stop_task(self, topic: str, why: str, ack: bool) -> None:
        task = self.tasks.get(topic)
        if task is None:
            return
        final = {}
        for p, copier in task.copiers.items():
            try:
                copier.stop(STOP_FLUSH_S)
            except (KafkaMirrorsError, KafkaException) as exc:
                log.error("[%s/%s-p%d] stop: %s", self.link.name, topic, p, exc)
            final[(topic, p)] = self._progress(topic, p, copier)
            self.feed.remove(task.record.source_topic, p)
        del self.tasks[topic]
        try:
            if final:
                self.store.put_progress_many(final)
        except KafkaMirrorsError as exc:
            log.warning("[%s/%s] final progress not written: %s", self.link.name, topic, exc)
        log.info("[%s/%s] stopped copying: %s", self.link.name, topic, why)
        if ack:
            self._ack(topic)

    def _ack(self, topic: str) -> None:
        try:
            self.store.ack(topic, self.worker_id, "stopped")
        except KafkaMirrorsError as exc:
            log.warning("[%s/%s] stop not acknowledged: %s", self.link.name, topic, exc)

    def _fail(self, topic: str, partition: int | None, exc: Exception) -> None:
        offset = getattr(exc, "offset", None)
        msg = str(exc)
        log.error("[%s/%s%s] FAILED: %s", self.link.name, topic,
                  f"-p{partition}" if partition is not None else "", msg)
        self._stop_task(topic, "failed", ack=False)
        if topic in self.known:
            self.known[topic].state = st.FAILED
        self.store.set_state(topic, st.FAILED, reason=msg,
                             failed={"partition": partition, "offset": offset, "message": msg})

    # ------------------------------------------------------------ copying

    def _step_all(self) -> bool:
        progressed = False
        for topic, task in list(self.tasks.items()):
            for p, copier in list(task.copiers.items()):
                before = copier.progress.next_offset
                try:
                    copier.step(0.0)
                except PartitionFailed as exc:
                    # a source topic deleted and re-created under the copy shows up as
                    # offsets going back: name the cause when it is that
                    try:
                        self._source_topic(task.record)
                        cause = exc
                    except SourceTopicChanged as changed:
                        changed.offset, cause = exc.offset, changed
                    except KafkaMirrorsError:
                        cause = exc
                    self._fail(topic, p, cause)
                    break
                if copier.progress.next_offset != before:
                    progressed = True
        return progressed

    def _source_topic(self, rec: st.MirrorRecord) -> kt.TopicInfo:
        """The source topic as it is now; SourceTopicChanged when it is gone or is no
        longer the topic the mirror was made from (new topic ID)."""
        try:
            info = kt.describe_topic(self.src_admin, rec.source_topic)
        except NotFoundError:
            raise SourceTopicChanged(f"source topic '{rec.source_topic}' was deleted") from None
        if rec.source_topic_id and info.topic_id != rec.source_topic_id:
            raise SourceTopicChanged(f"source topic '{rec.source_topic}' was re-created "
                                     f"(topic ID {info.topic_id}, mirror made from {rec.source_topic_id})")
        return info

    def _sync_configs(self, task: MirrorTask) -> None:
        """Keep the mirror's topic configs in step with the source's (DESIGN.md section 5):
        set what the source set or changed, remove what it removed, keep what must differ
        (CreateTime) and what the operator gave to `mirror create --config`."""
        rec = task.record
        want = mirror_configs(kt.topic_overrides(self.src_admin, rec.source_topic), rec.config_overrides)
        have = kt.topic_overrides(self.dst_admin, rec.topic)
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        removed = [k for k in have if k not in want]
        if changed or removed:
            kt.alter_topic_configs(self.dst_admin, rec.topic, changed, removed)
            log.info("[%s/%s] topic configs follow the source: set %s, removed %s", self.link.name,
                     rec.topic, sorted(changed), sorted(removed))

    def _follow_source_metadata(self) -> None:
        sync_configs = time.monotonic() >= self.next_config_sync
        if sync_configs:
            self.next_config_sync = time.monotonic() + self.config_sync_s
        self._start_waiting()  # retry a mirror that could not start
        for topic, task in list(self.tasks.items()):
            try:
                info = self._source_topic(task.record)
            except SourceTopicChanged as exc:
                self._fail(topic, None, exc)
                continue
            except KafkaUnavailableError as exc:
                # one unanswered call is enough: don't wait the timeout once per mirror
                self._suspect_source(str(exc))
                return
            except KafkaMirrorsError as exc:
                log.warning("[%s/%s] source metadata: %s", self.link.name, topic, exc)
                continue
            if sync_configs:
                try:
                    self._sync_configs(task)
                except KafkaMirrorsError as exc:
                    log.warning("[%s/%s] topic config sync: %s", self.link.name, topic, exc)
            missing = [p for p in range(info.partitions) if p not in task.copiers]
            if not missing:
                continue
            try:
                if kt.describe_topic(self.dst_admin, topic).partitions < info.partitions:
                    self._add_destination_partitions(topic, info.partitions)
                for p in missing:
                    self._start_partition(task, p)
                    log.info("[%s/%s-p%d] new source partition: copying", self.link.name, topic, p)
            except PartitionFailed as exc:
                self._fail(topic, getattr(exc, "partition", None), exc)
            except KafkaMirrorsError as exc:
                # e.g. the new partitions have no leader yet: the next tick tries again
                log.info("[%s/%s] new partitions not ready yet: %s", self.link.name, topic, exc)
        if sync_configs and self.tasks:
            self._refresh_read_only()

    def _refresh_read_only(self) -> None:
        """Where the destination has an authorizer: deny WRITE on the mirrors to principals
        granted it since the mirror was made read-only (kafka_mirrors.readonly)."""
        from kafka_mirrors.readonly import refresh_read_only
        try:
            active = sorted(t for t in self.tasks if self.known.get(t) and self.known[t].state == st.ACTIVE)
            for line in refresh_read_only(self.link, self.store, self.dst_admin, active, self.known):
                log.info("[%s] %s", self.link.name, line)
        except KafkaMirrorsError as exc:
            log.warning("[%s] read-only ACLs not refreshed: %s", self.link.name, exc)

    # ------------------------------------------------------------ around the copy

    def _sync_offsets(self) -> None:
        mirrors = {t: r.source_topic for t, r in self.known.items() if r.state in (st.ACTIVE, st.PAUSED)}
        if not mirrors:
            return
        summary = sync_consumer_offsets(self.src_admin, self.dst_admin, self.link, mirrors)
        self.offset_sync = summary.to_json()
        level = logging.INFO if (summary.offsets_written or summary.errors) else logging.DEBUG
        log.log(level, "[%s] consumer offsets: %s", self.link.name, summary.line())
        for group, err in sorted(summary.errors.items()):
            log.warning("[%s] consumer offsets of group '%s' not copied: %s", self.link.name, group, err)

    def _create_mirror(self, topic: str) -> None:
        from kafka_mirrors.mirrors import create_mirrors
        for rec in create_mirrors(self.link, [topic], timeout=max(self.source_timeout, 5.0)):
            self.known[rec.topic] = rec  # the follower brings it back and it starts

    def _auto_create(self) -> None:
        md = self.src_admin.client.list_topics(timeout=self.source_timeout)
        self.auto_create.tick(md.topics, self.known)

    # ------------------------------------------------------------ reporting

    def _progress(self, topic: str, p: int, copier: PartitionCopier) -> dict:
        pr = copier.progress
        # the source's high watermark as of the last fetch response: no request, and it is
        # what failover reports as the last known source offset when the source is gone
        source_hw = None
        task = self.tasks.get(topic)
        if task is not None and self.feed is not None:
            hw = self.feed.consumer.get_watermark_offsets(
                TopicPartition(task.record.source_topic, p), cached=True)[1]
            if hw >= 0:
                self.source_hw[(topic, p)] = hw
        # a new feed (after a start-over) knows none yet: the freshest one seen stands
        source_hw = self.source_hw.get((topic, p))
        return {
            "source_high_watermark": source_hw,
            "next_offset": pr.next_offset,
            "records_copied": pr.records_copied,
            "fillers_written": pr.fillers_written,
            "offsets_lost_to_source_retention": pr.offsets_lost_to_source_retention,
            "worker_id": self.worker_id,
            "updated_at": time.time(),
        }

    def _write_progress(self) -> None:
        try:
            many = {(topic, p): self._progress(topic, p, copier)
                    for topic, task in self.tasks.items() for p, copier in task.copiers.items()}
            if many:
                self.store.put_progress_many(many)
        except KafkaMirrorsError as exc:
            log.warning("[%s] progress not written: %s", self.link.name, exc)

    def _serving(self) -> list[str]:
        """The partitions this worker answers for: those it copies, and those of ACTIVE
        mirrors waiting to start (the source is down, a start-over is pending). It
        acknowledges their stop either way, so failover waits for it."""
        out = {f"{t}-{p}" for t, task in self.tasks.items() for p in task.copiers}
        for t, rec in self.known.items():
            if rec.state == st.ACTIVE and t not in self.tasks:
                out.update(f"{t}-{p}" for p in range(rec.partitions))
        return sorted(out)

    def _heartbeat(self, final: bool = False) -> None:
        self._write_progress()
        try:
            if final:
                self.store.remove_worker(self.worker_id)
            else:
                self.store.heartbeat(self.worker_id, {
                    "worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                    "heartbeat_at": time.time(),
                    "partitions": self._serving(),
                    "source_reachable": self.source.ok,
                    "source_unreachable_since": self.source.down_since,
                    "consumer_offset_sync": self.offset_sync,
                })
        except KafkaMirrorsError as exc:
            log.warning("[%s] heartbeat not written: %s", self.link.name, exc)
