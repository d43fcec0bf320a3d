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

from confluent_kafka import KafkaException, TopicPartition

from kafka_mirrors import state as st
from kafka_mirrors.errors import KafkaMirrorsError, NotFoundError
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
from kafka_mirrors.replication.copier import PartitionCopier, PartitionFailed

log = logging.getLogger("kafka_mirrors.worker")

HEARTBEAT_S = 2.0
METADATA_S = 5.0  # partitions, topic identity; topic configs every topic.config.sync.ms
STOP_FLUSH_S = 30.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 10.0


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
        self.src_admin = Admin(self.src_conf, f"source cluster {link.source.bootstrap}", timeout)
        self.dst_admin = Admin(self.dst_conf, f"destination cluster {link.destination.bootstrap}", timeout)
        self.store = st.StateStore(self.dst_conf, link.name, timeout)
        self.tasks: dict[str, MirrorTask] = {}
        self.known: dict[str, st.MirrorRecord] = {}  # latest record of every mirror of the link
        self.config_sync_s = int(link.option("topic.config.sync.ms")) / 1000.0
        self.next_config_sync = 0.0
        self.feed: SourceFeed | None = None
        self.producers: SinkProducers | None = None
        self.delivery_timeout_ms = delivery_timeout_ms
        self.src_offsets = OffsetReader(self.src_admin.client, self.src_admin.label, timeout)
        self.dst_offsets = OffsetReader(self.dst_admin.client, self.dst_admin.label, timeout)

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
        next_beat = 0.0
        next_meta = time.monotonic() + METADATA_S
        backoff = BACKOFF_MIN_S
        try:
            while not stop.is_set():
                for key, value in follower.poll(0):
                    if key.startswith("mirror/") and value is not None:
                        self._reconcile(st.MirrorRecord.from_json(value))
                try:
                    progressed = self._step_all()
                    backoff = BACKOFF_MIN_S if progressed else backoff
                except (KafkaMirrorsError, KafkaException) as exc:
                    # nothing known to be wrong (a stall, an unreachable cluster): the one
                    # failure path is to start over from the destination log end offsets
                    log.warning("[%s] %s; starting over from the destination log end offsets in %.0f s",
                                self.link.name, exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    self._restart_all()
                    continue
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + HEARTBEAT_S
                if now >= next_meta:
                    try:
                        self._follow_source_metadata()
                    except (KafkaMirrorsError, KafkaException) as exc:
                        log.warning("[%s] following source metadata: %s", self.link.name, exc)
                    next_meta = now + METADATA_S
                if not progressed:
                    # nothing to do anywhere: wait for the source instead of spinning
                    if self.feed.buffers:
                        self.feed.pump(0.2)
                    else:
                        stop.wait(0.5)
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

    def _open_clients(self) -> None:
        self.feed = SourceFeed(self.src_conf, f"[{self.link.name}]")
        self.producers = SinkProducers(self.dst_conf, self.link.name, f"[{self.link.name}]",
                                       self.delivery_timeout_ms)

    def _restart_all(self) -> None:
        records = [t.record for t in self.tasks.values()]
        self.tasks.clear()
        self.producers.purge()
        self.producers.close(1)
        self.feed.close()
        self._open_clients()
        for rec in records:
            self._reconcile(rec)

    # ------------------------------------------------------------ mirrors

    def _reconcile(self, rec: st.MirrorRecord) -> None:
        self.known[rec.topic] = rec
        running = rec.topic in self.tasks
        if rec.state == st.ACTIVE and not running:
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
        elif rec.state != st.ACTIVE and running:
            self._stop_task(rec.topic, f"state is now {rec.state}", ack=True)
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
            self.store.ack(topic, self.worker_id, "stopped")

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
        for rec in list(self.known.values()):
            if rec.state == st.ACTIVE and rec.topic not in self.tasks:
                self._reconcile(rec)  # retry a mirror that could not start
        for topic, task in list(self.tasks.items()):
            try:
                info = self._source_topic(task.record)
            except SourceTopicChanged as exc:
                self._fail(topic, None, exc)
                continue
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
            source_hw = hw if hw >= 0 else None
        return {
            "source_high_watermark": source_hw,
            "next_offset": pr.next_offset,
            "records_copied": pr.records_copied,
            "fillers_written": pr.fillers_written,
            "offsets_lost_to_source_retention": pr.offsets_lost_to_source_retention,
            "worker_id": self.worker_id,
            "updated_at": time.time(),
        }

    def _heartbeat(self, final: bool = False) -> None:
        try:
            many = {(topic, p): self._progress(topic, p, copier)
                    for topic, task in self.tasks.items() for p, copier in task.copiers.items()}
            if many:
                self.store.put_progress_many(many)
            if final:
                self.store.remove_worker(self.worker_id)
            else:
                self.store.heartbeat(self.worker_id, {
                    "worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                    "heartbeat_at": time.time(),
                    "partitions": sorted(f"{t}-{p}" for t, task in self.tasks.items() for p in task.copiers),
                })
        except KafkaMirrorsError as exc:
            log.warning("[%s] heartbeat not written: %s", self.link.name, exc)
