"""Consumer-offset sync on real brokers: the worker copies a source group's committed
offsets to the destination, where a consumer of that group resumes at exactly the next
record; a group with an active member on the destination and an excluded group are left
alone."""
from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from kafka_mirrors import state as st
from tests import mirrortools as mt

pytestmark = pytest.mark.integration


def committed(cluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets of `topic` (partitions without a commit left out)."""
    admin = cluster.admin()
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    res = admin.list_consumer_group_offsets([req])[group].result(20)
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.offset >= 0}


def consume_and_commit(cluster, group: str, topic: str, counts: dict[int, int]) -> dict[int, int]:
    """A member of `group` subscribes, reads counts[p] records of each partition, commits
    the offsets after them and leaves. Returns the committed offsets."""
    c = cluster.consumer(**{"group.id": group, "enable.auto.commit": False})
    c.subscribe([topic])
    seen = {p: 0 for p in counts}
    offsets = {}
    deadline = time.monotonic() + 60
    try:
        while any(seen[p] < n for p, n in counts.items()) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            p = m.partition()
            if seen[p] < counts[p]:
                seen[p] += 1
                offsets[p] = m.offset() + 1
                if seen[p] == counts[p]:
                    c.pause([TopicPartition(topic, p)])
        assert seen == counts, seen
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()
    return offsets


def test_offsets_copied_and_group_resumes_on_destination(mirroring, cli, source, destination):
    dr = mirroring
    run = uuid.uuid4().hex[:8]
    r = cli("link", "alter", dr.name, "--config", "consumer.offset.sync.ms=1000",
            "--config", f"consumer.offset.groups.include=og-{run}-.*",
            "--config", f"consumer.offset.groups.exclude=og-{run}-excluded")
    assert r.exit_code == 0, r.stderr
    topic = dr.new_mirror(partitions=2, records=300)
    moved, excluded, busy = f"og-{run}-app", f"og-{run}-excluded", f"og-{run}-busy"

    # a member of `busy` is active on the destination before anything is synced
    holder = destination.consumer(**{"group.id": busy, "enable.auto.commit": False})
    holder.subscribe([topic])
    try:
        mt.wait_until(lambda: (holder.poll(0.2), holder.assignment())[1], 60, "the busy group's assignment")
        src_ends = dr.ends(source, topic)
        want = consume_and_commit(source, moved, topic, {0: src_ends[0] // 3, 1: src_ends[1] // 2})
        consume_and_commit(source, excluded, topic, {0: 5, 1: 5})
        consume_and_commit(source, busy, topic, {0: 7, 1: 7})
        assert committed(source, moved, topic, 2) == want

        dr.start_worker()
        dr.wait_caught_up(topic)
        mt.wait_until(lambda: committed(destination, moved, topic, 2) == want, 60,
                      f"the offsets of {moved} on the destination (worker log: {dr.worker_log()[-1500:]})")
        time.sleep(3)  # three more sync periods
        assert committed(destination, excluded, topic, 2) == {}
        holder.poll(0.1)
        assert holder.assignment(), "the destination member of the busy group left too early"
        assert committed(destination, busy, topic, 2) == {}
        # skipped on purpose (not refused by the broker), as the worker's heartbeat reports
        sync = last_offset_sync(dr)
        assert sync["skipped"] == {busy: "active on the destination (STABLE)"}, sync
        assert excluded not in sync["groups"] and sync["errors"] == {}, sync
        # and describe shows the operator the same
        r = cli("describe", "--link", dr.name, "--output", "json")
        assert r.exit_code == 0, r.stderr
        shown = json.loads(r.stdout)["links"][0]["consumer_offset_sync"]
        assert shown["skipped"] == {busy: "active on the destination (STABLE)"} and shown["errors"] == {}, shown
    finally:
        holder.close()

    # the moved group resumes on the destination at exactly the next record of the source
    for p, offset in want.items():
        src_next = first_record(source, topic, p, offset)
        dst_next = first_record(destination, topic, p, None, group=moved)
        assert src_next.offset() >= offset
        assert (dst_next.offset(), dst_next.key(), dst_next.value(), dst_next.headers()) == \
            (src_next.offset(), src_next.key(), src_next.value(), src_next.headers())


def first_record(cluster, topic: str, partition: int, offset: int | None, group: str | None = None):
    """The first read_committed record from `offset`, or from `group`'s committed offset."""
    extra = {"group.id": group} if group else {}
    c = cluster.consumer(**extra)
    try:
        c.assign([TopicPartition(topic, partition) if offset is None else TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                return m
        raise AssertionError(f"nothing read from {topic}-{partition} on {cluster.name}")
    finally:
        c.close()


def test_promote_copies_consumer_offsets_one_last_time(mirroring, cli, source, destination):
    dr = mirroring
    run = uuid.uuid4().hex[:8]
    # the worker's own sync is far off: what the destination gets, promote copied
    r = cli("link", "alter", dr.name, "--config", "consumer.offset.sync.ms=3600000",
            "--config", f"consumer.offset.groups.include=op-{run}-.*")
    assert r.exit_code == 0, r.stderr
    topic = dr.new_mirror(partitions=1, records=120)
    dr.start_worker()
    dr.wait_caught_up(topic)
    dr.wait_worker_serving(topic)
    # the worker's first sync (5 s after its start) is done: the next is an hour away
    mt.wait_until(lambda: last_offset_sync(dr) is not None, 60, "the worker's first consumer offset sync")
    group = f"op-{run}-app"
    want = consume_and_commit(source, group, topic, {0: 45})
    time.sleep(2)
    assert committed(destination, group, topic, 1) == {}
    r = cli("promote", topic, "--link", dr.name, "--yes", "--output", "json")
    assert r.exit_code == 0, r.stderr
    (row,) = json.loads(r.stdout)["topics"]
    assert row["state"] == st.STOPPED
    assert row["consumer_offsets"]["groups"] == {group: 1}, row
    assert committed(destination, group, topic, 1) == want == {0: 45}
    m = first_record(destination, topic, 0, None, group=group)
    assert m.offset() == 45


def last_offset_sync(dr) -> dict | None:
    store = st.StateStore(dr.destination.conf(), dr.name)
    try:
        beats = list(store.snapshot().workers.values())
    finally:
        store.close()
    return beats[0].get("consumer_offset_sync") if beats else None
