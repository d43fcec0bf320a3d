"""confluent-kafka adapters behind the replication interfaces (replication/interfaces.py).

    SourceFeed (one read_committed consumer for every source partition of a worker,
        demultiplexed into per-partition buffers)  -> KafkaPartitionSource (one partition)
    SinkProducers (one idempotent producer for the fast path, one transactional producer
        per partition that shows gaps, created lazily) -> KafkaPartitionSink (one partition)

The adapters are thin: they move bytes and report what Kafka said. Planning and checking
stay in the replication core. Offsets are read with ListOffsets: earliest (log start
offset), latest (high watermark; on the destination, its log end offset) and latest with
read_committed (last stable offset).
"""
from __future__ import annotations

import collections
import contextlib
import logging
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

from kafka_mirrors.errors import KafkaOperationError
from kafka_mirrors.kafka import topics as kt
from kafka_mirrors.kafka.admin import Admin, await_result
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


def _quiet(conf: Mapping[str, object]) -> dict:
    c = dict(conf)
    c.setdefault("log_level", 3)
    return c


# ---------------------------------------------------------------- offsets

class OffsetReader:
    """ListOffsets for one cluster."""

    def __init__(self, admin: AdminClient, label: str, timeout: float = 15.0):
        self.admin = admin
        self.label = label
        self.timeout = timeout

    def offsets(self, tps: Sequence[tuple[str, int]], spec: OffsetSpec,
                isolation: IsolationLevel = IsolationLevel.READ_UNCOMMITTED) -> dict[tuple[str, int], int]:
        req = {TopicPartition(t, p): spec for t, p in tps}
        futures = self.admin.list_offsets(req, isolation_level=isolation, request_timeout=self.timeout)
        out = {}
        for tp, fut in futures.items():
            out[(tp.topic, tp.partition)] = await_result(fut, f"list offsets of {tp.topic}-{tp.partition}",
                                                         self.label, self.timeout).offset
        return out

    def log_start_offset(self, topic: str, partition: int) -> int:
        return self.offsets([(topic, partition)], OffsetSpec.earliest())[(topic, partition)]

    def log_end_offset(self, topic: str, partition: int) -> int:
        return self.offsets([(topic, partition)], OffsetSpec.latest())[(topic, partition)]

    def last_stable_offset(self, topic: str, partition: int) -> int:
        return self.offsets([(topic, partition)], OffsetSpec.latest(),
                            IsolationLevel.READ_COMMITTED)[(topic, partition)]

    def all_offsets(self, topic: str, partition: int) -> SourceOffsets:
        # The log start offset and the last stable offset go out together. The high
        # watermark is asked only after the last stable offset came back: the copier's
        # "nothing open beyond the LSO" (LSO == high watermark) relies on that order.
        tp = TopicPartition(topic, partition)
        what = f"list offsets of {topic}-{partition}"
        first = [self.admin.list_offsets({tp: spec}, isolation_level=iso, request_timeout=self.timeout)
                 for spec, iso in ((OffsetSpec.earliest(), IsolationLevel.READ_UNCOMMITTED),
                                   (OffsetSpec.latest(), IsolationLevel.READ_COMMITTED))]
        start, stable = (await_result(next(iter(f.values())), what, self.label, self.timeout).offset
                         for f in first)
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
    c = Consumer(_quiet({**conf, "group.id": f"kafka-mirrors-read-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"}))
    out: list[Record] = []
    try:
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        return out
                    raise KafkaException(m.error())
                if m.offset() >= end:
                    return out
                out.append(to_record(m))
        raise KafkaOperationError(f"reading {topic}-{partition} [{start}, {end}) did not finish in {timeout:g} s")
    finally:
        c.close()


# ---------------------------------------------------------------- source

@dataclass
class _Buffer:
    # consecutive runs of one partition's messages as the consumer returned them (list
    # slices: no per-message work to buffer them), `count` messages in all
    chunks: collections.deque = field(default_factory=collections.deque)
    count: int = 0
    end_offset: int | None = None  # the last PARTITION_EOF seen after the buffered records
    paused: bool = False


class SourceFeed:
    """One read_committed consumer for all source partitions a worker copies.

    Each partition's records are buffered until its copier asks; a partition whose buffer
    is full is paused so one slow copier cannot make the process hoard memory. A
    PARTITION_EOF event (enable.partition.eof) carries the offset at which read_committed
    saw the end: it tells the copier what follows the record it holds back."""

    MAX_BUFFERED = 20000

    def __init__(self, conf: Mapping[str, object], label: str, batch: int = 5000):
        self.label = label
        self.batch = batch
        self.conf = dict(conf)
        self.consumer = Consumer(_quiet({
            **conf,
            "group.id": f"kafka-mirrors-feed-{uuid.uuid4().hex[:8]}",  # never committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            # A fetch response queues each partition's records as one run; runs of 4 MiB
            # (not 16) keep the partitions interleaved, so one pump() fills the buffers
            # evenly and a buffer rarely reaches MAX_BUFFERED (a pause makes librdkafka
            # drop that partition's prefetched records and fetch them again). Still 4x
            # the Java consumer's default per partition and fetch round trip.
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            "fetch.wait.max.ms": 100,
            # librdkafka stops fetching a partition whose prefetch queue is full and, by
            # default, waits a whole second (fetch.queue.backoff.ms=1000) before looking
            # again: the copy then starves for up to a second at a time
            "fetch.queue.backoff.ms": 10,
        }))
        self.buffers: dict[tuple[str, int], _Buffer] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.buffers[key] = _Buffer()
        self.consumer.incremental_assign([TopicPartition(topic, partition, offset)])

    def remove(self, topic: str, partition: int) -> None:
        if self.buffers.pop((topic, partition), None) is not None:
            self.consumer.incremental_unassign([TopicPartition(topic, partition)])

    def seek(self, topic: str, partition: int, offset: int) -> None:
        # re-assigning is the reliable way to move a partition that may not be fetching yet
        self.remove(topic, partition)
        self.add(topic, partition, offset)

    def pump(self, timeout: float) -> int:
        # consume(n, timeout) waits for n messages or the whole timeout: wait for the
        # first message only, then take what is already there
        first = self.consumer.poll(timeout)
        if first is None:
            return 0
        msgs = [first, *self.consumer.consume(self.batch - 1, 0)]
        # A fetch response's messages of one partition come in a row: find the rows with
        # three calls per message and buffer each row as one slice.
        buffers = self.buffers
        buf = None
        topic, partition, start = None, -1, 0
        for i, m in enumerate(msgs):
            err = m.error()
            if err is None and m.partition() == partition and m.topic() == topic:
                continue
            if buf is not None and i > start:
                buf.chunks.append(msgs[start:i])
                buf.count += i - start
                buf.end_offset = None
            topic, partition, start = m.topic(), m.partition(), i
            buf = buffers.get((topic, partition))
            if err is not None:
                start = i + 1
                if buf is None:
                    continue
                if err.code() == KafkaError._PARTITION_EOF:
                    buf.end_offset = m.offset()
                    continue
                raise KafkaOperationError(f"{self.label}: fetch of {topic}-{partition} failed: {err.str()}")
        if buf is not None and len(msgs) > start:
            buf.chunks.append(msgs[start:])
            buf.count += len(msgs) - start
            buf.end_offset = None
        for key, buf in buffers.items():
            if not buf.paused and buf.count >= self.MAX_BUFFERED:
                # librdkafka drops what it prefetched for a paused partition and fetches it
                # again on resume: rare by design (see max.partition.fetch.bytes)
                log.debug("%s pausing %s-%d: %d records buffered", self.label, key[0], key[1], buf.count)
                self.consumer.pause([TopicPartition(*key)])
                buf.paused = True
        return len(msgs)

    def take(self, topic: str, partition: int, max_records: int, timeout: float) -> FetchResult:
        buf = self.buffers[(topic, partition)]
        if not buf.count and buf.end_offset is None:
            self.pump(timeout)
        chunks = buf.chunks
        msgs: list = []
        while chunks and len(msgs) < max_records:
            chunk = chunks.popleft()
            room = max_records - len(msgs)
            if len(chunk) > room:
                chunks.appendleft(chunk[room:])
                chunk = chunk[:room]
            if msgs:
                msgs += chunk
            else:
                msgs = chunk
        buf.count -= len(msgs)
        recs = MessageRecords(msgs)
        if buf.paused and buf.count < self.MAX_BUFFERED // 2:
            self.consumer.resume([TopicPartition(topic, partition)])
            buf.paused = False
        end = buf.end_offset if not buf.count else None
        hw = None
        if end is not None:
            # the high watermark from the last fetch response: tells the copier whether an
            # open transaction lies beyond the last stable offset
            hw = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1]
            hw = hw if hw >= 0 else None
        return FetchResult(recs, end, hw)

    def close(self) -> None:
        self.consumer.close()


class KafkaPartitionSource:
    def __init__(self, feed: SourceFeed, offsets: OffsetReader, topic: str, partition: int):
        self.feed = feed
        self.offset_reader = offsets
        self.topic = topic
        self.partition = partition

    def offsets(self) -> SourceOffsets:
        return self.offset_reader.all_offsets(self.topic, self.partition)

    def seek(self, offset: int) -> None:
        self.feed.seek(self.topic, self.partition, offset)

    def log_start_offset(self) -> int:
        return self.offset_reader.log_start_offset(self.topic, self.partition)

    def fetch(self, max_records: int, timeout: float) -> FetchResult:
        return self.feed.take(self.topic, self.partition, max_records, timeout)

    def read_range(self, start: int, end: int) -> list[Record]:
        return read_range(self.feed.conf, self.topic, self.partition, start, end)


# ---------------------------------------------------------------- sink

class _Tally:
    """What one partition's delivery callback saw since the copier last asked."""

    __slots__ = ("count", "last_expected", "mismatches")

    def __init__(self):
        self.count = 0
        self.last_expected: int | None = None
        self.mismatches: list[Confirmation] = []


class SinkProducers:
    """The destination-side producers of one worker.

    The fast path shares one idempotent producer (acks=all, ordered, bounded in-flight)
    across partitions; delivery reports are matched to the source offsets they copy in
    order, per partition (an idempotent producer keeps per-partition order), and checked
    as they arrive: the per-partition callback compares each report's offset with the
    source offset its record copies and keeps only a tally and the mismatches. A
    transactional producer, with a transactional.id derived from link, topic and
    partition, is made only for a partition that shows a gap, so a second copier of the
    same partition fences the first."""

    def __init__(self, conf: Mapping[str, object], link: str, label: str,
                 delivery_timeout_ms: int = 30000):
        self.conf = dict(conf)
        self.link = link
        self.label = label
        self.delivery_timeout_ms = delivery_timeout_ms
        self.pending: dict[tuple[str, int], collections.deque] = collections.defaultdict(collections.deque)
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
            "queue.buffering.max.kbytes": 512 * 1024,
            "message.max.bytes": 8 * 1024 * 1024,
            "compression.type": "none",
            "delivery.timeout.ms": delivery_timeout_ms,
        }))
        self.transactional: dict[tuple[str, int], Producer] = {}
        self._callbacks: dict[tuple[str, int], object] = {}

    def _reporter(self, key: tuple[str, int]):
        """The delivery callback of one partition: matches each report, in order, to the
        source offset its record copies and checks it there (no per-record lookups of
        topic and partition, no object kept for a report that matches)."""
        cb = self._callbacks.get(key)
        if cb is None:
            popleft = self.pending[key].popleft
            tally = self._tallies[key] = _Tally()
            mismatches = tally.mismatches

            def cb(err, msg):
                expected = popleft()
                tally.last_expected = expected
                tally.count += 1
                if err is not None:
                    mismatches.append(Confirmation(expected, None, err.str()))
                elif msg.offset() != expected:
                    mismatches.append(Confirmation(expected, msg.offset()))
            self._callbacks[key] = cb
        return cb

    def produce(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        key = (topic, partition)
        append = self.pending[key].append
        produce = self.producer.produce
        cb = self._reporter(key)
        messages = records.messages if type(records) is MessageRecords else None
        if messages is not None:
            # straight from the consumer's messages: no Record per copied record
            for m in messages:
                append(m.offset())
                value, k, ts, headers = m.value(), m.key(), m.timestamp()[1], m.headers()
                try:
                    produce(topic, value, k, partition=partition, timestamp=ts, headers=headers,
                            on_delivery=cb)
                except BufferError:
                    self._produce_when_room(topic, value, k, partition, ts, headers, cb)
        else:
            for r in records:
                append(r.offset)
                headers = list(r.headers) if r.headers else None
                try:
                    produce(topic, r.value, r.key, partition=partition, timestamp=r.timestamp,
                            headers=headers, on_delivery=cb)
                except BufferError:
                    self._produce_when_room(topic, r.value, r.key, partition, r.timestamp, headers, cb)
        self.producer.poll(0)

    def _produce_when_room(self, topic, value, key, partition, timestamp, headers, cb) -> None:
        while True:
            # local queue full: serve delivery reports, then try again
            self.producer.poll(0.05)
            try:
                self.producer.produce(topic, value, key, partition=partition, timestamp=timestamp,
                                      headers=headers, on_delivery=cb)
                return
            except BufferError:
                continue

    def take_confirmations(self, topic: str, partition: int) -> Reports:
        self.producer.poll(0)
        tally = self._tallies.get((topic, partition))
        if tally is None or not tally.count:
            return NO_REPORTS
        out = Reports(tally.count, tally.last_expected, tuple(tally.mismatches))
        tally.count = 0
        tally.mismatches.clear()
        return out

    def flush(self, topic: str, partition: int, timeout: float) -> Reports:
        deadline = time.monotonic() + timeout
        while self.pending[(topic, partition)] and time.monotonic() < deadline:
            self.producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        if self.pending[(topic, partition)]:
            raise KafkaOperationError(
                f"{self.label}: {len(self.pending[(topic, partition)])} writes to {topic}-{partition} "
                f"not confirmed within {timeout:g} s")
        return self.take_confirmations(topic, partition)

    def transactional_id(self, topic: str, partition: int) -> str:
        return f"kafka-mirrors/{self.link}/{topic}/{partition}"

    def txn_producer(self, topic: str, partition: int) -> Producer:
        key = (topic, partition)
        p = self.transactional.get(key)
        if p is None:
            p = Producer(_quiet({
                **self.conf,
                "transactional.id": self.transactional_id(topic, partition),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 50,
                "batch.size": 16 * 1024 * 1024,
                "batch.num.messages": 1000000,
                "message.max.bytes": 8 * 1024 * 1024,
                # a transaction left open by a crash is aborted by the broker after this
                "transaction.timeout.ms": 15000,
                "delivery.timeout.ms": min(self.delivery_timeout_ms, 15000),
            }))
            # fences an older copier of this partition and aborts what it left open
            p.init_transactions(30)
            self.transactional[key] = p
        return p

    def purge(self) -> None:
        """Drop every write not yet confirmed (after a stall, before starting over from
        the destination's log end offset)."""
        self.producer.purge()
        self.producer.flush(5)
        self.pending.clear()
        self._tallies.clear()
        self._callbacks.clear()

    def close(self, timeout: float = 10.0) -> None:
        self.producer.flush(timeout)
        for p in self.transactional.values():
            p.flush(timeout)
        self.transactional.clear()


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
        head = read_range(self.dest_conf, self.topic, self.partition, start, min(end, start + max_scan))
        cut = start
        for r in head:
            if r.offset != cut or not any(k == FILLER_HEADER for k, _ in r.headers):
                break
            cut = r.offset + 1
        if cut > start:
            log.warning("[%s-%d] finishing an interrupted head deletion: fillers at offsets %d..%d",
                        self.topic, self.partition, start, cut - 1)
            self.delete_records_before(cut)

    # -- fast path
    def produce(self, records: Sequence[Record]) -> None:
        self.producers.produce(self.topic, self.partition, records)

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
        p = self.producers.txn_producer(self.topic, self.partition)
        results: list[Confirmation] = []
        expected = collections.deque(r.offset for r in records)

        def cb(err, msg):
            e = expected.popleft()
            results.append(Confirmation(e, None, err.str()) if err else Confirmation(e, msg.offset()))

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

    def _fillers(self, first_offset: int, count: int) -> list[Record]:
        ts = int(time.time() * 1000)
        header = ((FILLER_HEADER, b"1"),)
        return [Record(first_offset + i, self.filler_key, None, ts, header) for i in range(count)]

    def abort_fillers(self, first_offset: int, count: int) -> Confirmation:
        return self._txn_write(self._fillers(first_offset, count), commit=False)

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
        return read_range(self.dest_conf, self.topic, self.partition, start, end)
