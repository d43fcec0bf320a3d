"""Marker-only transactions on a real broker (docs/architecture.md section 3): a gap of
one offset is taken by a transaction whose one record the destination refuses, aborted,
so that its marker alone lands there; and a worker that dies inside one leaves exactly
that marker once the next owner of the slot fences it. Before these, a gap of 1 after a
record r was r alone in a committed transaction, and a kill inside it left r aborted
under the copy: the mirror FAILED (CI8, CI9)."""
from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaException, Producer

from kafka_mirrors.kafka.admin import Admin
from kafka_mirrors.kafka.partition import (
    END_OF_TIME_MS,
    FILLER_HEADER,
    KafkaPartitionSink,
    OffsetReader,
    SinkProducers,
)
from kafka_mirrors.replication.interfaces import Record
from tests import mirrortools as mt
from tests.mirroring import unique

pytestmark = pytest.mark.integration


def sink_for(destination, link: str, topic: str, compacted: bool = False):
    conf = destination.conf()
    producers = SinkProducers(conf, link, f"[{link}]")
    admin = Admin(conf, "destination")
    sink = KafkaPartitionSink(producers, OffsetReader(admin.client, "destination"), admin, conf,
                              topic, 0, compacted)
    return producers, sink


def write(sink: KafkaPartitionSink, offset: int, value: bytes) -> None:
    # a timestamp of now: one from 2023 rolled the segment at the next write and the
    # broker's retention (7 days, checked every 5 s) then deleted it under the test (CI11)
    sink.produce([Record(offset, b"k", value, int(time.time() * 1000) + offset, (("h", b"1"),))])
    reports = sink.flush(30)
    assert reports.count == 1 and not reports.mismatches, reports


def marker(sink: KafkaPartitionSink, offset: int):
    """A marker-only transaction, written by the slot's marker thread; its outcome."""
    job = sink.submit_gap(offset)
    deadline = time.monotonic() + 60
    while (c := sink.gap_result(job)) is None:
        assert time.monotonic() < deadline, "the marker-only transaction did not end within 60 s"
        time.sleep(0.005)
    return c


@pytest.mark.parametrize("compacted", [False, True], ids=["delete", "compact"])
def test_a_marker_only_transaction_takes_exactly_one_offset(destination, compacted):
    topic = destination.create_topic(unique("marker"), partitions=1,
                                     config={"cleanup.policy": "compact"} if compacted else None)
    producers, sink = sink_for(destination, unique("link"), topic, compacted)
    try:
        sink.close_open_transaction()
        assert sink.markers_supported()
        write(sink, 0, b"r0")
        for offset in (1, 2):  # two in a row: the refused records' sequence numbers do not matter
            c = marker(sink, offset)
            assert (c.expected_offset, c.assigned_offset, c.error) == (offset, offset, None)
            assert sink.log_end_offset() == offset + 1
        write(sink, 3, b"r3")  # the fast path after markers: still lands where planned
        assert sink.log_end_offset() == 4
        # nothing a reader sees took offsets 1 and 2, whatever its isolation level
        for isolation in ("read_committed", "read_uncommitted"):
            got = [(s.offset, s.value) for s in mt.snapshot(destination, topic, 0, isolation)]
            assert got == [(0, b"r0"), (3, b"r3")], (isolation, got)
        assert mt.watermarks(destination, topic, 0, "read_committed")[1] == 4  # nothing left open
    finally:
        producers.close()


def test_a_worker_killed_inside_a_marker_only_transaction_leaves_that_marker(destination):
    """The crash, made exactly: a producer with the slot's marker transactional id adds
    the partition (its refused record is sent) and never ends the transaction. The next
    copier's fence aborts it: one marker, at the offset the dead one meant to take."""
    link, topic = unique("link"), destination.create_topic(unique("marker-kill"), partitions=1)
    producers, sink = sink_for(destination, link, topic)
    try:
        sink.close_open_transaction()
        write(sink, 0, b"r0")
        dead = Producer({**destination.conf(), "log_level": 0,
                         "transactional.id": producers.transactional_id(topic, 0) + "/markers"})
        dead.init_transactions(30)  # fences our marker producer: the dead one is its successor
        dead.begin_transaction()
        dead.produce(topic, None, None, partition=0, timestamp=END_OF_TIME_MS, headers=[(FILLER_HEADER, b"marker")])
        dead.flush(30)
        assert sink.log_end_offset() == 1  # refused: nothing appended
        assert mt.watermarks(destination, topic, 0, "read_committed")[1] == 1
    finally:
        producers.close()
    # "the worker died": a new one takes the slot, fences it, reads its checkpoint
    producers, sink = sink_for(destination, link, topic)
    try:
        sink.close_open_transaction()
        assert sink.log_end_offset() == 2  # the abort marker took offset 1, and only it
        assert mt.watermarks(destination, topic, 0, "read_committed")[1] == 2
        with pytest.raises(KafkaException):
            dead.abort_transaction(10)  # fenced: the dead producer can write nothing more
        write(sink, 2, b"r2")
        got = [(s.offset, s.value) for s in mt.snapshot(destination, topic, 0, "read_uncommitted")]
        assert got == [(0, b"r0"), (2, b"r2")]
    finally:
        producers.close()


def test_markers_of_partitions_of_one_slot_share_one_transaction(destination):
    """The slot's marker thread writes every marker of its slot that waits in one
    marker-only transaction: each partition it added gets its own marker, at its offset."""
    from kafka_mirrors.state import slot_of
    topic = destination.create_topic(unique("marker-batch"), partitions=40)
    by_slot: dict[int, list[int]] = {}
    for p in range(40):
        by_slot.setdefault(slot_of(topic, p), []).append(p)
    same = next(ps for ps in by_slot.values() if len(ps) >= 3)[:3]
    conf = destination.conf()
    link = unique("link")
    producers = SinkProducers(conf, link, f"[{link}]")
    admin = Admin(conf, "destination")
    reader = OffsetReader(admin.client, "destination")
    sinks = [KafkaPartitionSink(producers, reader, admin, conf, topic, p, False) for p in same]
    try:
        for s in sinks:
            s.close_open_transaction()
            s.produce([Record(0, b"k", b"r0", int(time.time() * 1000), ())])
            assert s.flush(30).count == 1
        jobs = [s.submit_gap(1) for s in sinks]
        deadline = time.monotonic() + 60
        results = [None] * len(jobs)
        while any(r is None for r in results):
            assert time.monotonic() < deadline
            results = [r or s.gap_result(j) for r, s, j in zip(results, sinks, jobs)]
            time.sleep(0.005)
        assert [(c.assigned_offset, c.error) for c in results] == [(1, None)] * 3
        assert producers._gap_writer.transactions <= 2  # the first alone at most, then the rest together
        for s in sinks:
            assert s.log_end_offset() == 2
            s.produce([Record(2, b"k", b"r2", int(time.time() * 1000), ())])
            reports = s.flush(30)
            assert reports.count == 1 and not reports.mismatches, reports
        for p in same:
            got = [(r.offset, r.value) for r in mt.snapshot(destination, topic, p, "read_uncommitted")]
            assert got == [(0, b"r0"), (2, b"r2")], (p, got)
    finally:
        producers.close()
