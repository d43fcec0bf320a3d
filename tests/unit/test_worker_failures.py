"""The worker's control loop records a copy failure as FAILED only over the ACTIVE record it
copied from, keeps a failure (and acknowledgements) it could not write and writes them
again, and never starts a mirror whose failure is still unrecorded (issue 11: `_fail`
dropped the failure when the store write failed, and wrote FAILED over a failover's
PENDING_STOPPED)."""
from __future__ import annotations

import logging
import queue

import pytest

from kafka_mirrors import state as st
from kafka_mirrors.errors import ConflictError, KafkaUnavailableError
from kafka_mirrors.offsetsync import SyncFence
from kafka_mirrors.worker import loop


class FakeStore:
    """set_state compares `current` with the store's newest record, as StateStore does."""

    def __init__(self, records: dict[str, st.MirrorRecord]):
        self.records = dict(records)
        self.down = False
        self.writes: list[tuple[str, str]] = []
        self.acks: list[list[str]] = []
        self.seen_offsets: list = []

    def set_state(self, topic, state, reason=None, *, current=None, **fields):
        if self.down:
            raise KafkaUnavailableError("destination cluster did not answer")
        found = self.records[topic]
        if current is not None and found.state != current.state:
            raise ConflictError(f"mirror '{topic}' is {found.state} now")
        self.records[topic] = st.MirrorRecord.from_json({**found.to_json(), "state": state, "reason": reason})
        self.writes.append((topic, state))
        return self.records[topic]

    def ack_many(self, topics, worker_id, what, seen_offset=None):
        self.seen_offsets.append(seen_offset)
        if self.down:
            raise KafkaUnavailableError("destination cluster did not answer")
        self.acks.append(list(topics))


def record(topic: str, state: str) -> st.MirrorRecord:
    return st.MirrorRecord.from_json({"link": "dr", "topic": topic, "source_topic": topic, "state": state,
                                      "partitions": 1, "updated_at": 1.0})


class FakePlane:
    def __init__(self):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()


class FakeLink:
    name = "dr"


def worker(store: FakeStore, known: dict[str, st.MirrorRecord]) -> loop.Worker:
    w = loop.Worker.__new__(loop.Worker)
    w.link, w.worker_id, w.store = FakeLink(), "w1", store
    w.known, w.running, w.errors = dict(known), set(), {}
    w.plane = FakePlane()
    w.seen_offset = 17
    w._acks, w._acks_retry_at, w._failing, w._fails_retry_at, w._failed = [], 0.0, {}, 0.0, set()
    w._write_progress = lambda: None
    w.offset_fence = SyncFence()
    return w


def test_a_failure_is_recorded_over_the_active_record_it_copied_from():
    store = FakeStore({"t": record("t", st.ACTIVE)})
    w = worker(store, {"t": store.records["t"]})
    w._fail("t", 0, 42, "another writer wrote into the mirror")
    assert store.records["t"].state == st.FAILED and w._failing == {} and w.errors == {}


def test_a_failure_not_written_is_kept_shown_and_written_again(monkeypatch):
    store = FakeStore({"t": record("t", st.ACTIVE)})
    w = worker(store, {"t": store.records["t"]})
    store.down = True
    clock = [100.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    w._fail("t", 0, 42, "boom")
    assert store.records["t"].state == st.ACTIVE
    assert "t" in w._failing and w.errors["t"] == "FAILED, not recorded yet: boom"
    # the follower brings the ACTIVE record again: the failed mirror is not started again
    w._reconcile(store.records["t"])
    assert w.plane.inbox.empty() and "t" not in w.running
    store.down = False
    w._record_failures()  # too early: waits RETRY_WRITE_S
    assert store.records["t"].state == st.ACTIVE
    clock[0] += loop.RETRY_WRITE_S
    w._record_failures()
    assert store.records["t"].state == st.FAILED and w._failing == {} and "t" not in w.errors


def test_a_failover_that_landed_first_wins_over_the_failure(caplog):
    store = FakeStore({"t": record("t", st.ACTIVE)})
    w = worker(store, {"t": store.records["t"]})
    # the failover's PENDING_STOPPED is in the store, the worker has not seen it yet
    store.records["t"] = record("t", st.PENDING_STOPPED)
    with caplog.at_level(logging.WARNING):
        w._fail("t", 0, 1, "boom")
    assert store.records["t"].state == st.PENDING_STOPPED and store.writes == []
    assert w._failing == {} and "not marked FAILED" in caplog.text
    # and once the worker sees it: acknowledged (at the end of the turn), never FAILED
    w._reconcile(store.records["t"])
    w._flush_acks()
    assert store.acks == [["t"]]


@pytest.mark.parametrize("state", [st.PAUSED, st.PENDING_STOPPED])
def test_a_failure_of_a_mirror_known_to_be_stopping_is_dropped(state):
    store = FakeStore({"t": record("t", state)})
    w = worker(store, {"t": store.records["t"]})
    w._fail("t", 0, 1, "boom")
    assert store.writes == [] and w._failing == {}


def test_acknowledgements_not_written_are_written_again(monkeypatch):
    store = FakeStore({"t": record("t", st.PENDING_STOPPED)})
    w = worker(store, {})
    clock = [5.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    store.down = True
    w._acks = ["t"]
    w._flush_acks()
    assert store.acks == [] and w._acks == ["t"]
    store.down = False
    w._flush_acks()
    assert store.acks == []  # not before RETRY_WRITE_S
    clock[0] += loop.RETRY_WRITE_S
    w._flush_acks()
    assert store.acks == [["t"]] and w._acks == []
    assert store.seen_offsets[-1] == 17  # how far into the state topic it had applied


def test_a_mirror_copying_again_is_not_acknowledged_as_stopped():
    store = FakeStore({"t": record("t", st.ACTIVE)})
    w = worker(store, {})
    w._acks, w.running = ["t"], {"t"}
    w._flush_acks()
    assert store.acks == [] and w._acks == []


def test_only_the_sources_silence_makes_the_jobs_suspect_the_source():
    # issue 11: a destination that did not answer the offset sync (or auto-create, or the
    # ACL re-check) paused copying as "source unreachable"
    from kafka_mirrors.worker.jobs import Jobs

    class W:
        src_admin = type("A", (), {"label": "source cluster 127.0.0.1:9092"})()
        notes: queue.SimpleQueue = queue.SimpleQueue()

    jobs = Jobs.__new__(Jobs)
    jobs.w, jobs.name = W(), "dr"

    def fail(exc):
        def fn():
            raise exc
        return fn

    jobs._guard("consumer offset sync", fail(KafkaUnavailableError(
        "destination cluster 127.0.0.1:9093 did not answer within 15 s (committing offsets)")))
    assert W.notes.empty()
    jobs._guard("following source metadata", fail(KafkaUnavailableError(
        "source cluster 127.0.0.1:9092 did not answer within 5 s (describing topic 't')")))
    kind, why = W.notes.get_nowait()
    assert kind == "suspect" and why.startswith("source cluster 127.0.0.1:9092")


def test_an_active_record_before_the_failed_one_does_not_start_the_copy_again():
    # review: FAILED was written, but the follower first brings an ACTIVE record written
    # before it (an ACL re-check, a config change): the copy must not start again
    store = FakeStore({"t": record("t", st.ACTIVE)})
    w = worker(store, {"t": store.records["t"]})
    w._fail("t", 0, 1, "boom")
    assert store.records["t"].state == st.FAILED
    w._reconcile(record("t", st.ACTIVE))
    assert w.plane.inbox.empty() and "t" not in w.running
    w._reconcile(store.records["t"])  # the FAILED record itself
    w._reconcile(record("t", st.ACTIVE))  # made ACTIVE again by an operator, after it
    assert not w.plane.inbox.empty() and "t" in w.running


def test_a_pending_stop_read_with_other_records_is_acknowledged_with_the_offset_after_it():
    # review: the ack was flushed inside _reconcile, before seen_offset covered the record
    store = FakeStore({"t": record("t", st.PENDING_STOPPED)})
    w = worker(store, {})

    class Follower:
        error, position = None, 21

        def poll(self, timeout):
            return [("mirror/dr/t", store.records["t"].to_json())]

    w.seen_offset = 17
    w._follow_state(Follower(), 0)
    w._flush_acks()
    assert store.acks == [["t"]] and store.seen_offsets[-1] == 21


def test_the_jobs_thread_reads_and_writes_state_through_a_store_of_its_own():
    # a StateStore's consumer and cached snapshot serve one thread: the read-only refresh of
    # the jobs thread and the control loop's writes interleaved on one store before
    from types import SimpleNamespace

    from kafka_mirrors import state as st
    from kafka_mirrors.worker.jobs import Jobs
    options = {"topic.config.sync.ms": "5000", "consumer.offset.sync.enable": True, "consumer.offset.sync.ms": "5000"}
    link = SimpleNamespace(name="dr", option=options.get)
    worker = SimpleNamespace(link=link, dst_conf={"bootstrap.servers": "127.0.0.1:1"},
                             store=st.StateStore({"bootstrap.servers": "127.0.0.1:1"}, "dr", 3.0))
    jobs = Jobs(worker)
    assert isinstance(jobs.store, st.StateStore) and jobs.store is not worker.store
    assert (jobs.store.link, jobs.store.timeout) == ("dr", 3.0)


def test_the_copy_plane_is_told_fresh_once_the_state_topic_end_it_was_asked_is_applied():
    """The control loop sends the copy plane a "fresh" command stamped with when an end
    of the state topic was asked (by StateTopicEnds' thread), only once every record
    below that end is applied (after the commands they gave: the inbox is in order)."""
    from kafka_mirrors.worker.tasks import Command

    class Ends:
        answers: queue.SimpleQueue = queue.SimpleQueue()

    w = worker(FakeStore({}), {})  # the follower has applied every record below 17
    w.state_ends, w._state_ends = Ends(), []
    w._state_freshness()
    assert w.plane.inbox.empty()
    Ends.answers.put((10.0, 20))  # asked at 10.0: the end was 20
    w._state_freshness()
    assert w.plane.inbox.empty()
    Ends.answers.put((10.5, 22))
    w.seen_offset = 21
    w._state_freshness()
    assert w.plane.inbox.get_nowait() == Command("fresh", at=10.0) and w.plane.inbox.empty()
    w.seen_offset = 22
    w._state_freshness()
    assert w.plane.inbox.get_nowait() == Command("fresh", at=10.5)
    w._state_freshness()
    assert w.plane.inbox.empty() and w._state_ends == []
    for k in range(100):  # a follower that cannot read: only the latest answers are kept
        Ends.answers.put((11.0 + k, 100 + k))
    w._state_freshness()
    assert len(w._state_ends) == 64 and w._state_ends[-1] == (110.0, 199)


def test_a_fresh_view_is_younger_than_failovers_wait_for_acknowledgements():
    """A worker stopped through a failover it could not acknowledge resumes with a view
    older than the failover's record by the time the failover reads its failover point."""
    from kafka_mirrors import dr
    assert loop.STATE_FRESH_S < dr.FAILOVER_ACK_WAIT_S
    assert loop.STATE_END_ASK_S < loop.STATE_FRESH_S / 3


def test_the_heartbeat_says_why_the_worker_is_not_writing(monkeypatch):
    """A worker whose view of the state store is stale (or whose group lease lapsed)
    writes nothing; its heartbeat says so, with the view's age, for describe."""
    import math

    class Lease:
        error = None
        ok = True

        def lease_ok(self, now):
            return self.ok
    w = worker(FakeStore({}), {})
    w.membership = Lease()
    clock = [500.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    w.plane.state_fresh_at = -math.inf
    assert w._state_view_age() is None and "not fresh yet" in w._not_writing()
    w.plane.state_fresh_at = 499.0
    assert w._state_view_age() == 1.0 and w._not_writing() is None
    clock[0] = 499.0 + loop.STATE_FRESH_S + 4
    assert w._not_writing() == ("its view of the state store is 7 s old (the state topic's end not read, "
                                "or not caught up with)")
    w.plane.state_fresh_at = clock[0]
    w.membership.ok, w.membership.error = False, "commit refused: REBALANCE_IN_PROGRESS"
    assert w._not_writing() == "its group lease does not hold (commit refused: REBALANCE_IN_PROGRESS)"


def test_a_stop_is_acknowledged_only_once_no_offset_sync_write_of_it_is_in_flight():
    """A failover's PENDING_STOPPED closes the mirror to the offset sync at once; a write
    of its group offsets that began before is waited out by holding the acknowledgement
    back a turn at a time (the control loop never blocks on it)."""
    store = FakeStore({"t": record("t", st.ACTIVE), "u": record("u", st.ACTIVE)})
    w = worker(store, {})
    w._reconcile(store.records["t"])
    w.running.clear()
    w.plane.inbox = FakePlane().inbox
    assert w.offset_fence.begin(["t", "u"]) == {"t", "u"}  # the sync's write is in flight
    for topic in ("t", "u"):
        w._reconcile(record(topic, st.PENDING_STOPPED))
    assert w.offset_fence.begin(["t"]) == set()  # no new write of a stopping mirror starts
    w._flush_acks()
    assert store.acks == [] and sorted(w._acks) == ["t", "u"]
    w.offset_fence.end(["t", "u"])  # the write answered
    w._flush_acks()
    assert store.acks == [["t", "u"]] and w._acks == []
