"""confluent-kafka adapters behind the replication interfaces (replication/interfaces.py).

    SourceFeeds (read_committed consumers, as few as can hold the worker's tasks: one
        holds each source partition at most once, so a second mirror of a source topic
        gets a second consumer; each is demultiplexed into per-partition buffers,
        bounded in bytes overall)                  -> KafkaPartitionSource (one task)
    SinkProducers (one idempotent producer for the fast path, a small pool of
        transactional producers, one per slot of partitions, created lazily and closed
        when idle)                                 -> KafkaPartitionSink (one task)

The adapters are thin: they move bytes and report what Kafka said. Planning and checking
stay in the replication core. Offsets are read with ListOffsets: earliest (log start
offset), latest (high watermark; on the destination, its log end offset) and latest with
read_committed (last stable offset).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from kafka_mirrors.errors import KafkaMirrorsError, KafkaOperationError, KafkaUnavailableError, NotWriting
from kafka_mirrors.kafka import topics as kt
from kafka_mirrors.kafka.admin import Admin, await_result
from kafka_mirrors.kafka.gaps import GapJob, GapWriter
from kafka_mirrors.state import SLOTS, slot_of
from kafka_mirrors.replication.interfaces import (
    NO_REPORTS,
    Confirmation,
    FetchResult,
    Record,
    Reports,
    SourceOffsets,
)

log = logging.getLogger("kafka_mirrors.kafka")

FILLER_HEADER = "kafka-mirrors.filler"
# Fillers of a compacted mirror need a key (the broker refuses null keys there).
FILLER_KEY = b"__kafka_mirrors_filler__"
MARKER_WAIT_S = 30.0
# The timestamp of a marker-only transaction's one record: the end of time. A CreateTime
# topic refuses it (INVALID_TIMESTAMP) unless its message.timestamp.after.max.ms is within
# the present of the end of time too (Long.MAX_VALUE: Kafka's default before 4.0).
END_OF_TIME_MS = (1 << 63) - 1
# how long a gap thread waits for a closed write gate to open before its job fails
GATE_WAIT_S = 0.5
MARKERS_RECHECK_S = 60.0  # how long a mirror topic's "can take markers" answer is kept
# how the destination refuses a marker-only transaction's record: anything else is not the plan
MARKER_REFUSALS = frozenset({
    KafkaError.INVALID_TIMESTAMP, KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE in Kafka's words
})


def _quiet(conf: Mapping[str, object]) -> dict:
    c = dict(conf)
    c.setdefault("log_level", 3)
    return c


# ---------------------------------------------------------------- offsets

RETRY_OFFSETS_S = 0.2  # wait before asking again after a retriable ListOffsets error
# asked again for at most this long: the copy thread (which acknowledges stops) must not
# wait out a whole request timeout; past it the partition backs off instead
RETRY_OFFSETS_FOR_S = 2.0


RETRIABLE_OFFSETS_CODES = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.FENCED_LEADER_EPOCH, KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
})


class _AskAgain(Exception):
    pass


READ_AHEAD_TTL_S = 2.0  # offsets read ahead for a copier start are used within this long, or read again


class OffsetReader:
    """ListOffsets for one cluster.

    Copier starts read several offsets of their partition one request at a time. For a
    mirror of many partitions that is thousands of round trips, one partition after
    another; `read_ahead` asks for a whole list of partitions in one request per kind
    instead, and the single-partition reads of their starts take the answers from there
    (each kind read again from the cluster once `forget` dropped them, or after
    READ_AHEAD_TTL_S)."""

    def __init__(self, admin: AdminClient, label: str, timeout: float = 15.0):
        self.admin = admin
        self.label = label
        self.timeout = timeout
        # (topic, partition) -> (read at, {"earliest"|"latest"|"stable": offset})
        self._ahead: dict[tuple[str, int], tuple[float, dict[str, int]]] = {}

    # -- read ahead (copier starts)
    def read_ahead(self, tps: Sequence[tuple[str, int]]) -> None:
        """The log start offset, last stable offset and then the high watermark (log end
        offset) of every partition in tps, three requests in all. The last stable offset
        is asked before the high watermark, as in all_offsets. A partition whose answer
        was an error keeps an empty entry: its start asks alone (and sees the error)."""
        if not tps:
            return
        now = time.monotonic()
        got: dict[tuple[str, int], dict[str, int]] = {tp: {} for tp in tps}
        req = [TopicPartition(t, p) for t, p in tps]

        def collect(futures, kind):
            for tp, fut in futures.items():
                try:
                    # past the deadline only what has come already: the copy thread waits
                    # no longer than that for the whole read ahead
                    offset = fut.result(timeout=max(0.0, deadline - time.monotonic())).offset
                except Exception:  # noqa: BLE001 - that partition's start asks alone
                    continue
                if offset >= 0:
                    got[(tp.topic, tp.partition)][kind] = offset
        deadline = now + min(self.timeout, RETRY_OFFSETS_FOR_S * 2)
        try:
            first = [(self.admin.list_offsets({tp: spec for tp in req}, isolation_level=iso,
                                              request_timeout=self.timeout), kind)
                     for spec, iso, kind in ((OffsetSpec.earliest(), IsolationLevel.READ_UNCOMMITTED, "earliest"),
                                             (OffsetSpec.latest(), IsolationLevel.READ_COMMITTED, "stable"))]
            for futures, kind in first:
                collect(futures, kind)
            if time.monotonic() < deadline:
                collect(self.admin.list_offsets({tp: OffsetSpec.latest() for tp in req},
                                                request_timeout=self.timeout), "latest")
        except Exception:  # noqa: BLE001 - no read ahead: every start asks alone
            log.debug("%s: reading offsets ahead failed", self.label, exc_info=True)
        for tp, kinds in got.items():
            if "stable" not in kinds:
                kinds.pop("latest", None)  # the order above is what all_offsets relies on
            self._ahead[tp] = (now, kinds)

    def has_read_ahead(self, topic: str, partition: int) -> bool:
        return self._fresh(topic, partition) is not None

    def forget(self, topic: str | None = None, partition: int | None = None) -> None:
        """Drop what was read ahead for one partition (its start is over), or for all."""
        if topic is None:
            self._ahead.clear()
        else:
            self._ahead.pop((topic, partition), None)

    def _fresh(self, topic: str, partition: int) -> dict[str, int] | None:
        """What was read ahead for the partition, unless it is older than READ_AHEAD_TTL_S."""
        hit = self._ahead.get((topic, partition))
        if hit is None:
            return None
        if time.monotonic() - hit[0] >= READ_AHEAD_TTL_S:
            self._ahead.pop((topic, partition), None)
            return None
        return hit[1]

    def _read_ahead(self, topic: str, partition: int, kind: str) -> int | None:
        return (self._fresh(topic, partition) or {}).get(kind)

    def offsets(self, tps: Sequence[tuple[str, int]], spec: OffsetSpec,
                isolation: IsolationLevel = IsolationLevel.READ_UNCOMMITTED) -> dict[tuple[str, int], int]:
        out = {}
        pending = list(tps)
        deadline = time.monotonic() + self.timeout
        retry_until = time.monotonic() + min(self.timeout, RETRY_OFFSETS_FOR_S)
        while pending:
            req = {TopicPartition(t, p): spec for t, p in pending}
            futures = self.admin.list_offsets(req, isolation_level=isolation, request_timeout=self.timeout)
            pending = []
            for tp, fut in futures.items():
                try:
                    out[(tp.topic, tp.partition)] = self._result(fut, tp, deadline, retry_until)
                except _AskAgain:
                    pending.append((tp.topic, tp.partition))
            if pending:
                time.sleep(RETRY_OFFSETS_S)
        return out

    def _result(self, fut, tp: TopicPartition, deadline: float, retry_until: float) -> int:
        what = f"list offsets of {tp.topic}-{tp.partition}"
        try:
            offset = fut.result(timeout=max(0.1, deadline - time.monotonic())).offset
            if offset < 0 and time.monotonic() + RETRY_OFFSETS_S < retry_until:
                raise _AskAgain()
            return self._valid(offset, what)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            # a leader moving, or a broker behind on metadata (UNKNOWN_LEADER_EPOCH under
            # load): asked again within the timeout rather than failing the partition
            if isinstance(err, KafkaError) and (err.code() in RETRIABLE_OFFSETS_CODES or err.retriable()) \
                    and time.monotonic() + RETRY_OFFSETS_S < retry_until:
                raise _AskAgain() from None
        except (_AskAgain, KafkaUnavailableError):
            raise
        except Exception:  # noqa: BLE001 - await_result below types it
            pass
        return self._valid(await_result(fut, what, self.label, 0.1).offset, what)

    def _valid(self, offset: int, what: str) -> int:
        """An answer without an offset (librdkafka's -1001, OFFSET_INVALID, seen while a
        broker could not be reached) is no answer, never an offset of the log: taken for
        one, an empty partition's high watermark "-1001" failed a mirror as truncated."""
        if offset < 0:
            raise KafkaUnavailableError(f"{self.label}: {what}: no offset in the answer ({offset})")
        return offset

    def log_start_offset(self, topic: str, partition: int) -> int:
        ahead = self._read_ahead(topic, partition, "earliest")
        if ahead is not None:
            return ahead
        return self.offsets([(topic, partition)], OffsetSpec.earliest())[(topic, partition)]

    def log_end_offset(self, topic: str, partition: int) -> int:
        ahead = self._read_ahead(topic, partition, "latest")
        if ahead is not None:
            return ahead
        return self.offsets([(topic, partition)], OffsetSpec.latest())[(topic, partition)]

    def last_stable_offset(self, topic: str, partition: int) -> int:
        ahead = self._read_ahead(topic, partition, "stable")
        if ahead is not None:
            return ahead
        return self.offsets([(topic, partition)], OffsetSpec.latest(),
                            IsolationLevel.READ_COMMITTED)[(topic, partition)]

    def all_offsets(self, topic: str, partition: int) -> SourceOffsets:
        k = self._fresh(topic, partition)
        if k is not None and len(k) == 3:
            return SourceOffsets(log_start_offset=k["earliest"], last_stable_offset=k["stable"],
                                 high_watermark=k["latest"])
        self.forget(topic, partition)  # asked as a whole below: no cached high watermark after a fresh LSO
        # The log start offset and the last stable offset go out together. The high
        # watermark is asked only after the last stable offset came back: the copier's
        # "nothing open beyond the LSO" (LSO == high watermark) relies on that order.
        tp = TopicPartition(topic, partition)
        what = f"list offsets of {topic}-{partition}"
        first = [self.admin.list_offsets({tp: spec}, isolation_level=iso, request_timeout=self.timeout)
                 for spec, iso in ((OffsetSpec.earliest(), IsolationLevel.READ_UNCOMMITTED),
                                   (OffsetSpec.latest(), IsolationLevel.READ_COMMITTED))]
        try:
            start, stable = (self._valid(await_result(next(iter(f.values())), what, self.label,
                                                      self.timeout).offset, what)
                             for f in first)
        except KafkaUnavailableError:
            raise  # no answer: asking again would hold the copy thread another timeout
        except KafkaMirrorsError:
            # asked again one at a time, each retried on a retriable error
            start = self.log_start_offset(topic, partition)
            stable = self.last_stable_offset(topic, partition)
        end = self.log_end_offset(topic, partition)
        return SourceOffsets(log_start_offset=start, last_stable_offset=stable, high_watermark=end)


def to_record(msg) -> Record:
    headers = msg.headers()
    return Record(
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        timestamp=msg.timestamp()[1],
        headers=tuple(headers) if headers else (),
    )


class MessageRecords(Sequence[Record]):
    """The records of one fetch as the consumer's Message objects, seen as Records only
    where asked: the copier looks at a few offsets (run ends, the held record) and hands
    slices on to the sink, which produces straight from the messages. No Python object is
    made per copied record on that path."""

    __slots__ = ("messages",)

    def __init__(self, messages: list):
        self.messages = messages

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return MessageRecords(self.messages[i])
        return to_record(self.messages[i])

    def __iter__(self):
        return map(to_record, self.messages)


def read_range(conf: Mapping[str, object], topic: str, partition: int, start: int, end: int,
               timeout: float = 30.0) -> list[Record]:
    """The read_committed records with start <= offset < end, with a throwaway consumer."""
    if end <= start:
        return []
    reader = RangeReader(conf)
    try:
        return reader.read(topic, partition, start, end, timeout)
    finally:
        reader.close()


class RangeReader:
    """A read_committed consumer kept for the short reads of copier starts (the tail check,
    the head of a destination partition). A throwaway consumer per read cost a client
    (threads, connections, metadata) and half a second of waiting each: three a partition,
    over a second per restarted partition, hours for a restart at 10,000 partitions. A
    read re-assigns the one partition (PARTITION_EOF comes again after each assign)."""

    def __init__(self, conf: Mapping[str, object]):
        self.conf = {k: v for k, v in conf.items() if k != "error_cb"}
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(_quiet({
                **self.conf, "group.id": f"kafka-mirrors-read-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False, "isolation.level": "read_committed",
                "enable.partition.eof": True, "auto.offset.reset": "earliest",
                # a few records at most are asked for: no wait for a fuller fetch
                "fetch.wait.max.ms": 10}))
        return self._consumer

    def read(self, topic: str, partition: int, start: int, end: int, timeout: float = 30.0) -> list[Record]:
        if end <= start:
            return []
        c = self._client()
        out: list[Record] = []
        c.assign([TopicPartition(topic, partition, start)])
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                first = c.poll(0.5)
                if first is None:
                    continue
                for m in [first, *c.consume(499, 0)]:
                    if m.topic() != topic or m.partition() != partition:
                        continue  # left over from an earlier read
                    if m.error():
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            return out
                        raise KafkaException(m.error())
                    if m.offset() < start:
                        continue
                    if m.offset() >= end:
                        return out
                    out.append(to_record(m))
            raise KafkaOperationError(f"reading {topic}-{partition} [{start}, {end}) did not finish in {timeout:g} s")
        finally:
            c.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


# ---------------------------------------------------------------- source

@dataclass
class _Buffer:
    # consecutive runs of one partition's messages as the consumer returned them (list
    # slices: no per-message work to buffer them), `count` messages in all. Each run is
    # kept with the size of its first record, which stands for the run's records in the
    # byte bounds (estimated: measuring every record would cost on the per-record path).
    chunks: collections.deque = field(default_factory=collections.deque)
    count: int = 0
    bytes: int = 0
    end_offset: int | None = None  # the last PARTITION_EOF seen after the buffered records
    paused: bool = False
    error: Exception | None = None  # a fetch error of this partition, raised by its next take()
    news: bool = False  # an end of partition seen since the last take()
    last_offset: int | None = None  # offset of the newest message buffered since assignment


def _record_size(m) -> int:
    v, k = m.value(), m.key()
    return 64 + (len(v) if v else 0) + (len(k) if k else 0)


class SourceFeed:
    """One read_committed consumer for all source partitions a worker copies.

    Each partition's records are buffered until its copier asks; a partition whose buffer
    is full is paused so one slow copier cannot make the process hoard memory. A
    PARTITION_EOF event (enable.partition.eof) carries the offset at which read_committed
    saw the end: it tells the copier what follows the record it holds back."""

    MAX_BUFFERED = 20000                    # records of one partition, then it is paused
    MAX_PARTITION_BYTES = 16 * 1024 * 1024  # bytes of one partition, then it is paused
    # bytes buffered for all partitions of this feed: past it, pump() takes nothing more
    # from librdkafka, whose own prefetch queue is bounded too (queued.max.messages.kbytes
    # applies to the consumer's one queue, whatever the number of partitions)
    MAX_BUFFERED_BYTES = 32 * 1024 * 1024

    def __init__(self, conf: Mapping[str, object], label: str, batch: int = 5000,
                 queue_kbytes: int = 32 * 1024):
        self.label = label
        self.batch = batch
        self.conf = dict(conf)
        self.buffered_bytes = 0
        self.consumer = Consumer(_quiet({
            **conf,
            "group.id": f"kafka-mirrors-feed-{uuid.uuid4().hex[:8]}",  # never committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 32 * 1024 * 1024,
            # A fetch response queues each partition's records as one run; runs of 4 MiB
            # (not 16) keep the partitions interleaved, so one pump() fills the buffers
            # evenly and a buffer rarely reaches MAX_BUFFERED (a pause makes librdkafka
            # drop that partition's prefetched records and fetch them again). Still 4x
            # the Java consumer's default per partition and fetch round trip.
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
            "queued.max.messages.kbytes": queue_kbytes,
            "fetch.wait.max.ms": 100,
            # librdkafka stops fetching a partition whose prefetch queue is full and, by
            # default, waits a whole second (fetch.queue.backoff.ms=1000) before looking
            # again: the copy then starves for up to a second at a time
            "fetch.queue.backoff.ms": 10,
        }))
        self.buffers: dict[tuple[str, int], _Buffer] = {}
        # the partitions whose buffer has something for its copier (records, an end of
        # partition, an error) since it last took: the copy plane steps these, not all
        # of its thousands of partitions, each turn
        self.ready: set[tuple[str, int]] = set()

    def add(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.buffers[key] = _Buffer()
        self.consumer.incremental_assign([TopicPartition(topic, partition, offset)])

    def remove(self, topic: str, partition: int) -> None:
        self.ready.discard((topic, partition))
        buf = self.buffers.pop((topic, partition), None)
        if buf is not None:
            self.buffered_bytes -= buf.bytes
            self.consumer.incremental_unassign([TopicPartition(topic, partition)])

    def has_data(self, topic: str, partition: int) -> bool:
        buf = self.buffers.get((topic, partition))
        return buf is not None and (buf.count > 0 or buf.news or buf.error is not None)

    def full(self) -> bool:
        return self.buffered_bytes >= self.MAX_BUFFERED_BYTES

    def seek(self, topic: str, partition: int, offset: int) -> None:
        # re-assigning is the reliable way to move a partition that may not be fetching yet
        self.remove(topic, partition)
        self.add(topic, partition, offset)

    def pump(self, timeout: float) -> int:
        if self.buffered_bytes >= self.MAX_BUFFERED_BYTES:
            # bounded overall: the copiers drain the buffers first (librdkafka's queue
            # fills meanwhile and it stops fetching)
            return 0
        # consume(n, timeout) waits for n messages or the whole timeout: wait for the
        # first message only, then take what is already there
        first = self.consumer.poll(timeout)
        if first is None:
            return 0
        msgs = [first, *self.consumer.consume(self.batch - 1, 0)]
        # A fetch response's messages of one partition come in a row: find the rows with
        # three calls per message and buffer each row as one slice.
        buffers = self.buffers
        ready = self.ready
        touched = set()
        buf = None
        topic, partition, start = None, -1, 0
        added = 0
        for i, m in enumerate(msgs):
            err = m.error()
            if err is None and m.partition() == partition and m.topic() == topic:
                continue
            if buf is not None and i > start:
                size = _record_size(msgs[start])
                buf.chunks.append((msgs[start:i], size))
                buf.count += i - start
                buf.bytes += size * (i - start)
                added += size * (i - start)
                buf.end_offset = None
                buf.last_offset = msgs[i - 1].offset()
                touched.add((topic, partition))
            topic, partition, start = m.topic(), m.partition(), i
            buf = buffers.get((topic, partition))
            if err is not None:
                start = i + 1
                if buf is None:
                    continue
                ready.add((topic, partition))
                if err.code() == KafkaError._PARTITION_EOF:
                    buf.end_offset = m.offset()
                    buf.news = True
                    continue
                # charged to the partition's task, not to whichever task pumped
                buf.error = KafkaOperationError(f"{self.label}: fetch of {topic}-{partition} failed: {err.str()}")
        if buf is not None and len(msgs) > start:
            size = _record_size(msgs[start])
            buf.chunks.append((msgs[start:], size))
            buf.count += len(msgs) - start
            buf.bytes += size * (len(msgs) - start)
            added += size * (len(msgs) - start)
            buf.end_offset = None
            buf.last_offset = msgs[-1].offset()
            touched.add((topic, partition))
        self.buffered_bytes += added
        ready |= touched
        for key in touched:  # only partitions that got records can have filled up
            buf = buffers[key]
            if not buf.paused and (buf.count >= self.MAX_BUFFERED or buf.bytes >= self.MAX_PARTITION_BYTES):
                # librdkafka drops what it prefetched for a paused partition and fetches it
                # again on resume: rare by design (see max.partition.fetch.bytes)
                log.debug("%s pausing %s-%d: %d records buffered", self.label, key[0], key[1], buf.count)
                self.consumer.pause([TopicPartition(*key)])
                buf.paused = True
        return len(msgs)

    def take(self, topic: str, partition: int, max_records: int, timeout: float,
             max_bytes: int = 8 * 1024 * 1024) -> FetchResult:
        """At most max_records records and (as estimated) max_bytes bytes, at least one
        record when there is one: a copy step hands the producer a bounded amount, so the
        worker comes back to its other work (stops above all) soon whatever the record size."""
        buf = self.buffers.get((topic, partition))
        if buf is None:
            raise KafkaOperationError(f"{self.label}: {topic}-{partition} is not assigned to this feed")
        if not buf.count and buf.end_offset is None:
            self.pump(timeout)
        if buf.error is not None:
            error, buf.error = buf.error, None
            if not (buf.count or buf.news):
                self.ready.discard((topic, partition))
            raise error
        buf.news = False
        chunks = buf.chunks
        msgs: list = []
        taken_bytes = 0
        while chunks and len(msgs) < max_records and taken_bytes < max_bytes:
            chunk, size = chunks.popleft()
            room = min(max_records - len(msgs), max(1, (max_bytes - taken_bytes) // size))
            if len(chunk) > room:
                chunks.appendleft((chunk[room:], size))
                chunk = chunk[:room]
            taken_bytes += size * len(chunk)
            if msgs:
                msgs += chunk
            else:
                msgs = chunk
        buf.count -= len(msgs)
        buf.bytes -= taken_bytes
        self.buffered_bytes -= taken_bytes
        if not buf.count:
            self.ready.discard((topic, partition))
        recs = MessageRecords(msgs)
        if buf.paused and buf.count < self.MAX_BUFFERED // 2 and buf.bytes < self.MAX_PARTITION_BYTES // 2:
            self.consumer.resume([TopicPartition(topic, partition)])
            buf.paused = False
        end = buf.end_offset if not buf.count else None
        hw = None
        if not buf.count:
            # the high watermark from the last fetch response: tells the copier whether an
            # open transaction lies beyond the last stable offset
            hw = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1]
            hw = hw if hw >= 0 else None
            if end is None and hw is not None and buf.last_offset is not None and hw == buf.last_offset + 1:
                # The response that brought the newest record says the log ends right after
                # it. read_committed delivered that record, so it lies below the last stable
                # offset: LSO == high watermark == its offset + 1. That proves the end as a
                # PARTITION_EOF would, without waiting for the next (empty) fetch, which never
                # comes when the source dies now: the held record is written, not reported lost.
                end = hw
        return FetchResult(recs, end, hw)

    def close(self) -> None:
        self.consumer.close()


class SourceFeeds:
    """The source consumers of one worker: a consumer can be assigned a source partition
    only once, so the tasks of two mirrors of one source topic (same source partitions,
    each at its own position) go to different feeds. Feeds are made as needed (one in
    the common case: as many as the most mirrors sharing one source partition)."""

    def __init__(self, conf: Mapping[str, object], label: str, error_cb=None):
        self.conf = dict(conf)
        self.label = label
        self.error_cb = error_cb
        self.feeds: list[SourceFeed] = []
        self.reader = RangeReader(conf)

    def _new(self) -> SourceFeed:
        conf = dict(self.conf)
        if self.error_cb is not None:
            conf["error_cb"] = self.error_cb
        feed = SourceFeed(conf, self.label)
        self.feeds.append(feed)
        return feed

    def feed_for(self, topic: str, partition: int) -> SourceFeed:
        """A feed not holding (topic, partition) yet; the caller adds it there."""
        for feed in self.feeds:
            if (topic, partition) not in feed.buffers:
                return feed
        return self._new()

    def pump(self, timeout: float) -> int:
        """Fill the feeds' buffers; waits up to timeout only when nothing came at once."""
        feeds = [f for f in self.feeds if f.buffers]
        if not feeds:
            return 0
        got = sum(f.pump(0) for f in feeds)
        if not got and timeout > 0:
            got = feeds[0].pump(timeout) if len(feeds) == 1 else sum(f.pump(timeout / len(feeds)) for f in feeds)
        return got

    @property
    def assigned(self) -> int:
        return sum(len(f.buffers) for f in self.feeds)

    def ready(self):
        """(feed, (topic, partition)) of every partition whose buffer has something for its
        copier (SourceFeed.ready)."""
        for feed in self.feeds:
            for key in list(feed.ready):
                yield feed, key

    def high_watermark(self, topic: str, partition: int) -> int | None:
        """The high watermark of the last fetch response of any feed holding it (no request)."""
        best = None
        for feed in self.feeds:
            if (topic, partition) in feed.buffers:
                hw = feed.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1]
                if hw >= 0:
                    best = hw if best is None else max(best, hw)
        return best

    def close(self) -> None:
        for feed in self.feeds:
            feed.close()
        self.feeds.clear()
        self.reader.close()


class KafkaPartitionSource:
    """One task's source partition. Its feed is chosen at the first seek (the copier's
    start): one that does not hold this source partition for another task."""

    def __init__(self, feeds: "SourceFeeds | SourceFeed", offsets: OffsetReader, topic: str, partition: int):
        self.feeds = feeds if isinstance(feeds, SourceFeeds) else None
        self.feed = None if self.feeds is not None else feeds
        self.offset_reader = offsets
        self.topic = topic
        self.partition = partition

    def offsets(self) -> SourceOffsets:
        return self.offset_reader.all_offsets(self.topic, self.partition)

    def seek(self, offset: int) -> None:
        if self.feed is None:
            self.feed = self.feeds.feed_for(self.topic, self.partition)
        self.feed.seek(self.topic, self.partition, offset)

    def release(self) -> None:
        """Unassign from the feed (the task stopped)."""
        if self.feed is not None:
            self.feed.remove(self.topic, self.partition)
            if self.feeds is not None:
                self.feed = None

    def has_data(self) -> bool:
        return self.feed is not None and self.feed.has_data(self.topic, self.partition)

    def log_start_offset(self) -> int:
        return self.offset_reader.log_start_offset(self.topic, self.partition)

    def fetch(self, max_records: int, timeout: float) -> FetchResult:
        return self.feed.take(self.topic, self.partition, max_records, timeout)

    def read_range(self, start: int, end: int) -> list[Record]:
        if self.feeds is not None:
            return self.feeds.reader.read(self.topic, self.partition, start, end)
        return read_range(self.feed.conf, self.topic, self.partition, start, end)


# ---------------------------------------------------------------- sink

class _Tally:
    """What one partition's delivery callback saw since the copier last asked."""

    __slots__ = ("count", "last_expected", "mismatches", "bytes")

    def __init__(self):
        self.count = 0
        self.bytes = 0
        self.last_expected: int | None = None
        self.mismatches: list[Confirmation] = []


class _Outstanding:
    __slots__ = ("runs", "job")

    def __init__(self, runs, job: GapJob | None):
        self.runs = runs
        self.job = job

    def __bool__(self) -> bool:
        return bool(self.runs) or (self.job is not None and not self.job.done)


class SinkProducers:
    """The destination-side producers of one worker.

    The fast path shares one idempotent producer (acks=all, ordered, bounded in-flight)
    across partitions. The copier hands it runs of records whose source offsets follow
    each other; the last record of each run carries a delivery callback, the others
    none (a delivery report costs the copy thread a Message object with a copy of the
    value: a fifth of its time when every record had one). The report of the run's last
    record, checked against the source offset it copies, proves the whole run: an
    idempotent producer appends one partition's writes in order, so if the write before
    the run landed at first - 1 (proved by the run before) and the last at first + n - 1,
    the n offsets between hold n records, and with no other writer they are the run's n
    records, each at its own offset. A write of the run refused by the destination (a
    record too large for the topic) leaves a hole the rest slides into: the last lands
    below its offset and the mirror fails there. An error on the last write fails it too.
    Only another writer adding exactly as many records as were refused, inside the same
    run, would go unseen; ACLs keep other writers out (docs/architecture.md, section 3).

    Transactional writes (gaps, and the fence at a copier's start) go through a pool of
    SLOTS transactional producers: a mirror partition belongs to slot
    state.slot_of (16 slots; a topic's partitions spread over them), whose transactional.id is
    kafka-mirrors/<link>/slot-<k>. The first use of a slot in a process runs
    init_transactions, which fences every earlier producer of that id (a crashed or
    stalled worker) and completes the abort of the transaction it left open, for every
    partition that transaction touched. The mapping never changes, so a partition's
    fence is always the same id. A slot idle for IDLE_CLOSE_S is closed (its threads go);
    it fences nothing of ours when made again. Threads: a constant, plus those of at most
    2 x SLOTS producers, however many partitions.

    Each slot has a second transactional producer, kafka-mirrors/<link>/slot-<k>/markers,
    for marker-only transactions (kafka/gaps.py): its one record per
    transaction is always refused by the destination, so it never appends, and the
    sequence numbers librdkafka spends on refused records never meet a record the broker
    keeps (on the filler producer they would: the next filler batch would be refused as
    OUT_OF_ORDER_SEQUENCE). Both are fenced together when the slot is taken."""

    SLOTS = SLOTS

    @staticmethod
    def may_write(topic: str, partition: int) -> bool:
        """Whether this worker may write the partition now; the copy plane sets its own."""
        return True

    @staticmethod
    def gate_open(topic: str, partition: int) -> bool:
        """may_write and the write deadline, read from another thread (the gap threads):
        it must read only, never take a command; the copy plane sets its own."""
        return True

    @staticmethod
    def write_deadline() -> float:
        """Monotonic time after which this worker may write nothing until it is told again
        (its group lease, its view of the state store fresh); the copy plane sets its own.
        Checked before every record queued: a worker stopped (SIGSTOP) in the middle of a
        run does not queue the rest of it when it resumes, after a failover it did not see."""
        return math.inf
    IDLE_CLOSE_S = 60.0

    def __init__(self, conf: Mapping[str, object], link: str, label: str,
                 delivery_timeout_ms: int = 30000, queue_kbytes: int = 32 * 1024,
                 compression: str = "lz4"):
        self.conf = dict(conf)
        self.link = link
        self.label = label
        self.delivery_timeout_ms = delivery_timeout_ms
        self.fenced_slots: set[int] = set()  # slots whose init_transactions ran in this process
        # per partition, one (source offset of the last record, records) per run in flight
        self.pending: dict[tuple[str, int], collections.deque] = collections.defaultdict(collections.deque)
        # partitions with writes queued that no callback will report (a produce() that
        # raised after the start of a run): in flight until the producer's queue emptied
        # or librdkafka's delivery timeout surely ended them
        self._untracked: dict[tuple[str, int], float] = {}
        self._tallies: dict[tuple[str, int], _Tally] = {}
        self.producer = Producer(_quiet({
            **conf,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 10,
            "batch.size": 1024 * 1024,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 200000,
            # bounded: a stop waits for what is queued ahead of the stopped mirror's writes
            "queue.buffering.max.kbytes": queue_kbytes,
            # the largest librdkafka allows: it never refuses a record locally in the middle
            # of a run (the destination broker refuses one bigger than the topic's
            # max.message.bytes, which the run's last report then shows); a batch still
            # holds at most batch.size bytes, or one larger record
            "message.max.bytes": 1_000_000_000,
            "compression.type": compression,
            "delivery.timeout.ms": delivery_timeout_ms,
            # a write must never create a mirror topic (a deleted one fails its mirror)
            "allow.auto.create.topics": False,
        }))
        self.transactional: dict[int, Producer] = {}
        self.markers: dict[int, Producer] = {}  # slot -> its marker-only producer
        self._markers_ok: dict[str, tuple[float, bool]] = {}  # topic -> (asked at, answer)
        self.reader = RangeReader(conf)  # the destination reads of copier starts
        self._last_used: dict[int, float] = {}
        self._callbacks: dict[tuple[str, int], object] = {}
        # gap transactions written off the copy thread (kafka/gaps.py): the writer is
        # made with the first one; a partition's job until its copier took it
        self._gap_writer: GapWriter | None = None
        self._gap_jobs: dict[tuple[str, int], GapJob] = {}
        self._txn_locks: dict[int, threading.Lock] = {}

    def _reporter(self, key: tuple[str, int]):
        """The delivery callback of one partition: matches each report, in order, to the
        run whose last record it is and checks it there (no per-record lookups of topic
        and partition, no object kept for a report that matches)."""
        cb = self._callbacks.get(key)
        if cb is None:
            popleft = self.pending[key].popleft
            tally = self._tallies[key] = _Tally()
            mismatches = tally.mismatches

            def cb(err, msg):
                expected, count, nbytes = popleft()
                tally.last_expected = expected
                tally.count += count
                tally.bytes += nbytes
                if err is not None:
                    mismatches.append(Confirmation(expected, None, err.str()))
                elif msg.offset() != expected:
                    mismatches.append(Confirmation(expected, msg.offset()))
            self._callbacks[key] = cb
        return cb

    def produce(self, topic: str, partition: int, records: Sequence[Record]) -> int:
        """Queue a run of records whose source offsets follow each other (the copier's
        chunks are such runs); only the last one's delivery is reported. Returns the bytes
        of their keys and values."""
        n = len(records)
        if not n:
            return 0
        key = (topic, partition)
        messages = records.messages if type(records) is MessageRecords else None
        first, last = ((messages[0].offset(), messages[-1].offset()) if messages is not None
                       else (records[0].offset, records[-1].offset))
        if last - first != n - 1:
            # not one run: every record reported on its own (never the copier's chunks)
            return sum(self.produce(topic, partition, records[i:i + 1]) for i in range(n))
        cb = self._reporter(key)
        pending = self.pending[key]
        entry = [last, n, 0]  # the run's bytes are set once all of it is queued
        pending.append(entry)
        # positional arguments (topic, value, key, partition, callback, on_delivery,
        # timestamp, headers): Producer.produce parses keywords at twice the cost
        produce = self.producer.produce
        done = nbytes = 0
        mono, until = time.monotonic, self.write_deadline()
        cut = False  # the write deadline passed: every record counted in `done` was queued
        try:
            if messages is not None:
                # straight from the consumer's messages: no Record per copied record
                for m in messages:
                    if mono() >= until:
                        cut = True
                        until = self.still_writing(topic, partition)
                        cut = False
                    value, k, ts, headers = m.value(), m.key(), m.timestamp()[1], m.headers()
                    done += 1
                    if value:
                        nbytes += len(value)
                    if k:
                        nbytes += len(k)
                    report = cb if done == n else None
                    try:
                        produce(topic, value, k, partition, report, None, ts, headers)
                    except BufferError:
                        self._produce_when_room(topic, value, k, partition, ts, headers, report)
            else:
                for r in records:
                    if mono() >= until:
                        cut = True
                        until = self.still_writing(topic, partition)
                        cut = False
                    headers = list(r.headers) if r.headers else None
                    done += 1
                    nbytes += len(r.value or b"") + len(r.key or b"")
                    report = cb if done == n else None
                    try:
                        produce(topic, r.value, r.key, partition, report, None, r.timestamp, headers)
                    except BufferError:
                        self._produce_when_room(topic, r.value, r.key, partition, r.timestamp, headers, report)
        except BaseException:
            # the record `done` was not queued (or, cut at the deadline, none after it), so
            # the run's report will never come
            pending.remove(entry)
            if (done if cut else done - 1) > 0:
                self._untracked[key] = time.monotonic() + self.delivery_timeout_ms / 1000 + 5
            raise
        # no poll served this run's report yet (its callback rides on the last record,
        # queued just now): its bytes are set before the poll that may call it
        entry[2] = nbytes
        self.producer.poll(0)
        return nbytes

    def still_writing(self, topic: str, partition: int) -> float:
        """The write deadline passed in the middle of a run: asked again (it may have been
        renewed); raises if this worker may not write now."""
        until = self.write_deadline()
        if time.monotonic() >= until:
            raise NotWriting(f"{self.label}: no longer writing {topic}-{partition} (this worker's "
                             f"group lease ended or its view of the state store is not fresh)")
        return until

    def _produce_when_room(self, topic, value, key, partition, timestamp, headers, cb) -> None:
        while True:
            # local queue full: serve delivery reports, then try again, while this worker
            # may still write the partition (worker/membership.py: its lease, its slot)
            self.producer.poll(0.05)
            if not self.may_write(topic, partition):
                raise NotWriting(f"{self.label}: no longer writing {topic}-{partition} (this worker's "
                                 f"group lease ended or its slot moved)")
            try:
                self.producer.produce(topic, value, key, partition, cb, None, timestamp, headers)
                return
            except BufferError:
                continue

    def take_confirmations(self, topic: str, partition: int) -> Reports:
        self.producer.poll(0)
        tally = self._tallies.get((topic, partition))
        if tally is None or not tally.count:
            return NO_REPORTS
        out = Reports(tally.count, tally.last_expected, tuple(tally.mismatches), tally.bytes)
        tally.count = tally.bytes = 0
        tally.mismatches.clear()
        return out

    def in_flight(self, topic: str, partition: int) -> int:
        """Runs of this partition handed to the producer and not yet reported on, and its
        gap transaction if one is being written (0: none)."""
        key = (topic, partition)
        q = self.pending.get(key)
        job = self._gap_jobs.get(key)
        return ((len(q) if q else 0) + (key in self._untracked and not self._untracked_done(key))
                + (job is not None and not job.done))

    def _untracked_done(self, key: tuple[str, int]) -> bool:
        if len(self.producer) == 0 or time.monotonic() >= self._untracked[key]:
            del self._untracked[key]
            return True
        return False

    def forget(self, topic: str, partition: int) -> None:
        """Detach this partition's bookkeeping: reports still to come for its writes go to
        the old callback, deque and tally, which nobody reads, so a new copier of the
        partition starts clean even before they came."""
        key = (topic, partition)
        self.pending.pop(key, None)
        self._tallies.pop(key, None)
        self._callbacks.pop(key, None)
        self._gap_jobs.pop(key, None)

    def poll(self, timeout: float = 0.0) -> None:
        self.producer.poll(timeout)

    def flush(self, topic: str, partition: int, timeout: float) -> Reports:
        # poll, not producer.flush(): only this partition's writes are waited for
        deadline = time.monotonic() + timeout
        pending = self.pending[(topic, partition)]
        while pending and time.monotonic() < deadline:
            self.producer.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        if pending:
            raise KafkaOperationError(
                f"{self.label}: {len(self.pending[(topic, partition)])} writes to {topic}-{partition} "
                f"not confirmed within {timeout:g} s")
        return self.take_confirmations(topic, partition)

    @staticmethod
    def slot(topic: str, partition: int) -> int:
        return slot_of(topic, partition)

    def transactional_id(self, topic: str, partition: int) -> str:
        return self.slot_transactional_id(self.slot(topic, partition))

    def slot_transactional_id(self, k: int) -> str:
        return f"kafka-mirrors/{self.link}/slot-{k}"

    def marker_transactional_id(self, k: int) -> str:
        return f"{self.slot_transactional_id(k)}/markers"

    def txn_producer(self, topic: str, partition: int) -> Producer:
        k = self.slot(topic, partition)
        self._last_used[k] = time.monotonic()
        p = self.transactional.get(k)
        if p is None:
            pair = self._new_txn_producers(k)
            self.transactional[k], self.markers[k] = pair
            self.fenced_slots.add(k)
            p = pair[0]
        return p

    def marker_producer(self, topic: str, partition: int) -> Producer:
        self.txn_producer(topic, partition)  # the slot's two ids are fenced together
        return self.markers[self.slot(topic, partition)]

    def submit_gap(self, topic: str, partition: int, offset: int, offsets: OffsetReader,
                   fillers: int = 0, key: bytes | None = None) -> GapJob:
        """Hand an aborted transaction to the slot's gap thread (kafka/gaps.py): `fillers`
        records from `offset` on (keyed `key`), or, with none, a marker-only transaction;
        the copy thread goes on. The slot's producers are made (and fenced) here, on the
        copy thread, if they are not yet. `offsets` reads the destination's log end offsets
        in that thread (OffsetReader.offsets, not its read-ahead). The partition is in
        flight until the job is done."""
        producer = (self.txn_producer(topic, partition) if fillers
                    else self.marker_producer(topic, partition))
        k = self.slot(topic, partition)
        if self._gap_writer is None:
            self._gap_writer = GapWriter(
                self.label, lambda tps: offsets.offsets(tps, OffsetSpec.latest()), self._gap_gate,
                MARKER_REFUSALS, FILLER_HEADER, END_OF_TIME_MS, MARKER_WAIT_S)
        job = GapJob(topic, partition, offset, k, producer, fillers, key, self.txn_lock(k))
        self._gap_jobs[(topic, partition)] = job
        self._last_used[k] = time.monotonic()
        self._gap_writer.submit(job)
        return job

    def txn_lock(self, k: int) -> threading.Lock:
        """Held for each transaction of slot k's producers: the gap thread's, and the copy
        thread's one-record commits on the same filler producer (one transaction at a
        time per producer). Made on the copy thread only."""
        lock = self._txn_locks.get(k)
        if lock is None:
            lock = self._txn_locks[k] = threading.Lock()
        return lock

    def _gap_gate(self, topic: str, partition: int, wait: bool = True) -> None:
        """In the gap thread, before its transaction, as still_writing before any write:
        through gate_open, which reads and takes nothing (may_write and write_deadline take
        the copy thread's commands). A gate the copy thread is about to renew (its "fresh"
        commands wait for the step it is in) is waited for, GATE_WAIT_S at most."""
        deadline = time.monotonic() + (GATE_WAIT_S if wait else 0.0)
        while not self.gate_open(topic, partition):
            if time.monotonic() >= deadline:
                raise NotWriting(f"{self.label}: no longer writing {topic}-{partition} (this worker's group "
                                 f"lease ended, its slot moved or its view of the state store is not fresh)")
            time.sleep(0.01)

    def gap_result(self, job: GapJob) -> Confirmation | None:
        """None while the job runs; then its Confirmation, or the error it ended with (an
        error of the producer drops the slot's producers: the next use makes and fences
        them again, as after a failed transaction on the copy thread)."""
        if not job.done:
            return None
        key = (job.topic, job.partition)
        if self._gap_jobs.get(key) is job:
            del self._gap_jobs[key]
        if job.error is not None:
            if job.fenced and job.producer in (self.transactional.get(job.slot), self.markers.get(job.slot)):
                self.drop_slot(job.slot, flush=False)
            raise job.error
        return job.result

    def outstanding(self, topic: str, partition: int) -> "_Outstanding":
        """This partition's writes still out, kept past forget(): true while any is (the
        runs the producer has not reported on, a gap transaction being written)."""
        key = (topic, partition)
        return _Outstanding(self.pending.get(key), self._gap_jobs.get(key))

    def markers_supported(self, admin: Admin, topic: str) -> bool:
        """Whether the destination surely refuses a marker-only transaction's record on
        `topic` (see kafka/gaps.py): a compacted topic refuses a record without
        a key; a CreateTime topic with a finite message.timestamp.after.max.ms refuses a
        timestamp at the end of time. Read from the topic's configs at most every
        MARKERS_RECHECK_S. Not readable: the last answer (asked again in 5 s); none yet,
        KafkaOperationError (the copier backs off); refused by an ACL: no markers."""
        now = time.monotonic()
        known = self._markers_ok.get(topic)
        if known is not None and now - known[0] < MARKERS_RECHECK_S:
            return known[1]
        try:
            configs = kt.describe_topic_configs(admin, topic)
        except (KafkaMirrorsError, KafkaException) as exc:
            if "AUTHORIZATION" in str(exc).upper():
                log.warning("%s: cannot read the configs of mirror topic %s (%s): gaps of one offset "
                            "are written without marker-only transactions", self.label, topic, exc)
                self._markers_ok[topic] = (now, False)
                return False
            if known is None:
                raise KafkaOperationError(f"{self.label}: reading the configs of mirror topic {topic} "
                                          f"(whether it takes marker-only transactions): {exc}") from exc
            self._markers_ok[topic] = (now - MARKERS_RECHECK_S + 5.0, known[1])
            return known[1]

        def value(name: str) -> str | None:
            entry = configs.get(name)
            return None if entry is None else entry.value

        ok = "compact" in (value("cleanup.policy") or "")
        if not ok and value("message.timestamp.type") == "CreateTime":
            try:
                after = int(value("message.timestamp.after.max.ms") or "")
            except ValueError:
                after = None  # a broker without the config (before 3.6)
            # refused when END_OF_TIME_MS - now > after.max.ms; a day of margin for clocks
            ok = after is not None and after < END_OF_TIME_MS - int(time.time() * 1000) - 86_400_000
        self._markers_ok[topic] = (now, ok)
        return ok

    def fence_slots(self, slots) -> set[int]:
        """Make and initialise the transactional producers of several slots at once, in
        threads (init_transactions is a round trip or more to the transaction coordinator
        per slot; one after another they held a mirror's partition starts back by a tenth
        of a second each). Returns the slots that have their producer now. A slot whose
        init failed is left to txn_producer, which raises the error where a start sees it."""
        todo = sorted({k for k in slots if k not in self.transactional})
        if todo:
            # both ids of every slot at once: 2 x len(todo) inits in parallel
            wanted = [(k, markers) for k in todo for markers in (False, True)]
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(wanted), 2 * SLOTS),
                                                       thread_name_prefix="fence") as pool:
                made = dict(zip(wanted, pool.map(self._try_new_txn_producer, wanted)))
            now = time.monotonic()
            for k in todo:
                fillers, markers = made[(k, False)], made[(k, True)]
                if fillers is not None and markers is not None:
                    self.transactional[k], self.markers[k] = fillers, markers
                    self.fenced_slots.add(k)
                    self._last_used[k] = now
                else:
                    for p in (fillers, markers):
                        if p is not None:
                            p.flush(0)
        return {k for k in slots if k in self.transactional}

    def _try_new_txn_producer(self, which: tuple[int, bool]) -> Producer | None:
        k, markers = which
        try:
            return self._slot_producer(k, markers)
        except Exception:  # noqa: BLE001 - txn_producer asks again and raises it
            log.debug("%s: fencing slot %d", self.label, k, exc_info=True)
            return None

    def _new_txn_producers(self, k: int) -> tuple[Producer, Producer]:
        """The slot's filler and marker producers, each initialised (fenced)."""
        fillers = self._slot_producer(k, False)
        try:
            return fillers, self._slot_producer(k, True)
        except BaseException:
            fillers.flush(0)
            raise

    def _slot_producer(self, k: int, markers: bool) -> Producer:
        if markers:
            # refused records are the marker producer's every write: librdkafka logs each
            # refusal as an error (TXNERR); they are expected, so only fatal ones are logged
            return self._new_txn_producer(self.marker_transactional_id(k), log_level=2)
        return self._new_txn_producer(self.slot_transactional_id(k))

    def _new_txn_producer(self, transactional_id: str, log_level: int = 3) -> Producer:
        p = Producer(_quiet({
            **self.conf,
            "log_level": self.conf.get("log_level", log_level),  # the operator's, if set
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            # A transactional write is produced in one go and flushed at once: lingering only
            # delays it (50 ms made a one-filler transaction take 58 ms, 0 takes 23). A worker
            # killed while a transaction of its is open leaves it to be aborted under the copy
            # (the mirror then fails its tail check): the shorter each transaction, the
            # smaller the share of time a kill can land in one
            "linger.ms": 0,
            "batch.size": 16 * 1024 * 1024,
            "batch.num.messages": 1000000,
            "message.max.bytes": 8 * 1024 * 1024,
            # a transaction left open by a crash is aborted by the broker after this
            "transaction.timeout.ms": 15000,
            "delivery.timeout.ms": min(self.delivery_timeout_ms, 15000),
            "allow.auto.create.topics": False,
        }))
        # fences an older producer of this slot and aborts what it left open
        p.init_transactions(30)
        return p

    def drop_slot(self, k: int, flush: bool = True) -> None:
        """The slot moved to another worker (or its producer failed): its transactional
        producer is closed (the new owner's init_transactions fences it anyway) and made
        and fenced again if the slot is used again."""
        p = self.transactional.pop(k, None)
        if p is not None and flush:
            p.flush(5)
        self.markers.pop(k, None)
        self.fenced_slots.discard(k)
        self._last_used.pop(k, None)

    def close_idle(self, now: float | None = None) -> int:
        """Close the transactional producers not used for IDLE_CLOSE_S; returns how many."""
        now = time.monotonic() if now is None else now
        writing = self._gap_writer.busy_slots() if self._gap_writer is not None else set()
        idle = [k for k in self.transactional
                if now - self._last_used.get(k, now) >= self.IDLE_CLOSE_S and k not in writing]
        for k in idle:
            self.transactional.pop(k).flush(5)
            self.markers.pop(k, None)
        return len(idle)

    def purge(self) -> None:
        """Drop every write not yet confirmed (after a stall, before starting over from
        the destination's log end offset)."""
        self.producer.purge()
        self.producer.flush(5)
        self.pending.clear()
        self._untracked.clear()
        self._tallies.clear()
        self._callbacks.clear()

    def close(self, timeout: float = 10.0) -> None:
        if self._gap_writer is not None:
            self._gap_writer.close()
        self.producer.flush(timeout)
        for p in self.transactional.values():
            p.flush(timeout)
        self.transactional.clear()
        self.markers.clear()
        self.reader.close()


class KafkaPartitionSink:
    def __init__(self, producers: SinkProducers, offsets: OffsetReader, admin: Admin,
                 dest_conf: Mapping[str, object], topic: str, partition: int, compacted: bool):
        self.producers = producers
        self.offset_reader = offsets
        self.admin = admin
        self.dest_conf = dict(dest_conf)
        self.topic = topic
        self.partition = partition
        self.filler_key = FILLER_KEY if compacted else None

    # -- offsets
    def log_end_offset(self) -> int:
        return self.offset_reader.log_end_offset(self.topic, self.partition)

    def log_start_offset(self) -> int:
        return self.offset_reader.log_start_offset(self.topic, self.partition)

    def last_stable_offset(self) -> int:
        return self.offset_reader.last_stable_offset(self.topic, self.partition)

    def close_open_transaction(self, timeout: float = MARKER_WAIT_S) -> None:
        """On start, before the checkpoint is read: fence any earlier copier of this
        partition. Initialising our transactional producer (transactional.id derived from
        link, topic, partition) aborts a transaction a crash left open, and init returns
        only once that abort is complete. This is done even when the destination shows no
        open transaction: a transaction can hold the partition before its first record
        lands, and its abort marker, written later by the broker's timeout, would take an
        offset in the middle of the copy. Then wait until no transaction is open."""
        self.producers.txn_producer(self.topic, self.partition)
        deadline = time.monotonic() + timeout
        while self.last_stable_offset() < self.log_end_offset():
            self.offset_reader.forget(self.topic, self.partition)  # asked again from here on
            if time.monotonic() > deadline:
                raise KafkaOperationError(
                    f"{self.topic}-{self.partition} on the destination has a transaction open that is "
                    f"not ours (last stable offset stays below the log end offset)")
            time.sleep(0.05)
        self._finish_head_deletion()

    def _finish_head_deletion(self, max_scan: int = 200_000) -> None:
        """Fillers are written at the head only to be deleted (DeleteRecords) right after.
        A crash between the two leaves them readable at the log start: finish the job.
        Fillers elsewhere are never at the log start, so nothing else is touched."""
        start, end = self.log_start_offset(), self.log_end_offset()
        if start >= end:
            return
        # read a little at a time: the head is almost always not a filler, and one record
        # tells (fillers are contiguous from the log start)
        cut, limit, window = start, min(end, start + max_scan), 1
        while cut < limit:
            head = self.producers.reader.read(self.topic, self.partition, cut, min(limit, cut + window))
            before = cut
            for r in head:
                if r.offset != cut or not any(k == FILLER_HEADER for k, _ in r.headers):
                    limit = cut  # the first record that is not a filler: done
                    break
                cut = r.offset + 1
            if cut == before:
                break
            window = min(window * 10, 10_000)
        if cut > start:
            log.warning("[%s-%d] finishing an interrupted head deletion: fillers at offsets %d..%d",
                        self.topic, self.partition, start, cut - 1)
            self.delete_records_before(cut)

    # -- fast path
    def produce(self, records: Sequence[Record]) -> int:
        return self.producers.produce(self.topic, self.partition, records)

    def confirmations(self) -> Reports:
        return self.producers.take_confirmations(self.topic, self.partition)

    def flush(self, timeout: float) -> Reports:
        return self.producers.flush(self.topic, self.partition, timeout)

    # -- gaps
    def _wait_log_end(self, at_least: int, timeout: float = MARKER_WAIT_S) -> None:
        # transaction markers are written asynchronously by the coordinator
        deadline = time.monotonic() + timeout
        delay = 0.002
        while self.log_end_offset() < at_least:
            if time.monotonic() > deadline:
                raise KafkaOperationError(f"{self.topic}-{self.partition}: transaction marker not visible "
                                          f"at offset {at_least - 1} within {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _txn_write(self, records: Sequence[Record], commit: bool) -> Confirmation:
        try:
            return self._txn_write_once(records, commit)
        except KafkaException:
            # fenced (another worker owns the slot now), timed out or fatal: this producer
            # is not used again; the copier backs off and a new one is made and fenced
            self.producers.drop_slot(self.producers.slot(self.topic, self.partition), flush=False)
            raise

    def _txn_write_once(self, records: Sequence[Record], commit: bool) -> Confirmation:
        p = self.producers.txn_producer(self.topic, self.partition)
        results: list[Confirmation] = []
        expected = collections.deque(r.offset for r in records)

        def cb(err, msg):
            e = expected.popleft()
            results.append(Confirmation(e, None, err.str()) if err else Confirmation(e, msg.offset()))

        with self.producers.txn_lock(self.producers.slot(self.topic, self.partition)):
            # inside the lock: a gap thread may have held it for seconds
            self.producers.still_writing(self.topic, self.partition)
            p.begin_transaction()
            for r in records:
                p.produce(self.topic, r.value, r.key, partition=self.partition, timestamp=r.timestamp,
                          headers=list(r.headers) if r.headers else None, on_delivery=cb)
            # flush before ending: an abort would otherwise purge records never sent, and the
            # marker would not land where the plan needs it
            p.flush(30)
            if commit:
                p.commit_transaction(30)
            else:
                p.abort_transaction(30)
        bad = [c for c in results if c.error or c.assigned_offset != c.expected_offset]
        first = bad[0] if bad else (results[0] if results else Confirmation(records[0].offset, None, "no report"))
        if not bad:
            self._wait_log_end(records[-1].offset + 2)
        return first

    def commit_one(self, record: Record) -> Confirmation:
        return self._txn_write([record], commit=True)

    def markers_supported(self) -> bool:
        return self.producers.markers_supported(self.admin, self.topic)

    def submit_gap(self, offset: int, fillers: int = 0) -> GapJob:
        """An aborted transaction of `fillers` fillers from `offset` (none: a marker-only
        transaction), written by the slot's gap thread: see SinkProducers.submit_gap."""
        return self.producers.submit_gap(self.topic, self.partition, offset, self.offset_reader,
                                         fillers, self.filler_key)

    def gap_result(self, job: GapJob) -> Confirmation | None:
        return self.producers.gap_result(job)

    def _fillers(self, first_offset: int, count: int) -> list[Record]:
        ts = int(time.time() * 1000)
        header = ((FILLER_HEADER, b"1"),)
        return [Record(first_offset + i, self.filler_key, None, ts, header) for i in range(count)]

    def fill(self, first_offset: int, count: int) -> Confirmation:
        recs = self._fillers(first_offset, count)
        self.produce(recs)
        reports = self.flush(60)
        if reports.mismatches:
            return reports.mismatches[0]
        if reports.count != count or reports.last_expected != first_offset + count - 1:
            return Confirmation(first_offset, None, f"{reports.count} delivery reports for {count} fillers")
        return Confirmation(first_offset, first_offset)

    def delete_records_before(self, offset: int) -> None:
        if self.filler_key is not None:
            with self._deletion_allowed():
                self._delete_records(offset)
        else:
            self._delete_records(offset)

    def _delete_records(self, offset: int, timeout: float = 30.0) -> None:
        what = f"delete records of {self.topic}-{self.partition} before {offset}"
        deadline = time.monotonic() + timeout
        while True:
            futs = self.admin.client.delete_records([TopicPartition(self.topic, self.partition, offset)],
                                                    request_timeout=timeout, operation_timeout=timeout)
            try:
                for f in futs.values():
                    await_result(f, what, self.admin.label, timeout)
                return
            except KafkaOperationError as exc:
                # a cleanup.policy change reaches the partition's leader a moment later
                if "POLICY_VIOLATION" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @contextlib.contextmanager
    def _deletion_allowed(self):
        """Kafka refuses DeleteRecords on compact-only topics. For the moment of the call
        the mirror becomes compact,delete with time and size retention off, so nothing but
        our fillers can go, then its own settings come back. Should the worker die in
        between, the worker's topic config sync puts them back."""
        have = kt.topic_overrides(self.admin, self.topic)
        allow = {"cleanup.policy": "compact,delete", "retention.ms": "-1", "retention.bytes": "-1"}
        kt.alter_topic_configs(self.admin, self.topic, allow)
        try:
            yield
        finally:
            kt.alter_topic_configs(self.admin, self.topic, {k: have[k] for k in allow if k in have},
                                   [k for k in allow if k not in have])

    def read_committed_range(self, start: int, end: int) -> list[Record]:
        return self.producers.reader.read(self.topic, self.partition, start, end)
