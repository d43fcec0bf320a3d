"""The per-partition copier against in-memory partition logs (tests/unit/fakes.py).

The property that matters everywhere: the destination's read_committed view equals the
source's at identical offsets, and its log end offset equals the source's."""
from __future__ import annotations

import logging
import random

import pytest

from kafka_mirrors.errors import ReplicationError
from kafka_mirrors.replication.copier import PartitionCopier, PartitionFailed
from kafka_mirrors.replication.interfaces import Confirmation, Reports
from tests.unit.fakes import FakePartitionLog, FakeSink, FakeSource, SimulatedCrash, is_filler

LOG = logging.getLogger("kafka_mirrors.test.copier")


def copier(source, sink, **kw) -> PartitionCopier:
    kw.setdefault("label", "dr/orders-p3")
    kw.setdefault("retention_check_interval", 0.0)
    kw.setdefault("idle_check_interval", 0.0)
    return PartitionCopier(source, sink, logger=LOG, **kw)


def run(c: PartitionCopier, src: FakePartitionLog, dst: FakePartitionLog, max_steps: int = 10_000) -> int:
    """Step until the destination log end offset reaches the source's; return the steps."""
    for steps in range(1, max_steps + 1):
        c.step(0.0)
        if dst.log_end_offset == src.log_end_offset:
            # one more idle step runs the idle checks (foreign writes, retention)
            c.step(0.0)
            return steps
    raise AssertionError(f"not caught up after {max_steps} steps: {dst.log_end_offset} < {src.log_end_offset}")


def mirror(src: FakePartitionLog, markers: bool = True, **kw) -> tuple[FakePartitionLog, PartitionCopier, FakeSink]:
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    sink.markers = markers
    c = copier(FakeSource(src), sink, **kw)
    c.start()
    run(c, src, dst)
    return dst, c, sink


def assert_same_view(src: FakePartitionLog, dst: FakePartitionLog) -> None:
    assert dst.read_committed() == src.read_committed()
    assert dst.log_end_offset == src.log_end_offset


# -- dense copy ---------------------------------------------------------------------------


def test_dense_copy_keeps_offsets_keys_values_headers_and_timestamps():
    src = FakePartitionLog()
    src.append(None, b"v0", 1000)
    src.append(b"", b"", 1001)
    src.append(b"k", None, 5)
    src.append(b"k", b"v", 1_700_000_000_123, (("h", b"1"), ("h", b"2"), ("a", None), ("h", b"1")))
    src.append(b"\x00\xff", b"x" * 1000, 0, (("", b""),))
    for i in range(12_000):
        src.append(b"key-%d" % (i % 7), b"value-%d" % i, 1_000_000 + i)

    dst, c, sink = mirror(src, max_batch=5000)

    assert_same_view(src, dst)
    got = dst.read_committed()
    assert got[0].key is None and got[1].key == b"" and got[1].value == b"" and got[2].value is None
    assert got[3].headers == (("h", b"1"), ("h", b"2"), ("a", None), ("h", b"1"))
    assert got[3].timestamp == 1_700_000_000_123
    # the fast path only: batched plain produce, no transaction, no filler; per fetch one
    # call for the record held back from the fetch before and one for the dense run
    assert set(sink.calls) == {"produce"}
    assert len(sink.calls) <= 2 * 4
    assert all(len(chunk) > 1000 for chunk in sink.chunks if len(chunk) > 1)
    assert c.progress.records_copied == 12_005 and c.progress.fillers_written == 0
    assert c.progress.next_offset == 12_005


def test_last_record_is_held_back_until_the_offset_after_it_is_known():
    src = FakePartitionLog()
    for i in range(3):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()
    source = FakeSource(src, report_end=False)
    c = copier(source, FakeSink(dst))
    c.start()
    source.report_end = False
    c.step(0.0)
    # offsets 0 and 1 are followed by known records; 2 might be followed by a marker...
    assert dst.log_end_offset == 2
    # ...until the source's last stable offset right behind it proves nothing can be
    c.step(0.0)
    assert_same_view(src, dst)


# -- gaps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("markers", [True, False], ids=["marker-only", "fallback"])
def test_gap_of_one_after_committed_transactions(markers):
    """With markers: the record goes the fast path and a marker-only transaction takes the
    gap. Without (a destination that would keep the marker's record): the record alone in
    a committed transaction."""
    src = FakePartitionLog()
    for i in range(5):
        t = src.begin()
        src.append(b"k", b"%d" % i, 10 + i, txn=t)
        src.commit(t)  # marker at the next offset: a gap of exactly 1
        src.append(b"plain", b"%d" % i, 20 + i)

    dst, c, sink = mirror(src, markers=markers)

    assert_same_view(src, dst)
    counters = c.progress.counters
    if markers:
        assert counters["marker_transactions"] == 5 and "transactions_committed" not in counters
        assert "commit_one" not in sink.calls
    else:
        assert counters["transactions_committed"] == 5 and "marker_transactions" not in counters
        assert "marker" not in sink.calls
    assert c.progress.fillers_written == 0
    assert c.progress.records_copied == 10
    assert not any(is_filler(r) for r in dst.read_uncommitted())


def test_gap_of_several_after_aborted_transaction_is_an_aborted_filler_transaction():
    src = FakePartitionLog()
    src.append(b"a", b"0")  # 0
    t = src.begin()
    for _ in range(3):
        src.append(b"x", b"aborted", txn=t)  # 1..3
    src.abort(t)  # 4
    src.append(b"b", b"5")  # 5

    dst, c, sink = mirror(src)

    assert_same_view(src, dst)
    assert c.progress.fillers_written == 3
    assert c.progress.counters["transactions_aborted"] == 1
    # read_uncommitted consumers do see the fillers (documented), at the aborted offsets
    assert [r.offset for r in dst.read_uncommitted() if is_filler(r)] == [1, 2, 3]


def test_interleaved_transactions_and_compaction_holes():
    src = FakePartitionLog()
    for i in range(40):
        src.append(b"k%d" % (i % 5), b"%d" % i, i)
    t1, t2 = src.begin(), src.begin()
    src.append(b"t1", b"a", txn=t1)
    src.append(b"t2", b"b", txn=t2)
    src.append(b"plain", b"c")
    src.append(b"t1", b"d", txn=t1)
    src.abort(t1)
    src.commit(t2)
    src.append(b"end", b"e")
    # compaction: single holes (gap of 1), runs of holes, and one right at the start
    src.compact([0, 3, 10, 11, 12, 20, 22, 24, 39])

    dst, c, _ = mirror(src, max_batch=7)

    assert_same_view(src, dst)
    assert c.progress.counters.get("visible_fillers", 0) == 0


def test_head_gap_on_an_empty_destination_is_aligned_not_counted_as_lost():
    src = FakePartitionLog()
    for i in range(150):
        src.append(b"k", b"%d" % i)
    src.delete_records_before(100)

    dst, c, _ = mirror(src)

    assert_same_view(src, dst)
    assert dst.log_start_offset == 100
    assert c.progress.offsets_lost_to_source_retention == 0


def test_source_retention_deleting_uncopied_records_is_counted_and_logged(caplog):
    src = FakePartitionLog()
    for i in range(100):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()
    c = copier(FakeSource(src), FakeSink(dst), max_batch=10)
    c.start()
    c.step(0.0)
    c.step(0.0)
    assert dst.log_end_offset == 19  # 0..18 written, 19 held back
    src.delete_records_before(60)

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        run(c, src, dst)

    assert_same_view(src, dst)
    assert dst.log_start_offset == 60
    assert c.progress.offsets_lost_to_source_retention == 40  # 20..59: 19 was held and copied
    assert any("[dr/orders-p3]" in m and "source retention" in m for m in caplog.messages)


def test_destination_follows_source_retention_of_copied_records():
    src = FakePartitionLog()
    for i in range(50):
        src.append(b"k", b"%d" % i)
    dst, c, _ = mirror(src)
    src.delete_records_before(30)
    c.step(0.0)
    assert dst.log_start_offset == 30
    assert c.progress.offsets_lost_to_source_retention == 0


@pytest.mark.parametrize("tail", ["record", "commit marker", "aborted transaction", "open transaction"])
def test_tail_is_written_when_the_partition_goes_idle(tail):
    src = FakePartitionLog()
    for i in range(10):
        src.append(b"k", b"%d" % i)
    if tail == "record":
        src.append(b"last", b"x")
    elif tail == "commit marker":
        t = src.begin()
        src.append(b"last", b"x", txn=t)
        src.commit(t)
    else:
        t = src.begin()
        src.append(b"x", b"x", txn=t)
        src.append(b"x", b"y", txn=t)
        if tail == "aborted transaction":
            src.abort(t)
    dst = FakePartitionLog()
    c = copier(FakeSource(src), FakeSink(dst))
    c.start()
    for _ in range(5):  # a marker takes two more: one sends it, one sees it written
        c.step(0.0)
    if tail != "open transaction":
        # lag 0: nothing is left held back
        assert_same_view(src, dst)
        return
    # An open transaction follows record 9: how the gap after 9 must be written depends
    # on how it ends (and on what other producers interleave), so 9 stays held back.
    assert dst.log_end_offset == 9 == src.last_stable_offset - 1
    src.append(b"other producer", b"z")  # 12
    src.abort(t)  # 10, 11 aborted; marker 13
    run(c, src, dst)
    assert_same_view(src, dst)
    assert c.progress.counters.get("visible_fillers", 0) == 0


# -- restarts -----------------------------------------------------------------------------


def build_mixed_log(rng: random.Random, n: int) -> FakePartitionLog:
    src = FakePartitionLog()
    while src.log_end_offset < n:
        kind = rng.random()
        if kind < 0.6:
            src.append(b"k%d" % rng.randint(0, 9), b"v%d" % src.log_end_offset, src.log_end_offset)
        else:
            t = src.begin()
            for _ in range(rng.randint(1, 3)):
                src.append(b"t", b"v%d" % src.log_end_offset, txn=t)
            (src.commit if kind < 0.85 else src.abort)(t)
    return src


def test_restart_resumes_exactly_after_stop_and_after_crash():
    src = build_mixed_log(random.Random(3), 400)
    dst = FakePartitionLog()
    for incarnation in range(40):
        sink = FakeSink(dst)
        c = copier(FakeSource(src), sink, max_batch=9)
        c.start()
        assert c.progress.next_offset == dst.log_end_offset
        for _ in range(3):
            c.step(0.0)
        if incarnation % 2:
            c.stop(1.0)
        else:
            sink.crash()
    c = copier(FakeSource(src), FakeSink(dst), max_batch=9)
    c.start()
    run(c, src, dst)
    assert_same_view(src, dst)
    # no duplicate anywhere: every record the destination ever received sits at its source offset
    source_by_offset = {r.offset: r for r in src.read_uncommitted()}
    for r in dst.read_uncommitted():
        assert is_filler(r) or r == source_by_offset[r.offset]


def _commit_gap_after_5() -> FakePartitionLog:
    """Records 0-4, a transaction's record at 5 and its commit marker at 6, record 7."""
    src = FakePartitionLog()
    for i in range(5):
        src.append(b"k", b"%d" % i)
    t = src.begin()
    src.append(b"txn", b"r", txn=t)  # 5
    src.commit(t)  # 6: gap of 1 after offset 5
    src.append(b"k", b"7")
    return src


def test_crash_inside_a_one_record_transaction_fails_the_partition_on_restart():
    src = _commit_gap_after_5()
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    sink.markers = False  # the fallback: where the destination cannot take a marker alone
    sink.crash_in_commit_one = True
    c = copier(FakeSource(src), sink)
    c.start()
    with pytest.raises(SimulatedCrash):
        run(c, src, dst)
    assert dst.last_stable_offset == 5  # the transaction is open

    # restart: the new sink fences the old writer, the broker aborts the transaction
    restarted = copier(FakeSource(src), FakeSink(dst))
    with pytest.raises(PartitionFailed) as failed:
        restarted.start()
    assert failed.value.offset == 5
    assert str(failed.value).startswith("offset 5: ")
    assert restarted.progress.last_error == str(failed.value)
    with pytest.raises(PartitionFailed):
        restarted.step(0.0)


def test_crash_inside_a_marker_only_transaction_leaves_the_marker_where_planned():
    """The same source as above, with markers: record 5 went the fast path, the crash
    lands inside the marker-only transaction for offset 6 (it holds the partition,
    nothing appended). The restart's fence aborts it: its marker takes offset 6 exactly,
    and the copy goes on identical."""
    src = _commit_gap_after_5()
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    sink.crash_in_marker = True
    c = copier(FakeSource(src), sink)
    c.start()
    with pytest.raises(SimulatedCrash):
        run(c, src, dst)
    assert dst.log_end_offset == 6 and dst.last_stable_offset == 6  # open, nothing appended

    restarted = copier(FakeSource(src), FakeSink(dst))
    restarted.start()
    assert restarted.progress.next_offset == 7  # the fence's abort marker took offset 6
    run(restarted, src, dst)
    assert_same_view(src, dst)
    assert not any(is_filler(r) for r in dst.read_uncommitted())


def test_tail_check_catches_a_differing_record():
    src = FakePartitionLog()
    for i in range(5):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()
    for i in range(4):
        dst.append(b"k", b"%d" % i if i != 2 else b"other")
    with pytest.raises(PartitionFailed, match="offset 2: "):
        copier(FakeSource(src), FakeSink(dst)).start()


def test_destination_beyond_the_source_fails_at_start():
    src = FakePartitionLog()
    src.append(b"k", b"0")
    dst = FakePartitionLog()
    for _ in range(3):
        dst.append(b"k", b"0")
    with pytest.raises(PartitionFailed, match="offset 1: "):
        copier(FakeSource(src), FakeSink(dst)).start()


# -- verification -------------------------------------------------------------------------


def test_foreign_write_into_the_mirror_fails_the_partition_and_stops_writing():
    src = FakePartitionLog()
    for i in range(20):
        src.append(b"k", b"%d" % i)
    dst, c, sink = mirror(src)
    dst.append(b"intruder", b"!")  # lands at 20

    with pytest.raises(PartitionFailed) as failed:
        c.step(0.0)
    assert failed.value.offset == 20
    assert isinstance(failed.value, ReplicationError)

    for i in range(10):
        src.append(b"k", b"more")
    end = dst.log_end_offset
    calls = list(sink.calls)
    for _ in range(3):
        with pytest.raises(PartitionFailed):
            c.step(0.0)
    c.stop(1.0)
    assert dst.log_end_offset == end and sink.calls == calls


def test_foreign_write_racing_a_produce_is_caught_by_the_delivery_report():
    src = FakePartitionLog()
    for i in range(20):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()

    class RacedSink(FakeSink):
        def produce(self, records):
            super().produce(records)
            self.log.append(b"intruder", b"!")  # lands before our queued records

    c = copier(FakeSource(src), RacedSink(dst), max_batch=10)
    c.start()
    with pytest.raises(PartitionFailed, match=r"offset 0: delivery landed at 1 \(another writer\?\)"):
        run(c, src, dst)


def test_delivery_report_with_the_wrong_offset_fails_the_partition():
    src = FakePartitionLog()
    for i in range(20):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    sink.misreport = {7: 9}
    c = copier(FakeSource(src), sink)
    c.start()
    with pytest.raises(PartitionFailed) as failed:
        run(c, src, dst)
    assert failed.value.offset == 7 and "landed at 9" in str(failed.value)


def test_delivery_error_fails_the_partition():
    src = FakePartitionLog()
    for i in range(5):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()

    class FailingSink(FakeSink):
        def flush(self, timeout):
            self.queued.clear()
            return Reports.of([Confirmation(0, None, "MSG_SIZE_TOO_LARGE")])

        def confirmations(self):
            return self.flush(0)

    c = copier(FakeSource(src), FailingSink(dst))
    c.start()
    with pytest.raises(PartitionFailed, match="offset 0: delivery failed: MSG_SIZE_TOO_LARGE"):
        c.step(0.0)


def test_a_run_whose_last_write_landed_low_names_the_writes_that_did_not_land():
    # one report stands for a run (SinkProducers): a refused write inside it lets the rest
    # slide down by one, so the last lands below its offset
    src = FakePartitionLog()
    for i in range(5):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()

    class SlidSink(FakeSink):
        def flush(self, timeout):
            self.queued.clear()
            return Reports(4, 3, (Confirmation(3, 2),))

        def confirmations(self):
            return self.flush(0)

    c = copier(FakeSource(src), SlidSink(dst))
    c.start()
    with pytest.raises(PartitionFailed, match="offset 3: delivery landed at 2: 1 earlier write"):
        c.step(0.0)


def test_log_lines_carry_the_label(caplog):
    src = FakePartitionLog()
    src.append(b"k", b"v")
    with caplog.at_level(logging.INFO, logger=LOG.name):
        mirror(src, label="dr/or[ders-p3")
    assert caplog.messages and all(m.startswith("[dr/or[ders-p3] ") for m in caplog.messages)


# -- property: random logs, fetch sizes, deliveries and restarts ----------------------------


def random_headers(rng: random.Random):
    return tuple((rng.choice(["a", "b", ""]), rng.choice([None, b"", b"x"])) for _ in range(rng.randint(0, 3)))


def append_random(rng: random.Random, src: FakePartitionLog, open_txns: list[int]) -> None:
    kind = rng.random()
    key = rng.choice([None, b"", b"k1", b"k2", b"k3"])
    value = rng.choice([None, b"", b"v%d" % src.log_end_offset])
    if kind < 0.55 or (kind < 0.8 and open_txns):
        if open_txns and rng.random() < 0.5:
            src.append(key, value, rng.randint(0, 10**12), random_headers(rng), txn=rng.choice(open_txns))
        else:
            src.append(key, value, rng.randint(0, 10**12), random_headers(rng))
    elif kind < 0.8:
        t = src.begin()
        src.append(key, value, rng.randint(0, 10**12), random_headers(rng), txn=t)
        open_txns.append(t)
    elif open_txns:
        t = open_txns.pop(rng.randrange(len(open_txns)))
        (src.commit if rng.random() < 0.6 else src.abort)(t)


def random_source(rng: random.Random) -> FakePartitionLog:
    src = FakePartitionLog()
    open_txns: list[int] = []
    for _ in range(rng.randint(0, 120)):
        append_random(rng, src, open_txns)
    for t in open_txns:
        (src.commit if rng.random() < 0.5 else src.abort)(t)
    if rng.random() < 0.5:
        data = src.data_offsets()
        src.compact(rng.sample(data, rng.randint(0, len(data) // 3)))
    if rng.random() < 0.3:
        src.delete_records_before(rng.randint(0, src.log_end_offset))
    return src


@pytest.mark.parametrize("seed", range(150))
def test_property_random_logs_copied_with_random_fetches_and_restarts(seed):
    rng = random.Random(seed)
    src = random_source(rng)
    dst = FakePartitionLog()
    for _ in range(1000):
        sink = FakeSink(dst, rng=rng)
        c = copier(FakeSource(src, rng=rng, cheap_log_start=rng.random() < 0.5), sink, max_batch=rng.randint(1, 12))
        c.start()
        for _ in range(rng.randint(1, 8)):
            c.step(0.0)
        if dst.log_end_offset == src.log_end_offset and not sink.queued:
            break
        if rng.random() < 0.5:
            c.stop(1.0)
        else:
            sink.crash()
    else:
        raise AssertionError("never caught up")
    assert_same_view(src, dst)
    assert c.progress.offsets_lost_to_source_retention == 0
    # the destination starts where the source's visible records start
    assert dst.log_start_offset >= src.log_start_offset
    assert src.visible(src.log_start_offset, dst.log_start_offset) == []


@pytest.mark.parametrize("seed", range(60))
def test_property_growing_source_with_compaction_retention_and_restarts(seed, compaction=True):
    """The source keeps changing under the copier: open transactions spanning fetches,
    compaction (never of the last record, like Kafka's active segment) and retention."""
    rng = random.Random(1000 + seed)
    src = FakePartitionLog()
    dst = FakePartitionLog()
    ever: dict[int, object] = {}
    open_txns: list[int] = []
    visible_fillers = 0
    c = sink = None
    for round_ in range(60):
        if c is None:
            sink = FakeSink(dst, rng=rng, compacted=True)
            c = copier(FakeSource(src, rng=rng, cheap_log_start=rng.random() < 0.5), sink, max_batch=rng.randint(1, 10))
            c.start()
        for _ in range(rng.randint(0, 6)):
            append_random(rng, src, open_txns)
        if rng.random() < 0.15 and compaction:
            data = src.data_offsets()[:-1]
            src.compact(rng.sample(data, min(len(data), rng.randint(0, 3))))
        if rng.random() < 0.08:
            src.delete_records_before(rng.randint(src.log_start_offset, src.last_stable_offset))
        for r in src.read_uncommitted():
            ever.setdefault(r.offset, r)
        for _ in range(rng.randint(1, 4)):
            c.step(0.0)
        if rng.random() < 0.15:
            visible_fillers += c.progress.counters.get("visible_fillers", 0)
            c.stop(1.0) if rng.random() < 0.5 else sink.crash()
            c = None
    for t in open_txns:
        src.commit(t)
    if c is None:
        c = copier(FakeSource(src), FakeSink(dst, compacted=True))
        c.start()
    run(c, src, dst)
    visible_fillers += c.progress.counters.get("visible_fillers", 0)

    assert dst.log_end_offset == src.log_end_offset
    copied = {r.offset: r for r in dst.read_committed()}
    for r in src.read_committed():
        assert copied.pop(r.offset) == r
    # what is left on the destination: records the source compacted after they were
    # copied, and the fillers the copier counted as visible (a compacted record right
    # after one already written)
    extra_fillers = [r for r in copied.values() if is_filler(r)]
    assert len(extra_fillers) <= visible_fillers  # retention may have deleted some since
    for r in copied.values():
        assert is_filler(r) or ever[r.offset] == r
    assert dst.log_start_offset >= src.log_start_offset


def test_lone_empty_offset_after_a_written_record_becomes_a_counted_visible_filler(caplog):
    """Kafka cannot spend exactly one offset invisibly without a record of ours before it.
    After an idle release of record 2, a one-record transaction lands at 3 and aborts
    while another producer writes 4: offset 3 gets a filler read_committed consumers see,
    counted and logged, never silent."""
    src = FakePartitionLog()
    for i in range(3):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    sink.markers = False  # the fallback: where the destination cannot take a marker alone
    c = copier(FakeSource(src), sink)
    c.start()
    c.step(0.0)
    c.step(0.0)
    assert dst.log_end_offset == 3  # released while idle: lag 0
    t = src.begin()
    src.append(b"t", b"aborted", txn=t)  # 3
    src.append(b"other", b"visible")  # 4
    src.abort(t)  # 5
    src.append(b"k", b"6")
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        run(c, src, dst)
    assert dst.log_end_offset == src.log_end_offset
    view = dst.read_committed()
    assert [r for r in view if not is_filler(r)] == src.read_committed()
    assert [r.offset for r in view if is_filler(r)] == [3]
    assert c.progress.counters["visible_fillers"] == 1
    assert any("offset 3: a single empty source offset" in m for m in caplog.messages)


def test_lone_empty_offset_after_a_written_record_takes_a_marker_only_transaction():
    """The case above where the destination can take a marker alone: offset 3 gets
    nothing any reader sees, and nothing is counted as a visible filler."""
    src = FakePartitionLog()
    for i in range(3):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()
    c = copier(FakeSource(src), FakeSink(dst))
    c.start()
    c.step(0.0)
    c.step(0.0)
    assert dst.log_end_offset == 3
    t = src.begin()
    src.append(b"t", b"aborted", txn=t)  # 3
    src.append(b"other", b"visible")  # 4
    src.abort(t)  # 5
    src.append(b"k", b"6")
    run(c, src, dst)
    assert_same_view(src, dst)
    assert not any(is_filler(r) for r in dst.read_uncommitted() if r.offset == 3)
    # offset 3, and offset 5 after record 4 (which went the fast path)
    assert c.progress.counters["marker_transactions"] == 2
    assert "visible_fillers" not in c.progress.counters and "transactions_committed" not in c.progress.counters


def test_lone_empty_offset_at_the_destination_head_vanishes():
    src = FakePartitionLog()
    src.append(b"k", b"0")
    t = src.begin()
    src.append(b"t", b"1", txn=t)
    src.commit(t)  # 2
    src.append(b"k", b"3")
    src.delete_records_before(2)  # the source now starts on a commit marker
    dst, c, _ = mirror(src, markers=False)
    assert dst.read_committed() == src.read_committed()
    assert dst.log_end_offset == src.log_end_offset
    assert dst.log_start_offset == 3  # the lone offset 2 was filled, then deleted
    assert c.progress.counters.get("visible_fillers", 0) == 0
    # with markers the destination starts where the source does, on a marker
    dst, c, _ = mirror(src, markers=True)
    assert_same_view(src, dst)
    assert dst.log_start_offset == src.log_start_offset == 2
    assert c.progress.counters.get("visible_fillers", 0) == 0


def test_idle_requests_are_rate_limited_and_a_foreign_write_is_still_caught():
    """An idle partition is stepped many times a second by the worker: the checks that
    cost a ListOffsets request (destination log end offset, source offsets) run at most
    once per idle_check_interval, and still catch a foreign write when it comes due."""
    now = [100.0]
    src = FakePartitionLog()
    for i in range(20):
        src.append(b"k", b"%d" % i)
    dst, c, sink = mirror(src, idle_check_interval=1.0, clock=lambda: now[0])

    class CountingSink:
        def __init__(self, inner):
            self.inner, self.log_end_calls = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def log_end_offset(self):
            self.log_end_calls += 1
            return self.inner.log_end_offset()

    counting = CountingSink(sink)
    c._sink = counting
    source = c._source
    offsets_before = source.offsets_calls
    for _ in range(50):
        c.step(0.0)
    assert counting.log_end_calls <= 1
    assert source.offsets_calls - offsets_before <= 1

    dst.append(b"intruder", b"!")  # lands at 20
    c.step(0.0)  # within the interval: not looked at yet
    now[0] += 1.5
    with pytest.raises(PartitionFailed) as failed:
        c.step(0.0)
    assert failed.value.offset == 20


def test_progress_counts_the_bytes_the_sink_says_it_was_handed_and_those_confirmed():
    src = FakePartitionLog()
    for i in range(5):
        src.append(b"k", b"%d" % i)
    dst = FakePartitionLog()

    class CountingSink(FakeSink):
        def produce(self, records):
            super().produce(records)
            return 10 * len(records)

    c = copier(FakeSource(src), CountingSink(dst))
    c.start()
    run(c, src, dst)
    # the held record too: run() goes on until the end is known and it is written
    assert c.progress.records_fetched == 5 and c.progress.bytes_fetched == 50


def test_a_step_plans_no_more_gaps_once_they_took_the_gap_budget():
    """Markers and aborted fillers are written off the copy thread, but where the mirror
    takes no marker-only transaction each gap of one is its record alone in a committed
    transaction, on the copy thread (~15 ms): a fetch of 5,000 records of a transactional
    topic held ~2,000 of them, and its one step ran 30 s without a look at the copy
    thread's commands (a failover's stop waited as long). Once the gaps of a step took the
    budget, the rest of the fetch waits for the next step; the copy is exact."""
    src = FakePartitionLog()
    for i in range(40):
        t = src.begin()
        src.append(b"k", b"%d" % i, 10 + i, txn=t)
        src.commit(t)  # a gap of one after each record
    src.append(b"plain", b"last", 99)
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    sink.markers = False
    now = [0.0]
    commit_one = sink.commit_one

    def slow_commit_one(record):
        now[0] += 0.015  # what a transaction takes
        return commit_one(record)
    sink.commit_one = slow_commit_one
    c = copier(FakeSource(src), sink, clock=lambda: now[0], gap_budget=0.1)
    c.start()
    per_step = []
    for _ in range(100):
        before = c.progress.counters.get("transactions_committed", 0)
        c.step(0.0)
        per_step.append(c.progress.counters.get("transactions_committed", 0) - before)
        if dst.log_end_offset == src.log_end_offset:
            break
    c.step(0.0)
    assert_same_view(src, dst)
    assert sum(per_step) == 40
    assert 6 <= max(per_step) <= 8 and len([n for n in per_step if n]) >= 5  # 0.1 s / 15 ms: 7 or 8 a step
    assert c.progress.records_fetched == 41  # records waiting for the next step are not fetched twice
    # without a budget the same fetch is planned in one step: all 40 transactions in it
    dst2 = FakePartitionLog()
    sink2 = FakeSink(dst2)
    sink2.markers = False
    c2 = copier(FakeSource(src), sink2, gap_budget=float("inf"))
    c2.start()
    c2.step(0.0)
    assert c2.progress.counters["transactions_committed"] == 40


def test_a_marker_being_written_holds_its_partition_and_nothing_else():
    """A gap of one is a marker-only transaction written by another thread: the step that
    plans it sends the record before it and returns; the partition sends nothing more (nor
    fetches) until the marker is on the log, then the copy goes on from the records that
    waited. A stop meanwhile waits for the marker like any write in flight."""
    src = FakePartitionLog()
    for i in range(3):
        t = src.begin()
        src.append(b"k", b"%d" % i, 10 + i, txn=t)
        src.commit(t)  # record, commit marker: a gap of one after each record
    src.append(b"plain", b"last", 99)
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    source = FakeSource(src)
    c = copier(source, sink)
    c.start()
    c.step(0.0)  # plans r0, a marker at 1; r0 goes to the fast path
    assert c.gap_planned() and c.busy() and sink.open_gap is None
    assert sink.calls == ["produce"] and source.fetches == 1
    c.step(0.0)  # r0 confirmed: the marker is submitted (and not written yet)
    assert sink.open_gap == [1, 0, 0] and dst.log_end_offset == 1
    c.step(0.0)  # written: the records that waited are planned, r1 sent (and confirmed)
    assert dst.log_end_offset == 3 and c.progress.counters["marker_transactions"] == 1
    assert c.gap_planned()  # the next one, after r1
    assert source.fetches == 1  # the rest of the first fetch, not a new one
    for _ in range(20):
        c.step(0.0)
    assert_same_view(src, dst)
    assert c.progress.counters["marker_transactions"] == 3 and not c.busy()


def record_commit_marker_record() -> FakePartitionLog:
    """A record in a transaction, its commit marker (a gap of one), a plain record."""
    src = FakePartitionLog()
    t = src.begin()
    src.append(b"k", b"0", 10, txn=t)
    src.commit(t)
    src.append(b"k", b"2", 12)
    return src


def test_a_marker_that_ended_in_an_error_backs_off_and_the_restart_plans_it_again():
    src = record_commit_marker_record()
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    c = copier(FakeSource(src), sink)
    c.start()

    def refused(offset):
        raise ReplicationError("the record of the marker-only transaction was not refused as planned")
    sink.marker = refused
    with pytest.raises(ReplicationError, match="not refused as planned"):
        for _ in range(10):
            c.step(0.0)
    assert not c.gap_planned() and c.settle() == 0
    restarted = copier(FakeSource(src), FakeSink(dst))
    restarted.start()
    run(restarted, src, dst)
    assert_same_view(src, dst)


def test_a_stop_waits_for_the_marker_being_written_and_checks_it():
    src = record_commit_marker_record()
    dst = FakePartitionLog()
    sink = FakeSink(dst)
    c = copier(FakeSource(src), sink)
    c.start()
    c.step(0.0)
    c.step(0.0)  # submitted
    sink.open_gap[1] = 2  # the marker thread is slow
    assert c.settle() == 1 and c.settle() == 1  # in flight: the stop is not complete
    assert c.settle() == 0  # written, and checked
    assert dst.log_end_offset == 2 and c.progress.next_offset == 2
    assert c.progress.counters["marker_transactions"] == 1
    # a marker whose record the destination kept fails the partition, even while stopping
    dst2 = FakePartitionLog()
    sink2 = FakeSink(dst2)
    c2 = copier(FakeSource(src), sink2)
    c2.start()
    c2.step(0.0)
    c2.step(0.0)
    sink2.misreport[1] = 5
    with pytest.raises(PartitionFailed, match="offset 1"):
        c2.settle()
