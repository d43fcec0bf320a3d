"""tests/mirrortools.py against a real broker: what it produces it reads back bit for bit,
and assert_identical passes on equal topics and names the offset where they differ."""
import uuid

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from tests.mirrortools import (MIB, assert_identical, log_end_offsets, make_records,
                               produce_records, snapshot, watermarks)

pytestmark = pytest.mark.integration

PARTITIONS = 3


@pytest.fixture(scope="module")
def loaded(source):
    """A 3-partition topic holding 120 awkward records, 3 of them with 1 MiB values."""
    topic = source.create_topic(f"tools-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    records = make_records(120, seed=11, big_every=40)
    counts = produce_records(source, topic, records, partitions=PARTITIONS)
    return topic, records, counts


def test_produce_then_snapshot_gives_back_every_record_exactly(source, loaded):
    topic, records, counts = loaded
    assert counts == {0: 40, 1: 40, 2: 40}
    assert log_end_offsets(source, topic) == {0: 40, 1: 40, 2: 40}
    for p in range(PARTITIONS):
        expected = records[p::PARTITIONS]  # produce_records goes round robin
        got = snapshot(source, topic, p)
        assert [s.offset for s in got] == list(range(40))
        assert [(s.key, s.value, s.headers, s.timestamp) for s in got] == \
               [(r.key, r.value, r.headers, r.timestamp_ms) for r in expected]
        assert {s.timestamp_type for s in got} == {TIMESTAMP_CREATE_TIME}
    everything = [s for p in range(PARTITIONS) for s in snapshot(source, topic, p)]
    # the mix really reached the broker and came back
    assert sum(1 for s in everything if s.value is not None and len(s.value) == MIB) == 3
    assert any(s.key is None for s in everything) and any(s.key == b"" for s in everything)
    assert any(s.value is None for s in everything) and any(s.value == b"" for s in everything)
    assert any([n for n, _ in s.headers].count("dup") >= 2 for s in everything)
    assert any(v is None for s in everything for _, v in s.headers)


def test_snapshot_of_an_empty_partition_is_empty(source):
    topic = source.create_topic(f"tools-empty-{uuid.uuid4().hex[:8]}")
    assert snapshot(source, topic, 0) == []


def test_snapshot_starts_at_the_log_start_offset(source):
    from confluent_kafka import TopicPartition

    topic = source.create_topic(f"tools-trim-{uuid.uuid4().hex[:8]}")
    produce_records(source, topic, make_records(10, seed=1))
    admin = source.admin()
    fut = admin.delete_records([TopicPartition(topic, 0, 4)])
    fut[TopicPartition(topic, 0, 4)].result(15)
    assert watermarks(source, topic, 0) == (4, 10)
    assert [s.offset for s in snapshot(source, topic, 0)] == list(range(4, 10))


def test_assert_identical_passes_for_a_topic_against_itself(source, loaded):
    topic, _, _ = loaded
    assert_identical(source, source, topic, topic, partitions=PARTITIONS)


def test_assert_identical_names_the_offset_of_an_altered_record(source, loaded):
    topic, records, _ = loaded
    copy = source.create_topic(f"tools-copy-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    altered = list(records)
    # record 3*17+1 lands on partition 1 at offset 17: give it other headers
    i = 3 * 17 + 1
    altered[i] = altered[i]._replace(headers=[("dup", b"changed")])
    produce_records(source, copy, altered, partitions=PARTITIONS)
    with pytest.raises(AssertionError) as e:
        assert_identical(source, source, topic, copy, partitions=PARTITIONS)
    msg = str(e.value)
    assert "in 1 places" in msg
    assert "partition 1 offset 17: headers" in msg
    assert "b'changed'" in msg


def test_assert_identical_reports_a_different_log_start_offset(source):
    from confluent_kafka import TopicPartition

    records = make_records(6, seed=5)
    a = source.create_topic(f"tools-a-{uuid.uuid4().hex[:8]}")
    b = source.create_topic(f"tools-b-{uuid.uuid4().hex[:8]}")
    produce_records(source, a, records)
    produce_records(source, b, records)
    admin = source.admin()  # keep the handle alive until the future resolves
    admin.delete_records([TopicPartition(b, 0, 2)])[TopicPartition(b, 0, 2)].result(15)
    with pytest.raises(AssertionError) as e:
        assert_identical(source, source, a, b, partitions=1)
    msg = str(e.value)
    assert "partition 0: log start offset 0 on the source, 2 on the destination" in msg
    assert "partition 0 offset 0: on the source only" in msg
