"""The copy plane's turn steps only tasks with something to do (issue 9: at 10,000 idle
partitions, looking at every task every turn took a third of a core), and every task
at each full look."""
from __future__ import annotations

import queue

from kafka_mirrors import state as st
from kafka_mirrors.worker import tasks


class StepCopier:
    def __init__(self):
        self.steps = 0
        self.in_flight = 0
        self.writes_per_step = 0

    def busy(self):
        return self.in_flight > 0

    def gap_planned(self):
        return False

    def step(self, timeout):
        self.steps += 1
        self.in_flight = self.writes_per_step  # what the step sent, not confirmed yet
        return self.progress

    @property
    def progress(self):
        return type("P", (), {"next_offset": self.steps})()


class Feed:
    def __init__(self):
        self.ready = set()


class Source:
    def __init__(self, feed, topic, p):
        self.feed, self.topic, self.partition = feed, topic, p

    def has_data(self):
        return (self.topic, self.partition) in self.feed.ready


class Feeds:
    def __init__(self, feed):
        self.feed = feed

    def ready(self):
        for key in list(self.feed.ready):
            yield self.feed, key


class AllSlots:
    owned = frozenset(range(st.SLOTS))

    def lease_ok(self, now):
        return True


def plane(partitions: int):
    p = tasks.CopyPlane.__new__(tasks.CopyPlane)
    feed = Feed()
    p.name, p.ownership, p.feeds, p.inbox = "dr", AllSlots(), Feeds(feed), queue.SimpleQueue()
    p._busy, p._by_source, p._next_full_scan = set(), {}, 0.0
    rec = st.MirrorRecord.from_json({"link": "dr", "topic": "m", "source_topic": "src", "state": st.ACTIVE,
                                     "partitions": partitions, "updated_at": 1.0})
    m = tasks._Mirror(rec, prepared=True, source_partitions=partitions)
    for q in range(partitions):
        m.tasks[q] = tasks._Task(StepCopier(), Source(feed, "src", q), next_idle=1e18, slot=st.slot_of("m", q))
        p._by_source[(id(feed), "src", q)] = ("m", q)
    p.mirrors = {"m": m}
    return p, feed, m


def steps(m):
    return [m.tasks[q].copier.steps for q in sorted(m.tasks)]


def test_between_full_looks_a_turn_steps_the_ready_and_the_busy_tasks_only():
    p, feed, m = plane(6)
    now = 100.0
    p._steps(now)  # the first turn is a full look: nothing to do anywhere
    assert steps(m) == [0] * 6 and p._next_full_scan == now + tasks.FULL_SCAN_S
    feed.ready.update({("src", 2), ("src", 4)})
    m.tasks[4].copier.writes_per_step = 1
    p._steps(now + 0.1)
    assert steps(m) == [0, 0, 1, 0, 1, 0]
    # partition 4 has writes in flight and is stepped again; 2 took its records (left alone)
    feed.ready.clear()
    p._steps(now + 0.2)
    assert steps(m) == [0, 0, 1, 0, 2, 0]
    m.tasks[4].copier.writes_per_step = 0
    p._steps(now + 0.3)  # its writes confirmed in this step: not busy any more
    assert steps(m) == [0, 0, 1, 0, 3, 0] and ("m", 4) not in p._busy
    p._steps(now + 0.35)
    assert steps(m) == [0, 0, 1, 0, 3, 0]


def test_a_full_look_steps_what_the_sets_do_not_name():
    # an idle check falling due, or a task with data that no set names: the full look,
    # every FULL_SCAN_S, steps it
    p, feed, m = plane(3)
    p._steps(10.0)
    m.tasks[1].next_idle = 10.2
    m.tasks[0].source.has_data = lambda: True  # data the ready set does not name
    p._steps(10.3)  # not a full look yet: neither is stepped
    assert steps(m) == [0, 0, 0]
    p._steps(10.0 + tasks.FULL_SCAN_S)
    assert steps(m) == [1, 1, 0]


def test_read_ahead_reads_the_destination_only_of_partitions_whose_slot_was_fenced_first():
    calls = []

    class Producers:
        def fence_slots(self, slots):
            calls.append(("fence", frozenset(slots)))
            return set(sorted(slots)[1:])  # the first slot's init failed: left to txn_producer

    class Reader:
        def __init__(self, name):
            self.name = name

        def read_ahead(self, tps):
            calls.append((self.name, [p for _, p in tps]))

    p, feed, m = plane(6)
    p.producers, p.dst_offsets, p.src_offsets = Producers(), Reader("destination"), Reader("source")
    m.to_start, m.partitions = [0, 1, 2, 3, 4, 5, 6], 6  # 6: added on the source a moment ago
    p._read_ahead(m)
    slots = {st.slot_of("m", q): q for q in range(6)}
    unfenced = slots[min(slots)]
    assert calls[0] == ("fence", frozenset(slots))
    assert calls[1] == ("destination", [q for q in range(6) if q != unfenced])  # after the fence
    assert calls[2] == ("source", list(range(6)))


def test_nothing_is_stepped_unless_the_view_of_the_state_store_is_fresh(monkeypatch):
    """With a bound (the worker's STATE_FRESH_S), a task is stepped only while the last
    "fresh" command (every state record before its time applied) is younger than it: a
    worker resumed after a SIGSTOP through a failover writes nothing before it saw it."""
    p, feed, m = plane(2)
    p.state_fresh_s = 3.0
    clock = [100.0]
    monkeypatch.setattr(tasks.time, "monotonic", lambda: clock[0])
    feed.ready.update({("src", 0), ("src", 1)})
    p._steps(100.0)
    assert steps(m) == [0, 0] and not p.may_write_now(100.0)  # never told: nothing written
    p.inbox.put(tasks.Command("fresh", at=99.5))
    p.inbox.put(tasks.Command("fresh", at=98.0))  # an older one does not take it back
    assert p._commands() is False
    assert p.may_write_now(100.0) and p.write_deadline() == 102.5
    p._steps(100.0 + tasks.FULL_SCAN_S)
    assert steps(m) == [1, 1]
    clock[0] = 102.5  # stale: not stepped
    p._steps(102.5 + 2 * tasks.FULL_SCAN_S)
    assert steps(m) == [1, 1] and not p.may_write_now(102.5)


def test_the_write_deadline_is_the_sooner_of_the_lease_and_the_fresh_view():
    p, _feed, _m = plane(1)

    class Lease:
        owned = frozenset(range(st.SLOTS))
        lease_until = 50.0

        def lease_ok(self, now):
            return now < self.lease_until
    p.ownership = Lease()
    assert p.write_deadline() == 50.0  # no bound on the view: the lease alone
    p.state_fresh_s, p.state_fresh_at = 3.0, 40.0
    assert p.write_deadline() == 43.0
    p.state_fresh_at = 49.0
    assert p.write_deadline() == 50.0
    assert p.may_write_now(49.9) and not p.may_write_now(50.0)


def test_fresh_commands_that_came_during_a_long_step_are_taken_unless_another_command_is_first(monkeypatch):
    """A step blocked for seconds (a source call on a slow link) finds its view stale: the
    fresh commands that came meanwhile are taken at once if nothing else came before them;
    after any other command they wait with it for the next turn, which applies it first."""
    p, _feed, m = plane(1)
    p.state_fresh_s, p.state_fresh_at = 3.0, 100.0
    clock = [104.0]
    monkeypatch.setattr(tasks.time, "monotonic", lambda: clock[0])
    p.inbox.put(tasks.Command("fresh", at=101.5))
    p.inbox.put(tasks.Command("fresh", at=103.5))
    assert p.write_deadline() == 106.5 and p.inbox.empty()
    clock[0] = 107.0
    p.inbox.put(tasks.Command("stop", "m", why="state is now PENDING_STOPPED", ack=True))
    p.inbox.put(tasks.Command("fresh", at=106.5))
    assert p.write_deadline() == 106.5 and not p.may_write_now(107.0)  # the stop comes first
    assert p.write_deadline() == 106.5  # asked again: still waiting behind the stop
    p._begin_stop = lambda mirror, why, ack: setattr(mirror, "stopping", True)
    assert p._commands() is False
    assert m.stopping and p.state_fresh_at == 106.5 and p.may_write_now(107.0)


def test_a_turn_cut_short_by_a_command_goes_on_where_the_last_one_stopped():
    """Every partition busy and a command waiting after each step (the control loop sends
    "fresh" every half second): each turn steps one partition, the next one in order, not
    the first again. From the start of the order, partitions after a busy one were never
    stepped (a 50-kill run left a compacted mirror at offset 0 for minutes)."""
    p, feed, m = plane(3)
    for q in range(3):
        m.tasks[q].copier.writes_per_step = 1
        m.tasks[q].copier.in_flight = 1
    p._next_full_scan = 1e18  # not a full look: the busy set alone
    p._busy.update(("m", q) for q in range(3))
    stepped = []
    for turn in range(7):
        p.inbox.put(tasks.Command("update", "m", record=m.record))
        before = steps(m)
        assert p._steps(100.0 + turn) is True
        stepped += [q for q in range(3) if steps(m)[q] != before[q]]
        p._commands()
    assert stepped == [0, 1, 2, 0, 1, 2, 0]
    # a cursor whose partition is not busy now: the next one after it in order
    p._busy.discard(("m", 1))
    p._step_cursor = ("m", 0)
    p.inbox.put(tasks.Command("update", "m", record=m.record))
    before = steps(m)
    p._steps(200.0)
    assert [q for q in range(3) if steps(m)[q] != before[q]] == [2]


def test_a_partition_failure_in_a_step_fails_its_mirror_and_the_turn_goes_on_with_the_others(monkeypatch):
    """A broken invariant (a write at a wrong offset) fails the mirror, once, and its other
    partitions are not stepped in that turn; a write of unknown outcome backs it off."""
    from kafka_mirrors.replication.copier import PartitionFailed
    p, feed, m = plane(3)
    failed, backed = [], []
    p._fail = lambda mirror, q, cause, offset: failed.append((q, offset, cause))
    p._back_off = lambda mirror, why: backed.append(why)
    p.src_admin, p.delivery_timeout_ms, p._unclean = None, 30000, {}
    monkeypatch.setattr(tasks, "source_topic", lambda admin, record: None)  # the source topic did not change

    def broken(timeout):
        raise PartitionFailed(7, "the write landed at offset 9")
    m.tasks[0].copier.step = broken
    feed.ready.update({("src", 0), ("src", 1), ("src", 2)})
    p._steps(100.0)
    assert failed == [(0, 7, "offset 7: the write landed at offset 9")] and not backed
    assert steps(m)[1:] == [0, 0]  # the failed mirror's other partitions wait

    def timed_out(timeout):
        raise PartitionFailed(8, "delivery failed: Local: Message timed out")
    m.tasks[0].copier.step = timed_out
    failed.clear()
    p._steps(100.0 + tasks.FULL_SCAN_S)
    assert not failed and len(backed) == 1 and "timed out" in backed[0]


class _Released:
    def release(self):
        pass


def backing_plane(monkeypatch, now):
    p, feed, m = plane(2)
    p.outbox, p.source_hw = queue.SimpleQueue(), {}
    p._remember_hw = lambda mirror: None
    p._settle_or_fail = lambda mirror: False
    for task in m.tasks.values():
        task.source = _Released()
    monkeypatch.setattr(tasks.time, "monotonic", lambda: now[0])
    return p, m


def events(p):
    out = []
    while not p.outbox.empty():
        out.append(p.outbox.get())
    return out


def test_a_closed_write_gate_restarts_the_mirror_soon_and_is_no_error(monkeypatch):
    """A gate that closed mid-step (the lease lapsed, the view of the state store went
    stale: NotWriting) is not a failure of the mirror: it starts again after
    BACKOFF_MIN_S, its back-off does not double, and no error is reported for it."""
    now = [1000.0]
    p, m = backing_plane(monkeypatch, now)
    for _ in range(3):
        m.restart_at = None
        p._back_off(m, "partition 0: no longer writing", not_writing=True)
        assert m.restart_at == now[0] + tasks.BACKOFF_MIN_S
    assert m.backoff == tasks.BACKOFF_MIN_S and m.error is None and events(p) == []
    p._back_off(m, "partition 0: broker down")
    assert m.restart_at == now[0] + tasks.BACKOFF_MIN_S and m.backoff == 2 * tasks.BACKOFF_MIN_S
    assert [e.kind for e in events(p)] == ["backoff"] and m.error == "partition 0: broker down"


def test_the_back_off_starts_small_again_after_a_quiet_minute(monkeypatch):
    """It doubled up to 30 s and never came down: after five back-offs in a worker's life,
    every later one cost 30 s of copying."""
    now = [1000.0]
    p, m = backing_plane(monkeypatch, now)
    waits = []
    for _ in range(7):
        p._back_off(m, "partition 0: broker down")
        waits.append(m.restart_at - now[0])
        now[0] += 1.0
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    now[0] += tasks.BACKOFF_RESET_S  # from the last back-off, not from its restart (30 s later)
    p._back_off(m, "partition 0: broker down")
    assert m.restart_at - now[0] == 30
    now[0] = m.restart_at + tasks.BACKOFF_RESET_S  # a quiet minute after the restart
    p._back_off(m, "partition 0: broker down")
    assert m.restart_at - now[0] == tasks.BACKOFF_MIN_S


def test_a_not_writing_step_backs_off_quietly(monkeypatch):
    from kafka_mirrors.errors import NotWriting
    p, feed, m = plane(2)
    backed = []
    p._back_off = lambda mirror, why, not_writing=False: backed.append((why, not_writing))

    def closed(timeout):
        raise NotWriting("no longer writing m-0")
    m.tasks[0].copier.step = closed
    feed.ready.update({("src", 0)})
    p._steps(100.0)
    assert backed == [("partition 0: no longer writing m-0", True)]


def test_the_gate_other_threads_ask_takes_no_command():
    """The gap threads ask gate_open; the inbox is the copy thread's alone (a fresh command
    taken by another thread could put a stop behind later commands)."""
    import math
    import time
    p, feed, m = plane(1)
    p.state_fresh_s, p._waiting_cmds = 3.0, ()
    p.state_fresh_at = time.monotonic() - 10  # stale
    p.inbox.put(tasks.Command("fresh", at=time.monotonic()))
    assert not p.gate_open("m", 0)
    assert not p.inbox.empty() and p._waiting_cmds == ()  # untouched
    assert p.write_deadline() > time.monotonic()  # the copy thread's own ask takes it
    assert p.inbox.empty() and p.gate_open("m", 0)
    p.ownership = type("Some", (), {"owned": frozenset(), "lease_until": math.inf})()
    assert not p.gate_open("m", 0)  # its slot is not this worker's
