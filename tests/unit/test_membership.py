"""The rules that keep two workers of a link from writing one partition (worker/membership.py)
and the copy plane's side of a slot moving away (worker/tasks.py), on fakes: the lease, the
release, the grace, and the plane letting go of a slot only once its writes settled."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafka_mirrors import state as st
from kafka_mirrors.replication.copier import PartitionFailed
from kafka_mirrors.kafka.partition import OffsetReader
from kafka_mirrors.worker import membership as mb
from kafka_mirrors.worker import tasks


class FakeConsumer:
    def __init__(self, committed=None, refuse: bool = False):
        self.commits: list[list[TopicPartition]] = []
        self._committed = committed or {}
        self.refuse = refuse

    def commit(self, offsets, asynchronous):
        assert asynchronous is False
        if self.refuse:
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
        self.commits.append(offsets)

    def committed(self, partitions, timeout):
        out = []
        for tp in partitions:
            meta = self._committed.get(tp.partition)
            out.append(TopicPartition(tp.topic, tp.partition, 0, metadata=meta) if meta
                       else TopicPartition(tp.topic, tp.partition))
        return out


class HeldPlane:
    def __init__(self, held=(), unclean=()):
        self.held, self.unclean = set(held), set(unclean)

    def held_slots(self):
        return frozenset(self.held)

    def unclean_slots(self):
        return frozenset(self.unclean)


def member(consumer, plane=None) -> mb.Membership:
    m = mb.Membership({"bootstrap.servers": "127.0.0.1:1"}, "dr", "w-me", session_timeout_ms=10000,
                      delivery_timeout_ms=30000, plane=plane)
    m.consumer = consumer
    return m


def tps(*slots):
    return [TopicPartition(mb.SLOTS_TOPIC, k) for k in slots]


def metas(commit) -> dict[int, dict]:
    return {tp.partition: json.loads(tp.metadata) for tp in commit}


def test_the_lease_is_a_quarter_of_the_session_and_the_grace_outlasts_it_and_the_writes():
    assert mb.lease_seconds(10000) == 2.5 and mb.lease_seconds(6000) == 2.0
    assert mb.grace_seconds(10000, 30000) == 2.5 + 30 + mb.GRACE_MARGIN_S


def test_only_an_accepted_commit_renews_the_lease():
    c = FakeConsumer()
    m = member(c)
    m.owned = frozenset({1, 2})
    m.assigned = {1, 2}
    assert not m.lease_ok(0.0)
    m._commit(released=())
    assert m.lease_ok(m.lease_until - 0.01) and not m.lease_ok(m.lease_until)
    assert metas(c.commits[-1]) == {k: {"worker": "w-me", "host": socket.gethostname(), "pid": os.getpid(),
                                        "at": metas(c.commits[-1])[k]["at"], "released": False,
                                        "lease_s": 2.5, "delivery_s": 30.0} for k in (1, 2)}
    c.refuse, before = True, m.lease_until
    m._commit(released=())
    assert m.lease_until == before and "generation" in m.error


def test_a_slot_released_by_its_last_owner_or_never_owned_is_claimed_at_once():
    c = FakeConsumer(committed={3: json.dumps({"worker": "w-other", "host": "elsewhere", "pid": 1, "released": True})})
    m = member(c)
    m._on_assign(c, tps(3, 4))
    m._read_grace(100.0)
    m._claim(100.0)
    assert m.owned == {3, 4} and not m.claimable_at


def test_a_slot_its_last_owner_did_not_release_waits_the_grace():
    c = FakeConsumer(committed={5: json.dumps({"worker": "w-other", "host": "elsewhere", "pid": 1,
                                               "released": False})})
    m = member(c)
    m._on_assign(c, tps(5))
    m._read_grace(100.0)
    m._claim(100.0 + m.grace_s - 0.1)
    assert m.owned == frozenset() and m.claimable_at == {5: 100.0 + m.grace_s}
    m._claim(100.0 + m.grace_s)
    assert m.owned == {5}


def test_a_dead_process_of_this_host_needs_no_grace_a_live_one_does():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    assert mb.previous_owner_gone({"host": host, "pid": dead.pid, "released": False}, host)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not mb.previous_owner_gone({"host": host, "pid": live.pid, "released": False}, host)
    finally:
        live.kill()
        live.wait()
    assert not mb.previous_owner_gone({"host": "other-host", "pid": dead.pid, "released": False}, host)
    assert not mb.previous_owner_gone({"host": host, "pid": os.getpid(), "released": False}, host)


def test_a_revoked_slot_is_committed_released_only_after_the_plane_let_go():
    c = FakeConsumer()
    plane = HeldPlane({1, 2})
    m = member(c, plane)
    m.assigned, m.owned = {1, 2}, frozenset({1, 2})
    m.release_wait_s = 0.3
    m._on_revoke(c, tps(2))     # the plane still holds slot 2: handed over unreleased
    assert m.owned == {1} and c.commits == []
    m.assigned, m.owned = {1, 2}, frozenset({1, 2})
    plane.held = {1}
    m._on_revoke(c, tps(2))     # the plane let go: committed released
    assert metas(c.commits[-1])[2]["released"] is True and list(metas(c.commits[-1])) == [2]


def test_a_slot_revoked_in_its_grace_keeps_its_last_owners_word():
    c = FakeConsumer()
    m = member(c, HeldPlane())
    m.assigned, m.claimable_at = {7}, {7: 1e12}
    m._on_revoke(c, tps(7))
    assert c.commits == [] and 7 not in m.claimable_at


def test_losing_the_membership_ends_the_lease_at_once():
    c = FakeConsumer()
    m = member(c, HeldPlane())
    m.assigned, m.owned, m.lease_until = {1}, frozenset({1}), 1e12
    m._on_lost(c, tps(1))
    assert not m.lease_ok(0.0) and m.owned == frozenset()


# ---------------------------------------------------------------- the copy plane's side

class FakeCopier:
    def __init__(self, fail: str | None = None):
        self.fail = fail

    def settle(self):
        if self.fail:
            raise PartitionFailed(9, self.fail)
        return 0


class FakeTaskSource:
    released = False

    def release(self):
        self.released = True


class FakeProducers:
    def __init__(self):
        self.pending: dict = {}
        self.inflight: dict[tuple[str, int], int] = {}
        self.transactional = {}
        self.dropped: list[int] = []
        self.forgotten: list[tuple[str, int]] = []

    def in_flight(self, topic, p):
        return self.inflight.get((topic, p), 0)

    def forget(self, topic, p):
        self.forgotten.append((topic, p))
        self.pending.pop((topic, p), None)

    def outstanding(self, topic, p):
        return self.pending.get((topic, p))

    def poll(self, timeout):
        pass

    def drop_slot(self, k, flush=True):
        self.transactional.pop(k, None)
        self.dropped.append(k)


class FakeFeeds:
    def high_watermark(self, topic, p):
        return 42


class Ownership:
    def __init__(self, owned):
        self.owned = frozenset(owned)

    def lease_ok(self, now):
        return True


def plane_with(topic: str, partitions: int, owned) -> tasks.CopyPlane:
    plane = tasks.CopyPlane.__new__(tasks.CopyPlane)
    plane.name, plane.ownership = "dr", Ownership(owned)
    plane._owned = plane.ownership.owned
    plane._held = plane._owned
    plane._unclean, plane._orphans = {}, {}
    plane.delivery_timeout_ms = 30000
    plane.producers, plane.feeds, plane.source_hw = FakeProducers(), FakeFeeds(), {}
    plane.src_offsets = plane.dst_offsets = OffsetReader(None, "fake")
    plane.outbox = __import__("queue").SimpleQueue()
    rec = st.MirrorRecord.from_json({"link": "dr", "topic": topic, "source_topic": topic, "state": st.ACTIVE,
                                     "partitions": partitions, "updated_at": 1.0})
    m = tasks._Mirror(rec, prepared=True, source_partitions=partitions)
    for p in range(partitions):
        if st.slot_of(topic, p) in owned:
            m.tasks[p] = tasks._Task(FakeCopier(), FakeTaskSource(), slot=st.slot_of(topic, p))
    plane.mirrors = {topic: m}
    return plane


def test_the_plane_holds_a_slot_it_gave_up_until_its_writes_settled():
    topic = "orders"
    slots = {st.slot_of(topic, p) for p in range(6)}
    plane = plane_with(topic, 6, slots)
    gone = st.slot_of(topic, 0)
    parts = [p for p in range(6) if st.slot_of(topic, p) == gone]
    for p in parts:
        plane.producers.inflight[(topic, p)] = 1
    plane.producers.transactional[gone] = object()
    plane.ownership.owned = frozenset(slots - {gone})
    plane._apply_ownership()
    m = plane.mirrors[topic]
    assert gone in plane.held_slots() and sorted(m.releasing) == parts
    assert all(m.releasing[p].source.released for p in parts) and not (set(m.tasks) & set(parts))
    assert plane.producers.dropped == []
    for p in parts:
        plane.producers.inflight[(topic, p)] = 0
    plane._apply_ownership()
    assert gone not in plane.held_slots() and not m.releasing
    assert plane.producers.dropped == [gone] and sorted(plane.producers.forgotten) == [(topic, p) for p in parts]
    # the slot comes back: its partitions start again
    plane.ownership.owned = frozenset(slots)
    plane._apply_ownership()
    assert sorted(m.to_start) == parts


def test_a_failed_write_of_a_released_slot_is_no_failure_a_misplaced_one_is():
    topic = "orders"
    gone = st.slot_of(topic, 0)
    plane = plane_with(topic, 1, {gone})
    m = plane.mirrors[topic]
    m.tasks[0].copier.fail = "delivery failed: Local: Message timed out"
    plane.ownership.owned = frozenset()
    plane._apply_ownership()
    assert not m.releasing and not m.stopping and gone not in plane.held_slots()
    # but that write may still land: the slot is handed over unreleased (the next owner waits)
    assert plane.unclean_slots() == {gone}

    plane = plane_with(topic, 1, {gone})
    m = plane.mirrors[topic]
    m.tasks[0].copier.fail = "delivery landed at 7 (another writer?)"
    plane.producers.inflight[(topic, 0)] = 1
    plane._apply_ownership()  # nothing changed yet
    plane.ownership.owned = frozenset()
    plane._remember_hw = lambda m: None
    plane._apply_ownership()
    assert m.stopping and m.stop_failed is not None and "another writer" in m.stop_failed.error


def test_a_slot_past_its_grace_is_owned_only_once_a_commit_naming_this_worker_was_accepted():
    c = FakeConsumer(refuse=True)
    m = member(c)
    m.assigned, m.claimable_at = {4}, {4: 0.0}
    m._claim(1.0)
    assert m.owned == frozenset() and m.claimable_at == {4: 0.0}
    c.refuse = False
    m._claim(2.0)
    assert m.owned == {4} and metas(c.commits[-1])[4]["worker"] == "w-me"


class BrokenCommitted(FakeConsumer):
    def committed(self, partitions, timeout):
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))


class ErrorCommitted(FakeConsumer):
    def committed(self, partitions, timeout):
        # what librdkafka returns for a partition whose offset could not be read
        from types import SimpleNamespace
        return [SimpleNamespace(topic=tp.topic, partition=tp.partition, metadata=None,
                                error=KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)) for tp in partitions]


def test_a_slot_whose_last_owner_cannot_be_read_waits_the_grace():
    for c in (BrokenCommitted(), ErrorCommitted()):
        m = member(c)
        m._on_assign(c, tps(6))
        m._read_grace(100.0)
        assert m.claimable_at == {6: 100.0 + m.grace_s}, type(c).__name__


def test_the_grace_is_the_last_owners_if_its_lease_and_delivery_timeout_were_longer():
    c = FakeConsumer(committed={2: json.dumps({"worker": "w-other", "host": "elsewhere", "pid": 1,
                                               "released": False, "lease_s": 15.0, "delivery_s": 120.0})})
    m = member(c)
    m._on_assign(c, tps(2))
    m._read_grace(0.0)
    assert m.claimable_at == {2: 15.0 + 120.0 + mb.GRACE_MARGIN_S}


def test_a_slot_with_a_failed_write_is_handed_over_unreleased():
    c = FakeConsumer()
    m = member(c, HeldPlane(held=(), unclean={3}))
    m.assigned, m.owned = {3}, frozenset({3})
    m._on_revoke(c, tps(3))
    assert c.commits == [] and m.owned == frozenset()


def test_a_mirror_that_failed_with_writes_in_flight_keeps_their_slot_held_until_they_settled():
    import collections
    topic = "orders"
    k = st.slot_of(topic, 0)
    plane = plane_with(topic, 1, {k})
    plane._publish_one = lambda *a: None
    m = plane.mirrors[topic]
    reports = collections.deque([(5, 1, 0)])
    plane.producers.pending[(topic, 0)] = reports
    plane.producers.inflight[(topic, 0)] = 1
    plane._fail(m, 0, "delivery landed at 3 (another writer?)", 5)
    plane._settle_stops()
    assert topic not in plane.mirrors          # the failure is reported at once
    plane.ownership.owned = frozenset()
    plane._apply_ownership()
    assert k in plane.held_slots()             # but the slot is not let go
    reports.clear()                            # its last report came
    plane._apply_ownership()
    assert k not in plane.held_slots()


def test_a_timed_out_write_holds_its_slot_back_a_refused_one_fails_the_mirror():
    topic = "orders"
    k = st.slot_of(topic, 0)
    plane = plane_with(topic, 1, {k})
    m = plane.mirrors[topic]
    m.tasks[0].copier.fail = "delivery failed: Local: Message timed out"
    assert plane._settle_or_fail(m) is False and not m.stopping
    assert k in plane.unclean_slots()
    plane._apply_ownership()
    assert k in plane.held_slots()
    m.tasks.clear()
    m.restart_at = None
    assert plane._add_partitions(m, [0]) == []          # not started again while held
    plane._unclean[k] = 0.0                             # the hold is over
    plane._apply_ownership()
    assert m.to_start == [0] and not plane.unclean_slots()

    plane = plane_with(topic, 1, {k})
    m = plane.mirrors[topic]
    m.tasks[0].copier.fail = "delivery failed: Broker: Message size too large"
    plane._remember_hw = lambda m: None
    assert plane._settle_or_fail(m) is True and m.stop_failed is not None and not plane.unclean_slots()
