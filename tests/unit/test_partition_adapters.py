"""The fast path of the confluent-kafka adapters (kafka/partition.py) with fake clients: the
source feed buffers each partition's messages as slices and hands them on as
MessageRecords; the sink produces straight from the messages and checks every delivery
report in its per-partition callback against the source offset the record copies."""
from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError

from kafka_mirrors.errors import KafkaOperationError
from kafka_mirrors.kafka.partition import MessageRecords, SinkProducers, SourceFeed
from kafka_mirrors.replication.interfaces import Confirmation, Record, Reports


class Err:
    def __init__(self, code: int, text: str = "error"):
        self._code, self._text = code, text

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text


class Msg:
    """What confluent-kafka's Message offers the adapters."""

    def __init__(self, topic, partition, offset, key=b"k", value=b"v", ts=7, headers=None, err=None):
        self._t, self._p, self._o = topic, partition, offset
        self._k, self._v, self._ts, self._h, self._e = key, value, ts, headers, err

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def timestamp(self):
        return (1, self._ts)

    def headers(self):
        return self._h

    def error(self):
        return self._e


def eof(topic, partition, offset):
    return Msg(topic, partition, offset, err=Err(KafkaError._PARTITION_EOF))


class FakeConsumer:
    def __init__(self):
        self.queue: list[Msg] = []
        self.paused: list = []
        self.resumed: list = []
        self.high_watermarks: dict = {}  # (topic, partition) -> the last fetch response's

    def incremental_assign(self, tps):
        pass

    def incremental_unassign(self, tps):
        pass

    def poll(self, timeout):
        return self.queue.pop(0) if self.queue else None

    def consume(self, n, timeout):
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def pause(self, tps):
        self.paused += [(tp.topic, tp.partition) for tp in tps]

    def resume(self, tps):
        self.resumed += [(tp.topic, tp.partition) for tp in tps]

    def get_watermark_offsets(self, tp, cached=True):
        return (0, self.high_watermarks.get((tp.topic, tp.partition), 1000))


def feed(batch: int = 5000) -> tuple[SourceFeed, FakeConsumer]:
    f = SourceFeed.__new__(SourceFeed)
    f.label, f.batch, f.conf, f.buffers, f.buffered_bytes, f.ready = "[test]", batch, {}, {}, 0, set()
    f.consumer = FakeConsumer()
    return f, f.consumer


def offsets(result) -> list[int]:
    return [r.offset for r in result.records]


def test_feed_splits_interleaved_partitions_and_keeps_eof_positions():
    f, c = feed()
    f.add("a", 0, 0)
    f.add("a", 1, 0)
    f.add("b", 0, 0)
    c.queue = [Msg("a", 0, 0), Msg("a", 0, 1), Msg("b", 0, 5), Msg("a", 1, 3), Msg("a", 0, 2),
               eof("a", 0, 3), Msg("x", 0, 9),  # a partition this feed does not copy: dropped
               Msg("b", 0, 6), eof("b", 0, 7), Msg("a", 1, 4), eof("a", 1, 5), Msg("a", 1, 5)]
    assert f.pump(0) == 12

    a0 = f.take("a", 0, 100, 0)
    assert offsets(a0) == [0, 1, 2] and a0.end_offset == 3 and a0.high_watermark == 1000
    b0 = f.take("b", 0, 100, 0)
    assert offsets(b0) == [5, 6] and b0.end_offset == 7
    # a record after the end-of-partition event: the end is not known any more
    a1 = f.take("a", 1, 100, 0)
    assert offsets(a1) == [3, 4, 5] and a1.end_offset is None
    assert all(isinstance(r.records, MessageRecords) for r in (a0, b0, a1))


def test_a_fetch_response_ending_right_after_its_last_record_proves_the_end_without_an_eof():
    # issue 11: the source died after the response that brought the last records, before
    # the next (empty) fetch that would carry PARTITION_EOF; the held record must still go
    f, c = feed()
    f.add("a", 0, 0)
    f.add("a", 1, 0)
    c.high_watermarks = {("a", 0): 3, ("a", 1): 9}
    c.queue = [Msg("a", 0, 0), Msg("a", 0, 1), Msg("a", 0, 2), Msg("a", 1, 4)]
    f.pump(0)
    a0 = f.take("a", 0, 100, 0)
    assert offsets(a0) == [0, 1, 2]
    again = f.take("a", 0, 100, 0)  # the copier's next, idle, step
    assert offsets(again) == [] and again.end_offset == 3 and again.high_watermark == 3
    # more lies beyond the newest record (or an open transaction): nothing is proven
    a1 = f.take("a", 1, 100, 0)
    assert offsets(a1) == [4] and a1.end_offset is None
    assert f.take("a", 1, 100, 0).end_offset is None
    # a partition with no record seen since it was assigned proves nothing either
    f.add("a", 2, 0)
    c.high_watermarks[("a", 2)] = 1
    assert f.take("a", 2, 100, 0).end_offset is None


def test_feed_take_splits_slices_at_max_records_and_pauses_a_full_partition():
    f, c = feed()
    f.MAX_BUFFERED = 10
    f.add("a", 0, 0)
    c.queue = [Msg("a", 0, i) for i in range(12)]
    f.pump(0)
    assert c.paused == [("a", 0)]
    first = f.take("a", 0, 4, 0)
    assert offsets(first) == [0, 1, 2, 3] and first.end_offset is None
    assert c.resumed == []  # 8 still buffered: not under half of MAX_BUFFERED
    rest = f.take("a", 0, 100, 0)
    assert offsets(rest) == list(range(4, 12))
    assert c.resumed == [("a", 0)]
    assert f.buffers[("a", 0)].count == 0


def test_feed_raises_on_a_fetch_error_other_than_eof():
    f, c = feed()
    f.add("a", 0, 0)
    c.queue = [Msg("a", 0, 0), Msg("a", 0, 1, err=Err(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))]
    f.pump(0)  # the error is kept for the partition's next take
    with pytest.raises(Exception, match="fetch of a-0 failed: denied"):
        f.take("a", 0, 10, 0)


def test_message_records_look_like_records_only_where_asked():
    msgs = [Msg("a", 0, 10 + i, key=None if i == 1 else b"k%d" % i, value=b"" if i == 2 else b"v",
                ts=1000 + i, headers=[("h", None), ("h", b"1")] if i == 0 else None) for i in range(4)]
    recs = MessageRecords(msgs)
    assert len(recs) == 4
    assert recs[0] == Record(10, b"k0", b"v", 1000, (("h", None), ("h", b"1")))
    assert recs[1].key is None and recs[2].value == b"" and recs[3].headers == ()
    middle = recs[1:3]
    assert isinstance(middle, MessageRecords) and middle.messages == msgs[1:3]
    assert [r.offset for r in recs] == [10, 11, 12, 13]


class FakeProducer:
    def __init__(self, room: int = 1 << 30):
        self.produced: list[tuple] = []
        self.callbacks: list = []
        self.room = room
        self.polls = 0

    # confluent-kafka's own parameter order (Producer.produce's keyword list)
    def produce(self, topic, value=None, key=None, partition=-1, callback=None, on_delivery=None,
                timestamp=0, headers=None):
        on_delivery = callback or on_delivery
        if self.room <= 0:
            raise BufferError("queue full")
        self.room -= 1
        self.produced.append((topic, partition, key, value, timestamp, headers))
        self.callbacks.append(on_delivery)

    def poll(self, timeout):
        self.polls += 1
        self.room = 1 << 30
        return 0


class Delivered:
    def __init__(self, offset):
        self._o = offset

    def offset(self):
        return self._o


def producers(fake: FakeProducer) -> SinkProducers:
    s = SinkProducers.__new__(SinkProducers)
    s.conf, s.link, s.label, s.delivery_timeout_ms = {}, "l", "[l]", 30000
    s.pending = __import__("collections").defaultdict(__import__("collections").deque)
    s._tallies, s._callbacks, s.transactional, s._untracked = {}, {}, {}, {}
    s.markers, s._markers_ok = {}, {}
    s._gap_jobs, s._gap_writer, s._last_used, s._txn_locks = {}, None, {}, {}
    s.producer = fake
    return s


def test_sink_reports_a_run_by_its_last_record_checked_against_its_source_offset():
    fake = FakeProducer(room=2)  # the third produce finds the queue full once
    sink = producers(fake)
    msgs = [Msg("src", 3, 40 + i, key=b"k", value=b"v%d" % i, ts=99, headers=[("h", b"x")]) for i in range(4)]
    sink.produce("mirror", 3, MessageRecords(msgs))
    assert [p[3] for p in fake.produced] == [b"v0", b"v1", b"v2", b"v3"]
    assert fake.produced[0] == ("mirror", 3, b"k", b"v0", 99, [("h", b"x")])
    # one delivery callback, on the run's last record (also through the full-queue path)
    assert fake.callbacks[:3] == [None, None, None] and fake.callbacks[3] is not None
    assert sink.in_flight("mirror", 3) == 1
    assert sink.take_confirmations("mirror", 3) == Reports(0)

    fake.callbacks[3](None, Delivered(43))
    assert sink.take_confirmations("mirror", 3) == Reports(4, 43, (), 4 * 3)  # keys and values
    assert sink.in_flight("mirror", 3) == 0

    # a refused write inside the next run: the rest slid down, the last landed at 46 not 47
    sink.produce("mirror", 3, MessageRecords([Msg("src", 3, 44 + i) for i in range(4)]))
    fake.callbacks[-1](None, Delivered(46))
    # the last record's own write failed
    sink.produce("mirror", 3, MessageRecords([Msg("src", 3, 48 + i) for i in range(2)]))
    fake.callbacks[-1](Err(KafkaError.MSG_SIZE_TOO_LARGE, "too large"), None)
    assert sink.take_confirmations("mirror", 3) == Reports(
        6, 49, (Confirmation(47, 46), Confirmation(49, None, "too large")), 6 * 2)
    assert sink.take_confirmations("mirror", 3).count == 0


def test_sink_reports_each_record_of_what_is_not_one_run():
    fake = FakeProducer()
    sink = producers(fake)
    sink.produce("mirror", 0, [Record(5, b"k", b"a", 1, ()), Record(7, b"k", b"b", 1, ())])
    assert all(cb is not None for cb in fake.callbacks) and len(fake.callbacks) == 2
    fake.callbacks[0](None, Delivered(5))
    fake.callbacks[1](None, Delivered(7))
    assert sink.take_confirmations("mirror", 0) == Reports(2, 7, (), 4)


def test_a_produce_that_raises_inside_a_run_keeps_the_partition_in_flight_until_the_queue_empties():
    from confluent_kafka import KafkaException

    class Refusing(FakeProducer):
        queued = 0

        def produce(self, topic, value=None, *args):
            if value == b"bad":
                raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
            self.queued += 1
            super().produce(topic, value, *args)

        def __len__(self):
            return self.queued

    fake = Refusing()
    sink = producers(fake)
    run = [Record(0, None, b"ok", 1, ()), Record(1, None, b"ok", 1, ()), Record(2, None, b"bad", 1, ())]
    with pytest.raises(KafkaException):
        sink.produce("mirror", 0, run)
    assert fake.callbacks == [None, None]  # queued, and no callback will ever report them
    assert sink.in_flight("mirror", 0) == 1  # so a stop of this mirror still waits
    fake.queued = 0  # librdkafka's queue emptied: delivered or failed, they are done
    assert sink.in_flight("mirror", 0) == 0
    with pytest.raises(KafkaException):  # refused at the first record: nothing queued
        sink.produce("mirror", 0, [Record(3, None, b"bad", 1, ())])
    assert sink.in_flight("mirror", 0) == 0


def test_sink_record_path_for_fillers_and_held_records():
    fake = FakeProducer()
    sink = producers(fake)
    sink.produce("mirror", 0, (Record(5, None, None, 1, (("kafka-mirrors.filler", b"1"),)),))
    sink.produce("mirror", 0, [Record(6, b"", b"v", 2, ())])
    assert fake.produced == [("mirror", 0, None, None, 1, [("kafka-mirrors.filler", b"1")]),
                             ("mirror", 0, b"", b"v", 2, None)]
    for cb, offset in zip(fake.callbacks, (5, 6)):
        cb(None, Delivered(offset))
    assert sink.take_confirmations("mirror", 0) == Reports(2, 6, (), 1)


def test_take_is_bounded_in_bytes_and_the_feed_stops_pumping_when_full():
    f, c = feed()
    f.add("a", 0, 0)
    big = b"x" * (1024 * 1024)
    c.queue = [Msg("a", 0, i, key=None, value=big) for i in range(40)]
    assert f.pump(0) == 40
    assert f.buffered_bytes >= 40 * len(big)
    got = f.take("a", 0, 5000, 0, max_bytes=8 * 1024 * 1024)
    assert 1 <= len(got.records) <= 8  # not 40: a step hands the producer a bounded amount
    assert offsets(got) == list(range(len(got.records)))
    rest = f.take("a", 0, 5000, 0, max_bytes=1)  # one record at least
    assert offsets(rest) == [len(got.records)]
    f.MAX_BUFFERED_BYTES = f.buffered_bytes  # as full as it may be
    c.queue = [Msg("a", 0, 40)]
    assert f.pump(0) == 0 and c.queue  # nothing taken from the consumer


def test_a_fetch_error_is_charged_to_its_partition_not_to_the_one_that_pumped():
    f, c = feed()
    f.add("a", 0, 0)
    f.add("b", 0, 0)
    c.queue = [Msg("a", 0, 0), Msg("b", 0, 0, err=Err(KafkaError.OFFSET_OUT_OF_RANGE, "out of range"))]
    f.pump(0)
    assert offsets(f.take("a", 0, 10, 0)) == [0]  # a is served
    assert f.has_data("b", 0)
    with pytest.raises(KafkaOperationError, match="b-0"):
        f.take("b", 0, 10, 0)
    assert not f.has_data("b", 0)


def test_two_tasks_of_one_source_partition_get_two_feeds():
    from kafka_mirrors.kafka.partition import KafkaPartitionSource, SourceFeeds
    feeds = SourceFeeds({}, "[t]")
    made = []

    def new():
        fd, _ = feed()
        feeds.feeds.append(fd)
        made.append(fd)
        return fd
    feeds._new = new
    a = KafkaPartitionSource(feeds, None, "t", 0)
    b = KafkaPartitionSource(feeds, None, "t", 0)
    other = KafkaPartitionSource(feeds, None, "t", 1)
    a.seek(0)
    b.seek(142)
    other.seek(7)
    assert a.feed is not b.feed and len(made) == 2
    assert other.feed is made[0]  # a free feed is reused
    b.release()
    assert ("t", 0) not in made[1].buffers and ("t", 0) in made[0].buffers


def test_transactional_slots_are_few_and_stable():
    ids = {SinkProducers.slot(f"topic-{t}", p) for t in range(100) for p in range(100)}
    assert ids == set(range(SinkProducers.SLOTS))
    assert SinkProducers.slot("orders", 3) == SinkProducers.slot("orders", 3)
    s = producers(FakeProducer())
    assert s.transactional_id("orders", 3) == f"kafka-mirrors/l/slot-{SinkProducers.slot('orders', 3)}"


def test_forget_detaches_reports_still_to_come_from_a_new_copier_of_the_partition():
    fake = FakeProducer()
    sink = producers(fake)
    sink.produce("mirror", 0, [Record(10, b"k", b"v", 1, ())])
    old_cb = fake.callbacks[0]
    assert sink.in_flight("mirror", 0) == 1
    sink.forget("mirror", 0)
    assert sink.in_flight("mirror", 0) == 0
    sink.produce("mirror", 0, [Record(0, b"k", b"v", 1, ())])  # a new copier, from offset 0
    old_cb(None, Delivered(10))  # the old write's report comes late
    assert sink.take_confirmations("mirror", 0).count == 0
    fake.callbacks[1](None, Delivered(0))
    assert sink.take_confirmations("mirror", 0) == Reports(1, 0, (), 2)


class FakeOffsetsAdmin:
    """list_offsets answering each partition with the errors queued for it, then an offset."""

    def __init__(self, errors: dict, offset: int = 20):
        self.errors, self.offset, self.calls = errors, offset, 0

    def list_offsets(self, req, isolation_level=None, request_timeout=None):
        import concurrent.futures
        from confluent_kafka import KafkaException
        self.calls += 1
        out = {}
        for tp in req:
            f = concurrent.futures.Future()
            queued = self.errors.get((tp.topic, tp.partition)) or []
            if queued:
                f.set_exception(KafkaException(KafkaError(queued.pop(0))))
            else:
                f.set_result(type("Info", (), {"offset": self.offset})())
            out[tp] = f
        return out


def test_offsets_are_asked_again_after_a_broker_behind_on_metadata(monkeypatch):
    # under load a broker answered UNKNOWN_LEADER_EPOCH; the 10,000-partition benchmark
    # then restarted whole mirrors, over and over
    from kafka_mirrors.kafka import partition as kp
    monkeypatch.setattr(kp, "RETRY_OFFSETS_S", 0.0)
    admin = FakeOffsetsAdmin({("a", 0): [KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.NOT_LEADER_FOR_PARTITION]})
    reader = kp.OffsetReader(admin, "source cluster x", timeout=5.0)
    assert reader.log_end_offset("a", 0) == 20 and admin.calls == 3
    offsets = reader.all_offsets("a", 1)
    assert (offsets.log_start_offset, offsets.last_stable_offset, offsets.high_watermark) == (20, 20, 20)


def test_offsets_errors_that_are_not_transient_fail_at_once():
    from kafka_mirrors.errors import KafkaMirrorsError
    from kafka_mirrors.kafka import partition as kp
    admin = FakeOffsetsAdmin({("a", 0): [KafkaError.TOPIC_AUTHORIZATION_FAILED]})
    reader = kp.OffsetReader(admin, "source cluster x", timeout=5.0)
    with pytest.raises(KafkaMirrorsError, match="a-0"):
        reader.log_end_offset("a", 0)
    assert admin.calls == 1


def test_an_answer_without_an_offset_is_no_answer_never_an_offset(monkeypatch):
    # found by the fault suite: during a network partition ListOffsets came back with
    # librdkafka's -1001 (OFFSET_INVALID), and a starting copier failed its mirror as if
    # the source had been truncated to "-1001"
    from kafka_mirrors.errors import KafkaUnavailableError
    from kafka_mirrors.kafka import partition as kp
    monkeypatch.setattr(kp, "RETRY_OFFSETS_S", 0.0)
    monkeypatch.setattr(kp, "RETRY_OFFSETS_FOR_S", 0.05)
    admin = FakeOffsetsAdmin({}, offset=-1001)
    reader = kp.OffsetReader(admin, "source cluster x", timeout=5.0)
    with pytest.raises(KafkaUnavailableError, match="a-0: no offset in the answer"):
        reader.log_end_offset("a", 0)
    assert admin.calls > 1  # asked again first, within the short retry window
    with pytest.raises(KafkaUnavailableError, match="no offset"):
        reader.all_offsets("a", 0)


def test_offsets_read_ahead_answer_the_starts_once_then_the_cluster_again(monkeypatch):
    # copier starts read their offsets a request per partition and kind; read ahead asks
    # for a whole list at once, and each start's reads come from there until forgotten
    from kafka_mirrors.kafka import partition as kp
    admin = FakeOffsetsAdmin({("a", 1): [KafkaError.TOPIC_AUTHORIZATION_FAILED]}, offset=7)
    reader = kp.OffsetReader(admin, "source cluster x", timeout=5.0)
    reader.read_ahead([("a", 0), ("a", 1), ("a", 2)])
    assert admin.calls == 3  # earliest, stable, latest: one request each for all partitions
    admin.offset = 9  # what the cluster would say now
    assert reader.has_read_ahead("a", 0) and reader.has_read_ahead("a", 1)
    o = reader.all_offsets("a", 0)
    assert (o.log_start_offset, o.last_stable_offset, o.high_watermark) == (7, 7, 7)
    assert reader.log_end_offset("a", 2) == 7 and reader.last_stable_offset("a", 2) == 7
    assert admin.calls == 3
    # the partition whose answer was an error asks alone (and sees the cluster's answer)
    assert reader.log_start_offset("a", 1) == 9 and admin.calls == 4
    reader.forget("a", 0)
    assert not reader.has_read_ahead("a", 0)
    assert reader.log_end_offset("a", 0) == 9 and admin.calls == 5
    # and nothing read ahead outlives READ_AHEAD_TTL_S
    monkeypatch.setattr(kp, "READ_AHEAD_TTL_S", 0.0)
    assert not reader.has_read_ahead("a", 2)
    assert reader.log_end_offset("a", 2) == 9


def test_read_ahead_without_a_last_stable_offset_keeps_no_high_watermark():
    # all_offsets relies on the last stable offset being read before the high watermark;
    # a high watermark read ahead without it must not be paired with a later one
    from kafka_mirrors.kafka import partition as kp

    class NoStable(FakeOffsetsAdmin):
        def list_offsets(self, req, isolation_level=None, request_timeout=None):
            from confluent_kafka import IsolationLevel
            if isolation_level == IsolationLevel.READ_COMMITTED:
                raise RuntimeError("broker gone")
            return super().list_offsets(req, isolation_level, request_timeout)
    admin = NoStable({}, offset=5)
    reader = kp.OffsetReader(admin, "destination x", timeout=5.0)
    reader.read_ahead([("m", 0)])  # the failure is no failure of the start: it asks alone
    assert reader.has_read_ahead("m", 0)
    calls = admin.calls
    assert reader.log_end_offset("m", 0) == 5 and admin.calls == calls + 1


def test_the_ready_set_is_exactly_the_partitions_with_something_for_their_copier():
    # the copy plane steps the feed's ready partitions (and its busy tasks) between full
    # looks at every task: one missing from the set would copy only every FULL_SCAN_S
    from hypothesis import given, settings, strategies as hs
    keys = [("a", 0), ("a", 1), ("b", 0)]
    op = hs.one_of(
        hs.tuples(hs.just("msgs"), hs.lists(hs.tuples(hs.sampled_from(keys + [("x", 0)]),
                                                      hs.sampled_from(["rec", "eof", "err"])), max_size=8)),
        hs.tuples(hs.just("take"), hs.sampled_from(keys), hs.integers(1, 3)),
        hs.tuples(hs.just("seek"), hs.sampled_from(keys)),
    )

    @settings(max_examples=300, deadline=None)
    @given(hs.lists(op, max_size=25))
    def run(ops):
        f, c = feed()
        for k in keys:
            f.add(*k, 0)
        nxt = {k: 0 for k in keys + [("x", 0)]}
        for o in ops:
            if o[0] == "msgs":
                c.queue = []
                for k, kind in o[1]:
                    if kind == "rec":
                        c.queue.append(Msg(*k, nxt[k]))
                        nxt[k] += 1
                    elif kind == "eof":
                        c.queue.append(eof(*k, nxt[k]))
                    else:
                        c.queue.append(Msg(*k, nxt[k], err=Err(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")))
                f.pump(0)
            elif o[0] == "take":
                try:
                    f.take(o[1][0], o[1][1], o[2], 0)
                except KafkaOperationError:
                    pass
            else:
                f.seek(*o[1], nxt[o[1]])
            assert f.ready == {k for k in f.buffers if f.has_data(*k)}
    run()


class _Entry:
    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize("configs, expected", [
    ({"message.timestamp.type": "CreateTime", "message.timestamp.after.max.ms": "3600000"}, True),
    # Kafka's default before 4.0: a timestamp at the end of time is accepted, so no markers
    ({"message.timestamp.type": "CreateTime", "message.timestamp.after.max.ms": str((1 << 63) - 1)}, False),
    ({"message.timestamp.type": "LogAppendTime", "message.timestamp.after.max.ms": "3600000"}, False),
    ({"message.timestamp.type": "CreateTime"}, False),  # a broker without the config
    # a compacted topic refuses the record's null key, whatever its timestamps
    ({"cleanup.policy": "compact", "message.timestamp.type": "CreateTime",
      "message.timestamp.after.max.ms": str((1 << 63) - 1)}, True),
    ({"cleanup.policy": "compact,delete"}, True),
    ({"cleanup.policy": "delete", "message.timestamp.type": "CreateTime",
      "message.timestamp.after.max.ms": str((1 << 63) - 1)}, False),
])
def test_markers_only_where_the_destination_surely_refuses_their_record(monkeypatch, configs, expected):
    import kafka_mirrors.kafka.partition as kp
    asked = []

    def describe(admin, topic):
        asked.append(topic)
        return {k: _Entry(v) for k, v in configs.items()}
    monkeypatch.setattr(kp.kt, "describe_topic_configs", describe)
    s = producers(FakeProducer())
    assert s.markers_supported(None, "t") is expected
    assert s.markers_supported(None, "t") is expected
    assert asked == ["t"]  # kept for MARKERS_RECHECK_S


def test_markers_when_the_configs_cannot_be_read(monkeypatch):
    """None known yet: raise (the copier backs off); known: the last answer, asked again
    in 5 s; an ACL refusal: no markers."""
    import kafka_mirrors.kafka.partition as kp
    from kafka_mirrors.errors import KafkaOperationError
    answers: list = [KafkaOperationError("describing the configs of topic 't': timed out")]

    def describe(admin, topic):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a
    monkeypatch.setattr(kp.kt, "describe_topic_configs", describe)
    now = [1000.0]
    monkeypatch.setattr(kp.time, "monotonic", lambda: now[0])
    s = producers(FakeProducer())
    with pytest.raises(KafkaOperationError, match="reading the configs of mirror topic t"):
        s.markers_supported(None, "t")
    answers.append({"cleanup.policy": _Entry("compact")})
    assert s.markers_supported(None, "t") is True
    now[0] += kp.MARKERS_RECHECK_S
    answers.append(KafkaOperationError("timed out"))
    assert s.markers_supported(None, "t") is True  # the last answer
    now[0] += 4.0
    assert s.markers_supported(None, "t") is True and not answers  # not asked again yet
    now[0] += 2.0
    answers.append(KafkaOperationError("TOPIC_AUTHORIZATION_FAILED: not allowed"))
    assert s.markers_supported(None, "t") is False
    assert not answers


class _Err:
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def str(self):
        return f"error {self._code}"


class _TxnProducer:
    """begin/produce/flush/abort; `outcome`: (err, offset) the record's report, or None
    for no report. `log` is the partition's log end offset, moved by the abort."""

    def __init__(self, log, outcome, marker_lands=True):
        self.log, self.outcome, self.marker_lands = log, outcome, marker_lands
        self.calls, self._cb = [], None

    def begin_transaction(self):
        self.calls.append("begin")

    def produce(self, topic, value, key, partition, timestamp, headers, on_delivery):
        assert key is None and value is None and timestamp == (1 << 63) - 1
        self._cb = on_delivery

    def flush(self, timeout):
        if self.outcome is not None:
            err, offset = self.outcome
            if err is None:
                self.log[0] += 1
            self._cb(err, FakeMessage(offset) if offset is not None else None)

    def abort_transaction(self, timeout):
        self.calls.append("abort")
        if self.marker_lands:
            self.log[0] += 1


class FakeMessage:
    def __init__(self, o):
        self._o = o

    def offset(self):
        return self._o


def write_markers(log, producer, offsets=(7,), gate=None):
    """GapWriter.write of one batch, partitions 0.. of topic t taking the markers at
    `offsets`; `log` holds each partition's log end offset (a list), moved by the fake
    producer. Returns the jobs."""
    from kafka_mirrors.kafka.gaps import GapJob, GapWriter
    from kafka_mirrors.kafka.partition import END_OF_TIME_MS, FILLER_HEADER, MARKER_REFUSALS

    def ends(tps):
        return {(t, p): log[p] for t, p in tps}
    writer = GapWriter("[l]", ends, gate or (lambda t, p, wait=True: None), MARKER_REFUSALS, FILLER_HEADER,
                          END_OF_TIME_MS, wait_s=0.2)
    jobs = [GapJob("t", p, o, 3, producer) for p, o in enumerate(offsets)]
    try:
        writer.write(jobs)
    except Exception as exc:  # noqa: BLE001 - as the slot's thread does
        for j in jobs:
            j.fail(exc)
    return jobs


def test_marker_refused_as_planned_lands_on_its_offset():
    from confluent_kafka import KafkaError
    log = [7]
    p = _TxnProducer(log, (_Err(KafkaError.INVALID_TIMESTAMP), None))
    [job] = write_markers(log, p)
    c = job.result
    assert job.done and job.error is None
    assert (c.expected_offset, c.assigned_offset, c.error) == (7, 7, None)
    assert p.calls == ["begin", "abort"] and log == [8]


def test_marker_whose_record_was_kept_fails_the_partition_where_it_landed():
    log = [7]
    [job] = write_markers(log, _TxnProducer(log, (None, 7)))
    assert job.result.assigned_offset == 7 and "kept the record" in job.result.error  # the copier fails on it


@pytest.mark.parametrize("outcome", [None, "other"], ids=["no report", "another refusal"])
def test_marker_with_an_unplanned_outcome_backs_off(outcome):
    from confluent_kafka import KafkaError
    from kafka_mirrors.errors import KafkaOperationError
    log = [7]
    p = _TxnProducer(log, None if outcome is None else (_Err(KafkaError._MSG_TIMED_OUT), None))
    [job] = write_markers(log, p)
    assert isinstance(job.error, KafkaOperationError) and not job.fenced
    assert p.calls == ["begin", "abort"]  # ended either way: a restart plans from the log end


def test_marker_checks_the_log_end_offset_it_leaves():
    """The copier submits a marker once its reports proved the log end offset is the
    marker's offset; a foreign write before the marker, or after it, shows in the log end
    offset the marker leaves: more than offset + 1."""
    from confluent_kafka import KafkaError
    log = [8]  # another write landed at 7
    p = _TxnProducer(log, (_Err(KafkaError.INVALID_TIMESTAMP), None))
    [job] = write_markers(log, p)
    assert "log end offset is 9 after" in job.result.error
    log = [7]

    class Twice(_TxnProducer):
        def abort_transaction(self, timeout):
            super().abort_transaction(timeout)
            self.log[0] += 1  # and someone else's record after the marker
    [job] = write_markers(log, Twice(log, (_Err(KafkaError.INVALID_TIMESTAMP), None)))
    assert "log end offset is 9 after" in job.result.error


class _BatchProducer:
    """One transaction for several partitions: each produce is refused, the abort puts a
    marker on every partition that was sent a record."""

    def __init__(self, log, fail_on=None):
        self.log, self.calls, self.sent, self.fail_on = log, [], [], fail_on

    def begin_transaction(self):
        self.calls.append("begin")

    def produce(self, topic, value, key, partition, timestamp, headers, on_delivery):
        from confluent_kafka import KafkaException
        if self.fail_on is not None and len(self.sent) >= self.fail_on:
            raise KafkaException("Operation not valid in state AbortableError")
        self.sent.append((partition, on_delivery))

    def flush(self, timeout):
        for _, cb in self.sent:
            cb(_Err(KafkaError.INVALID_TIMESTAMP), None)

    def abort_transaction(self, timeout):
        self.calls.append("abort")
        for p, _ in self.sent:
            self.log[p] += 1


def test_one_marker_only_transaction_takes_the_markers_of_every_partition_of_the_batch():
    log = [7, 3, 0]
    p = _BatchProducer(log)
    jobs = write_markers(log, p, offsets=(7, 3, 0))
    assert [(j.result.assigned_offset, j.result.error) for j in jobs] == [(7, None), (3, None), (0, None)]
    assert p.calls == ["begin", "abort"] and log == [8, 4, 1]  # one transaction, a marker each


def test_a_batch_leaves_out_a_partition_that_may_not_be_written_and_names_one_another_writer_moved():
    from kafka_mirrors.errors import KafkaOperationError
    log = [7, 4, 0]  # partition 1: another write landed at 3

    def gate(topic, partition, wait=True):
        if partition == 2:
            raise KafkaOperationError("no longer writing t-2")
    p = _BatchProducer(log)
    jobs = write_markers(log, p, offsets=(7, 3, 0), gate=gate)
    assert jobs[0].result.error is None and log[0] == 8
    assert "log end offset is 5 after" in jobs[1].result.error and log[1] == 5
    assert isinstance(jobs[2].error, KafkaOperationError) and log[2] == 0  # nothing written
    assert [part for part, _ in p.sent] == [0, 1]


@pytest.mark.parametrize("fail_on", [0, 1], ids=["first-produce", "second-produce"])
def test_a_produce_refused_mid_batch_aborts_the_transaction_and_keeps_what_was_begun(fail_on):
    """librdkafka takes no more records once a refusal came back (the transaction is then
    abortable): the first partition's refusal could beat the second partition's produce.
    The transaction is aborted all the same, the jobs begun are checked as usual, those
    not begun fail (not as fenced: nothing is wrong with the producer)."""
    from kafka_mirrors.errors import KafkaOperationError
    log = [7, 3]
    p = _BatchProducer(log, fail_on=fail_on)
    jobs = write_markers(log, p, offsets=(7, 3))
    assert p.calls == ["begin", "abort"] and all(j.done and not j.fenced for j in jobs)
    assert isinstance(jobs[1].error, KafkaOperationError) and log[1] == 3  # nothing of it landed
    if fail_on == 0:
        assert "no delivery report" in str(jobs[0].error) and log[0] == 7
        assert "not begun" in str(jobs[1].error)
    else:
        assert (jobs[0].result.assigned_offset, jobs[0].result.error) == (7, None) and log[0] == 8
        assert "no delivery report" in str(jobs[1].error)  # its produce was the one refused


def test_a_producer_error_in_a_marker_batch_fails_every_job_as_fenced():
    from kafka_mirrors.kafka.gaps import GapJob, GapWriter
    from kafka_mirrors.kafka.partition import END_OF_TIME_MS, FILLER_HEADER, MARKER_REFUSALS
    log = [7, 3]

    class Fenced(_BatchProducer):
        def abort_transaction(self, timeout):
            raise __import__("confluent_kafka").KafkaException("PRODUCER_FENCED")
    p = Fenced(log)
    writer = GapWriter("[l]", lambda tps: {(t, q): log[q] for t, q in tps}, lambda t, q, wait=True: None,
                       MARKER_REFUSALS, FILLER_HEADER, END_OF_TIME_MS, 0.2)
    jobs = [GapJob("t", q, o, 3, p) for q, o in enumerate((7, 3))]
    for j in jobs:
        writer.submit(j)  # the slot's thread writes them
    deadline = time.monotonic() + 5
    while not all(j.done for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(j.done and j.fenced and j.error is not None for j in jobs)
    writer.close()


def test_the_slot_thread_batches_what_waits_and_ends_when_idle(monkeypatch):
    """Jobs submitted while a transaction runs go into the next one, together; a second
    job of a partition waits for the next batch; the thread ends once nothing came for
    IDLE_EXIT_S."""
    import threading
    from kafka_mirrors.kafka import gaps
    from kafka_mirrors.kafka.gaps import GapJob, GapWriter
    from kafka_mirrors.kafka.partition import END_OF_TIME_MS, FILLER_HEADER, MARKER_REFUSALS
    monkeypatch.setattr(gaps, "IDLE_EXIT_S", 0.2)
    log = [0, 0, 0]
    release = threading.Event()

    class Slow(_BatchProducer):
        def begin_transaction(self):
            super().begin_transaction()
            self.sent = []
            release.wait(5)
    p = Slow(log)
    writer = GapWriter("[l]", lambda tps: {(t, q): log[q] for t, q in tps}, lambda t, q, wait=True: None,
                          MARKER_REFUSALS, FILLER_HEADER, END_OF_TIME_MS, 2.0)
    first = GapJob("t", 0, 0, 3, p)
    writer.submit(first)
    deadline = time.monotonic() + 5
    while p.calls != ["begin"] and time.monotonic() < deadline:
        time.sleep(0.005)
    later = [GapJob("t", 1, 0, 3, p), GapJob("t", 2, 0, 3, p)]
    for j in later:
        writer.submit(j)
    assert writer.threads() == 1
    release.set()
    while not all(j.done for j in [first, *later]) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [j.result.error for j in [first, *later]] == [None, None, None]
    assert p.calls == ["begin", "abort", "begin", "abort"] and log == [1, 1, 1]  # two transactions
    while writer.threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.threads() == 0
    writer.close()


def test_fence_slots_keeps_a_slot_only_with_both_of_its_producers(monkeypatch):
    s = producers(FakeProducer())
    s.fenced_slots, s._last_used = set(), {}
    made, closed = [], []

    class P:
        def __init__(self, tid):
            self.tid = tid

        def flush(self, timeout):
            closed.append(self.tid)

    def new(tid, log_level=3):
        if tid.endswith("slot-5/markers"):
            raise RuntimeError("TRANSACTIONAL_ID_AUTHORIZATION_FAILED")
        made.append(tid)
        return P(tid)
    monkeypatch.setattr(s, "_new_txn_producer", new)
    assert s.fence_slots({4, 5}) == {4}
    assert set(s.transactional) == {4} and s.markers[4].tid == "kafka-mirrors/l/slot-4/markers"
    assert closed == ["kafka-mirrors/l/slot-5"]  # slot 5's filler producer is not kept alone


@pytest.mark.parametrize("kwargs, expected", [({}, "lz4"), ({"compression": "zstd"}, "zstd"),
                                              ({"compression": "none"}, "none")])
def test_the_fast_path_producer_compresses_as_the_link_says(monkeypatch, kwargs, expected):
    """The link option mirror.compression.type (default lz4) is the fast-path producer's
    compression.type, whatever the destination's client settings hold: written
    uncompressed, a mirror of a compressed source took 249 times its disk (issue 10)."""
    import kafka_mirrors.kafka.partition as part
    made = []
    monkeypatch.setattr(part, "Producer", lambda conf: made.append(conf) or object())
    part.SinkProducers({"bootstrap.servers": "127.0.0.1:1", "compression.type": "gzip"}, "l", "[l]", **kwargs)
    (conf,) = made
    assert conf["compression.type"] == expected


@pytest.mark.parametrize("from_messages, cut_after", [(True, 2), (False, 2), (False, 1)])
def test_a_run_stops_queueing_at_the_write_deadline(monkeypatch, from_messages, cut_after):
    """A worker stopped (SIGSTOP) in the middle of a run resumes past its write deadline
    (group lease, fresh view of the state store): the rest of the run is not queued, the
    produce raises, and what was queued (even one record) stays in flight until the queue
    emptied. A deadline renewed meanwhile is asked again before giving up."""
    import kafka_mirrors.kafka.partition as part
    from kafka_mirrors.errors import KafkaOperationError

    class Counting(FakeProducer):
        def __len__(self):
            return len(self.produced)

    clock = [100.0]
    monkeypatch.setattr(part.time, "monotonic", lambda: clock[0])
    fake = Counting()
    sink = producers(fake)
    sink.write_deadline = lambda: 101.0
    real = fake.produce

    def produce(*args):
        real(*args)
        if len(fake.produced) == cut_after:
            clock[0] = 105.0  # stopped here, resumed after the deadline
    fake.produce = produce
    if from_messages:
        run = MessageRecords([Msg("src", 0, i, key=None, value=b"v", ts=1, headers=None) for i in range(5)])
    else:
        run = [Record(i, None, b"v", 1, ()) for i in range(5)]
    with pytest.raises(KafkaOperationError, match="no longer writing mirror-0"):
        sink.produce("mirror", 0, run)
    assert len(fake.produced) == cut_after
    assert sink.in_flight("mirror", 0) == 1
    # the deadline passes during the next run, but was renewed: asked again, not refused
    answers = iter([106.0, 300.0])
    sink.write_deadline = lambda: next(answers)
    fake.produce = lambda *args: (real(*args), clock.__setitem__(0, 107.0))
    sink.produce("mirror", 0, [Record(9 + i, None, b"v", 1, ()) for i in range(2)])
    assert len(fake.produced) == cut_after + 2


class _FillerProducer:
    """The slot's filler producer: each filler lands at the partition's log end offset
    (`shift` moves where one partition's land), the abort puts a marker after them."""

    def __init__(self, log, shift=None):
        self.log, self.shift, self.calls, self.sent = log, shift or {}, [], []

    def begin_transaction(self):
        self.calls.append("begin")

    def produce(self, topic, value, key, partition, timestamp, headers, on_delivery):
        assert value is None and headers == [("kafka-mirrors.filler", b"1")]
        self.sent.append((partition, key, on_delivery))

    def flush(self, timeout):
        for partition, _, cb in self.sent:
            offset = self.log[partition] + self.shift.get(partition, 0)
            self.log[partition] += 1
            cb(None, FakeMessage(offset))

    def abort_transaction(self, timeout):
        self.calls.append("abort")
        for p in {p for p, _, _ in self.sent}:
            self.log[p] += 1


def test_aborted_fillers_of_several_partitions_share_one_transaction_and_each_is_checked():
    from kafka_mirrors.kafka.gaps import GapJob, GapWriter
    from kafka_mirrors.kafka.partition import END_OF_TIME_MS, FILLER_HEADER, MARKER_REFUSALS
    log = [10, 20, 30]
    p = _FillerProducer(log, shift={2: 1})  # partition 2's fillers land one too high
    writer = GapWriter("[l]", lambda tps: {(t, q): log[q] for t, q in tps}, lambda t, q, wait=True: None,
                       MARKER_REFUSALS, FILLER_HEADER, END_OF_TIME_MS, 0.2)
    jobs = [GapJob("t", 0, 10, 3, p, fillers=3, key=b"fk"), GapJob("t", 1, 20, 3, p, fillers=1),
            GapJob("t", 2, 30, 3, p, fillers=2)]
    writer.write(jobs)
    assert p.calls == ["begin", "abort"]
    assert [len([s for s in p.sent if s[0] == q]) for q in range(3)] == [3, 1, 2]
    assert {k for q, k, _ in p.sent if q == 0} == {b"fk"}  # a compacted mirror's filler key
    assert (jobs[0].result.assigned_offset, jobs[0].result.error) == (10, None) and log[0] == 14
    assert (jobs[1].result.assigned_offset, jobs[1].result.error) == (20, None) and log[1] == 22
    assert jobs[2].result.expected_offset == 30 and jobs[2].result.assigned_offset == 31  # fails the copier


def test_a_gap_thread_waits_a_moment_for_a_closed_gate_then_writes_nothing(monkeypatch):
    from kafka_mirrors.errors import NotWriting
    from kafka_mirrors.kafka import partition
    s = producers(FakeProducer())
    opens_at = time.monotonic() + 0.1
    s.gate_open = lambda topic, p: time.monotonic() >= opens_at  # the copy thread renews it
    s._gap_gate("t", 0)
    assert time.monotonic() >= opens_at
    monkeypatch.setattr(partition, "GATE_WAIT_S", 0.05)
    s.gate_open = lambda topic, p: False
    with pytest.raises(NotWriting, match="no longer writing t-0"):
        s._gap_gate("t", 0)
