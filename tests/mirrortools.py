"""Tools for proving a mirror: make awkward records, produce them fast, read a partition
back exactly as Kafka stores it, and compare two topics record by record.

Used by the integration tests (through the `Cluster` objects of tests/kafkatest.py) and by
bench/. Everything here reads the log as a plain client would: from the log start offset up
to the last stable offset (read_committed) or the high watermark (read_uncommitted).

    records = make_records(2000, seed=7, big_every=500)
    produce_records(source, "orders", records, partitions=6)
    ...  # mirror it
    assert_identical(source, destination, "orders", "orders", partitions=6)
"""
from __future__ import annotations

import hashlib
import random
import time
import uuid
from typing import Callable, Iterable, NamedTuple, Sequence, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

MIB = 1024 * 1024
# The local brokers accept 8 MiB batches (scripts/kafka-local sets message.max.bytes); the
# producer must be allowed as much, or a 1 MiB record plus its batch overhead is refused.
MAX_MESSAGE_BYTES = 8 * MIB
DAY_MS = 24 * 3600 * 1000
T = TypeVar("T")


class Record(NamedTuple):
    """One record to produce. headers is a list of (name, value) in order; value may be None."""
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int


class Stored(NamedTuple):
    """One record as read back from a partition."""
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_type: int  # confluent_kafka.TIMESTAMP_CREATE_TIME / TIMESTAMP_LOG_APPEND_TIME
    timestamp: int


# ---------------------------------------------------------------- records

# Header lists that break naive copiers: none at all, repeated names (order matters), null
# and empty values, a non-ASCII name.
_HEADER_SHAPES: list[list[tuple[str, bytes | None]]] = [
    [],
    [("trace", b"t-1")],
    [("dup", b"first"), ("dup", b"second"), ("other", b"x"), ("dup", b"third")],
    [("null-value", None)],
    [("empty-value", b"")],
    [("h\u00e9", b"\xff\x00\xfe"), ("dup", None), ("dup", b"")],
]


def make_records(n: int, seed: int = 0, big_every: int = 0, now_ms: int | None = None,
                 big_size: int = MIB) -> list[Record]:
    """n records, the same for the same (n, seed, big_every, now_ms).

    Every few records cycle through keys None / b"" / normal / binary, values None / b"" /
    small / a few KiB of random bytes, the header shapes above, and CreateTime timestamps from
    now back to three days old (not in order). With big_every=k, each k-th record (index
    k-1, 2k-1, ...) carries a big_size (1 MiB) value instead; 0 means none, which keeps the
    default cheap.

    Timestamps stay within [now - 3 days, now]: older ones would be deleted by the brokers'
    7-day time retention, and Kafka 4 refuses CreateTime more than an hour in the future.
    now_ms defaults to the wall clock, so pass it when two calls must give equal records.
    """
    if n < 0 or big_every < 0:
        raise ValueError("n and big_every must be >= 0")
    rnd = random.Random(seed)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:
            key = None
        elif k == 1:
            key = b""
        elif k == 2:
            key = f"key-{seed}-{i}".encode()
        else:
            key = rnd.randbytes(rnd.randint(1, 64))

        if big_every and i % big_every == big_every - 1:
            value = rnd.randbytes(big_size)
        else:
            v = i % 5
            if v == 0:
                value = None
            elif v == 1:
                value = b""
            elif v == 2:
                value = f"value-{seed}-{i}".encode()
            else:
                value = rnd.randbytes(rnd.randint(1, 4096))

        headers = list(_HEADER_SHAPES[i % len(_HEADER_SHAPES)])

        t = i % 7
        if t == 0:
            ts = now
        elif t in (1, 2):
            ts = now - rnd.randint(1, 60_000)  # the last minute
        else:
            ts = now - rnd.randint(DAY_MS, 3 * DAY_MS)  # days old
        out.append(Record(key, value, headers, ts))
    return out


# ---------------------------------------------------------------- produce

def _partition_list(partitions: int | Iterable[int]) -> list[int]:
    parts = list(range(partitions)) if isinstance(partitions, int) else list(partitions)
    if not parts:
        raise ValueError("no partitions given")
    return parts


def producer_config(**extra) -> dict:
    """librdkafka settings for bulk loading: idempotent, acks=all, big batches, long linger."""
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 50,
        "batch.size": 4 * MIB,
        "batch.num.messages": 100_000,
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "queue.buffering.max.kbytes": 512 * 1024,
        "queue.buffering.max.messages": 1_000_000,
        "compression.type": "none",
    }
    conf.update(extra)
    return conf


def produce_records(cluster, topic: str, records: Iterable[Record],
                    partitions: int | Iterable[int] = 1, timeout: float = 120.0,
                    **producer_extra) -> dict[int, int]:
    """Produce records round robin over the given partitions (record i to partitions[i % len])
    with an idempotent producer, and check every delivery report. Returns records per
    partition. Raises AssertionError naming the first failed delivery."""
    parts = _partition_list(partitions)
    producer = cluster.producer(**producer_config(**producer_extra))
    counts = {p: 0 for p in parts}
    delivered = {p: 0 for p in parts}
    failures: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            if len(failures) < 5:
                failures.append(f"{topic}-{msg.partition()}: {err}")
        else:
            delivered[msg.partition()] += 1

    for i, r in enumerate(records):
        p = parts[i % len(parts)]
        while True:
            try:
                producer.produce(topic, value=r.value, key=r.key, partition=p,
                                 headers=r.headers or None, timestamp=r.timestamp_ms,
                                 on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0.1)
        counts[p] += 1
        producer.poll(0)
    left = producer.flush(timeout)
    if failures:
        raise AssertionError(f"produce to {topic} failed: " + "; ".join(failures))
    if left:
        raise AssertionError(f"{left} records to {topic} not delivered within {timeout:.0f}s")
    if delivered != counts:
        raise AssertionError(f"delivery reports for {topic} {delivered} do not match produced {counts}")
    return counts


# ---------------------------------------------------------------- read back

def _consumer(cluster, isolation: str) -> Consumer:
    return cluster.consumer(**{
        "group.id": f"mirrortools-{uuid.uuid4().hex[:8]}",
        "isolation.level": isolation,
        "enable.partition.eof": True,
        "enable.auto.commit": False,
        "fetch.max.bytes": 64 * MIB,
        "max.partition.fetch.bytes": 16 * MIB,
        "receive.message.max.bytes": 80 * MIB,
        "queued.max.messages.kbytes": 256 * 1024,
    })


def _retrying(call: Callable[[], T], attempts: int = 30, interval: float = 0.5) -> T:
    """call(), again after a retriable Kafka error (NOT_LEADER_FOR_PARTITION while a new
    partition's leader is being elected, a coordinator still loading) up to `attempts` times."""
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as e:
            err = e.args[0]
            # get_watermark_offsets reports a leader being elected without the retriable flag
            if not (err.retriable() or err.code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                                      KafkaError.LEADER_NOT_AVAILABLE)) \
                    or attempt == attempts - 1:
                raise
            time.sleep(interval)
    raise AssertionError("unreachable")


def watermarks(cluster, topic: str, partition: int, isolation: str = "read_uncommitted") -> tuple[int, int]:
    """(log start offset, end) of one partition; end is the high watermark, or the last
    stable offset for isolation="read_committed"."""
    c = cluster.consumer(**{"isolation.level": isolation})
    try:
        return _retrying(lambda: c.get_watermark_offsets(TopicPartition(topic, partition), timeout=15,
                                                         cached=False))
    finally:
        c.close()


def log_end_offsets(cluster, topic: str, partitions: int | Iterable[int] | None = None) -> dict[int, int]:
    """High watermark of every partition (all of the topic's when partitions is None)."""
    c = cluster.consumer()
    try:
        if partitions is None:
            md = c.list_topics(topic, timeout=15).topics[topic]
            if md.error is not None:
                raise KafkaException(md.error)
            partitions = sorted(md.partitions)
        return {p: _retrying(lambda p=p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15,
                                                                  cached=False))[1]
                for p in _partition_list(partitions)}
    finally:
        c.close()


def snapshot(cluster, topic: str, partition: int, isolation: str = "read_committed",
             timeout: float = 120.0) -> list[Stored]:
    """Every record of one partition from its log start offset to its end (last stable
    offset for read_committed, high watermark for read_uncommitted), in offset order."""
    c = _consumer(cluster, isolation)
    try:
        tp = TopicPartition(topic, partition)
        low, high = c.get_watermark_offsets(tp, timeout=15, cached=False)
        if high <= low:
            return []
        c.assign([TopicPartition(topic, partition, low)])
        out: list[Stored] = []
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic}-{partition} did not reach its end within "
                                     f"{timeout:.0f}s (read {len(out)} records, last offset "
                                     f"{out[-1].offset if out else None})")
            # poll() returns at the first record or event, consume(timeout=0) drains what is
            # already fetched: consume(n, t) alone would wait for n records at the end
            first = c.poll(1.0)
            batch = [first, *c.consume(num_messages=10_000, timeout=0)] if first is not None else []
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return out
                    raise KafkaException(err)
                ts_type, ts = m.timestamp()
                out.append(Stored(m.offset(), m.key(), m.value(), list(m.headers() or []), ts_type, ts))
    finally:
        c.close()


# ---------------------------------------------------------------- compare

def _show(b: bytes | None) -> str:
    if b is None:
        return "None"
    if len(b) <= 32:
        return repr(b)
    return f"<{len(b)} bytes sha1 {hashlib.sha1(b).hexdigest()[:12]}>"


def _show_headers(h: list) -> str:
    return "[" + ", ".join(f"({n!r}, {_show(v)})" for n, v in h) + "]"


def _record_diff(a: Stored, b: Stored) -> list[str]:
    what = []
    if a.key != b.key:
        what.append(f"key {_show(a.key)} != {_show(b.key)}")
    if a.value != b.value:
        what.append(f"value {_show(a.value)} != {_show(b.value)}")
    if a.headers != b.headers:
        what.append(f"headers {_show_headers(a.headers)} != {_show_headers(b.headers)}")
    if a.timestamp != b.timestamp:
        what.append(f"timestamp {a.timestamp} != {b.timestamp}")
    return what


def compare_snapshots(partition: int, source: Sequence[Stored], destination: Sequence[Stored],
                      limit: int = 5) -> tuple[list[str], int]:
    """Differences between two snapshots of one partition, as (first `limit` messages,
    total count). Records are matched by offset; timestamp types are not compared because
    a mirror topic is CreateTime even when its source is LogAppendTime."""
    msgs: list[str] = []
    total = 0

    def add(msg: str) -> None:
        nonlocal total
        total += 1
        if len(msgs) < limit:
            msgs.append(f"partition {partition} {msg}")

    i = j = 0
    while i < len(source) or j < len(destination):
        a = source[i] if i < len(source) else None
        b = destination[j] if j < len(destination) else None
        if b is None or (a is not None and a.offset < b.offset):
            add(f"offset {a.offset}: on the source only")
            i += 1
        elif a is None or b.offset < a.offset:
            add(f"offset {b.offset}: on the destination only")
            j += 1
        else:
            what = _record_diff(a, b)
            if what:
                add(f"offset {a.offset}: " + "; ".join(what))
            i += 1
            j += 1
    return msgs, total


def assert_identical(source, destination, src_topic: str, dst_topic: str,
                     partitions: int | Iterable[int] | None = None,
                     isolation: str = "read_committed", same_log_start: bool = True) -> None:
    """Assert that every partition of dst_topic holds the records of src_topic at the same
    offsets (key, value, headers in order, timestamp) and has the same log start offset.
    partitions: a count, a list, or None for all of the source topic's. The AssertionError
    names partition, offset and what differs, for the first 5 differences."""
    if partitions is None:
        partitions = sorted(log_end_offsets(source, src_topic))
    msgs: list[str] = []
    total = 0
    for p in _partition_list(partitions):
        src_start = watermarks(source, src_topic, p)[0]
        dst_start = watermarks(destination, dst_topic, p)[0]
        # A source whose first offset holds nothing visible (an aborted record, a marker)
        # may leave the mirror's log start just past it: the one offset cannot be used up
        # invisibly without a record before it (DESIGN.md section 4). same_log_start=False
        # accepts that, as long as the destination does not start before the source.
        if (src_start != dst_start) if same_log_start else (dst_start < src_start):
            total += 1
            if len(msgs) < 5:
                msgs.append(f"partition {p}: log start offset {src_start} on the source, "
                            f"{dst_start} on the destination")
        found, n = compare_snapshots(p, snapshot(source, src_topic, p, isolation),
                                     snapshot(destination, dst_topic, p, isolation), limit=5 - len(msgs))
        msgs.extend(found)
        total += n
    if total:
        more = f" (showing {len(msgs)})" if total > len(msgs) else ""
        raise AssertionError(f"{dst_topic} differs from {src_topic} in {total} places{more}:\n  "
                             + "\n  ".join(msgs))


# ---------------------------------------------------------------- waiting

def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Call predicate until it returns something truthy and return that; AssertionError
    after timeout seconds, naming `what`. Exceptions from predicate propagate."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {result!r})")
        time.sleep(interval)
