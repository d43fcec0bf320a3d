"""DR logic without a broker: who must acknowledge a stop, the RPO arithmetic, mirror
selection, the bounded fencing wait (with an in-memory state store), and the no-terminal
refusal of promote and failover."""
import dataclasses

import pytest

from kafka_mirrors import dr
from kafka_mirrors.errors import UsageError
from kafka_mirrors.state import ACTIVE, PAUSED, PENDING_STOPPED, STOPPED, MirrorRecord, StateSnapshot

NOW = 1_000_000.0


class FakeLink:
    name = "dr"

    def option(self, key):
        return {"mirror.topic.prefix": "src.", "request.timeout.s": 15}[key]


def snap(**mirrors) -> StateSnapshot:
    s = StateSnapshot("dr")
    for topic, state in mirrors.items():
        s.mirrors[topic] = MirrorRecord(link="dr", topic=topic, source_topic=topic, state=state, partitions=1)
    return s


class FakeStore:
    """snapshot/set_state_many in memory, refusing like the real one; `on_pending` lets a
    simulated worker react. `flushes` counts the writes (one per set_state_many)."""

    def __init__(self, s: StateSnapshot, clock):
        self.s, self.clock, self.on_pending, self.flushes = s, clock, None, 0
        self.link, self.last_write_offsets = "dr", {}  # offsets unknown: acks by time

    def snapshot(self, copy=True):
        return self.s

    def set_state_many(self, mirrors, state, reason=None, per_mirror=None, **fields):
        from kafka_mirrors.errors import ConflictError
        out = {}
        self.flushes += 1
        for item in mirrors:
            topic = item if isinstance(item, str) else item.topic
            rec = self.s.mirrors[topic]
            if not isinstance(item, str) and item.state != rec.state:
                out[topic] = ConflictError(f"mirror '{topic}' is {rec.state} now, not {item.state} as read")
                continue
            rec = dataclasses.replace(rec, state=state, reason=reason, updated_at=self.clock(),
                                      **fields, **(per_mirror or {}).get(topic, {}))
            self.s.mirrors[topic] = rec
            out[topic] = rec
            if state == PENDING_STOPPED and self.on_pending:
                self.on_pending(topic)
        return out

    def set_state(self, topic, state, reason=None, *, current=None, **fields):
        rec = self.set_state_many([current or topic], state, reason, **fields)[topic]
        if isinstance(rec, Exception):
            raise rec
        return rec


class Clock:
    def __init__(self):
        self.t = NOW

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


# ---------------------------------------------------------------- pure helpers

def test_live_workers_are_fresh_and_serving_the_topic():
    s = snap(orders=ACTIVE)
    s.workers = {"w-fresh": {"heartbeat_at": NOW - 2, "partitions": ["orders-0", "orders-1"]},
                 "w-stale": {"heartbeat_at": NOW - 30, "partitions": ["orders-0"]},
                 "w-other": {"heartbeat_at": NOW - 1, "partitions": ["payments-0"]}}
    assert dr.live_workers_for(s, "orders", NOW) == ["w-fresh"]
    assert dr.live_workers_for(s, "payments", NOW) == ["w-other"]


def test_every_live_worker_of_a_group_must_acknowledge_whatever_slots_it_owns_now():
    """A slot may move to any worker of the link's group between the stop and its
    acknowledgement: each live one answers for every mirror (it acks every stop it sees)."""
    s = snap(orders=ACTIVE, payments=ACTIVE)
    s.workers = {"w1": {"heartbeat_at": NOW - 2, "slots": [0, 1], "serving": {"orders": "0"}},
                 "w2": {"heartbeat_at": NOW - 1, "slots": [], "serving": {}},
                 "w-dead": {"heartbeat_at": NOW - 30, "slots": list(range(2, 16)), "serving": {"orders": "1"}},
                 "w-old": {"heartbeat_at": NOW - 1, "partitions": ["payments-0"]}}
    assert dr.live_workers_for(s, "orders", NOW) == ["w1", "w2"]
    assert dr.live_workers_for(s, "payments", NOW) == ["w-old", "w1", "w2"]


def test_missing_acks_ignores_acks_older_than_the_stop():
    s = snap(orders=ACTIVE)
    s.acks = {("orders", "w1"): {"state": "stopped", "at": NOW - 100},   # from an earlier pause
              ("orders", "w2"): {"state": "stopped", "at": NOW + 1}}
    assert dr.missing_acks(s, "orders", ["w1", "w2", "w3"], NOW) == ["w1", "w3"]


def test_missing_acks_order_by_state_topic_offsets_not_by_two_hosts_clocks():
    # issue 11: a worker whose clock is 100 s behind the CLI host's acknowledged a stop it
    # had really applied, and a worker 100 s ahead passed off a stale ack as fresh
    s = snap(orders=ACTIVE)
    s.acks = {("orders", "behind"): {"state": "stopped", "at": NOW - 100, "seen_offset": 43},
              ("orders", "ahead"): {"state": "stopped", "at": NOW + 100, "seen_offset": 42},
              ("orders", "old-version"): {"state": "stopped", "at": NOW + 1}}
    # the stop was written at offset 42: applied by a worker that has seen past it
    assert dr.missing_acks(s, "orders", ["behind", "ahead", "old-version"], NOW, 42) == ["ahead"]
    # offset unknown: the clocks are all there is
    assert dr.missing_acks(s, "orders", ["behind", "ahead", "old-version"], NOW) == ["behind"]


@pytest.mark.parametrize("progress,known", [
    ({"next_offset": 10}, None),
    (None, None),
    ({"next_offset": 10, "source_last_stable_offset": 17}, 17),
    ({"source_high_watermark": 12}, 12),
])
def test_last_known_source_offset(progress, known):
    assert dr.last_known_source_offset(progress) == known


def test_rpo_is_what_the_source_held_beyond_the_copy():
    assert dr.partition_rpo(100, 107) == 7
    assert dr.partition_rpo(100, 100) == 0
    assert dr.partition_rpo(105, 100) == 0  # destination ahead of an old report: nothing lost
    assert dr.partition_rpo(100, None) is None


# ---------------------------------------------------------------- selection

def test_select_names_with_and_without_prefix_and_wrong_states():
    s = snap(**{"src.orders": ACTIVE, "src.pay": PAUSED, "src.gone": STOPPED})
    chosen, errors = dr.select(s, FakeLink(), ["orders", "src.pay", "gone", "nope"], False, (ACTIVE,), "pause")
    assert chosen == ["src.orders"]
    assert [e["topic"] for e in errors] == ["src.pay", "src.gone", "nope"]
    assert errors[0]["error"] == "mirror 'src.pay' is PAUSED; pause needs ACTIVE"
    assert "mirror 'nope' of link 'dr' not found" in errors[2]["error"]


def test_select_all_takes_the_allowed_states_only():
    s = snap(a=ACTIVE, b=PAUSED, c=ACTIVE)
    assert dr.select(s, FakeLink(), [], True, (ACTIVE,), "pause") == (["a", "c"], [])


@pytest.mark.parametrize("names,all_", [([], False), (["a"], True)])
def test_select_needs_exactly_one_of_topics_or_all(names, all_):
    with pytest.raises(UsageError):
        dr.select(snap(a=ACTIVE), FakeLink(), names, all_, (ACTIVE,), "pause")


# ---------------------------------------------------------------- fencing

def _fenced_store(worker_acks: bool):
    clock = Clock()
    s = snap(orders=ACTIVE)
    s.workers = {"w1": {"heartbeat_at": NOW - 1, "partitions": ["orders-0"]}}
    store = FakeStore(s, clock)
    if worker_acks:
        store.on_pending = lambda t: s.acks.__setitem__((t, "w1"), {"state": "stopped", "at": clock() + 0.1})
    return store, clock


def _fence(store, clock, *topics):
    fenced, errors = dr._fence(store, [store.s.mirrors[t] for t in topics or ["orders"]], "failover", 10.0,
                               clock=clock, sleep=clock.sleep)
    return {t: {k: v for k, v in f.items() if k != "record"} for t, f in fenced.items()}, errors


def test_fence_returns_once_the_live_worker_acked():
    store, clock = _fenced_store(worker_acks=True)
    out, errors = _fence(store, clock)
    assert out == {"orders": {"workers": ["w1"], "not_acked": []}} and errors == {}
    assert store.s.mirrors["orders"].state == PENDING_STOPPED
    assert clock.t - NOW < 1.0


def test_fence_gives_up_after_the_bound_and_names_the_worker():
    store, clock = _fenced_store(worker_acks=False)
    out, _ = _fence(store, clock)
    assert out == {"orders": {"workers": ["w1"], "not_acked": ["w1"]}}
    assert 10.0 <= clock.t - NOW < 11.0


def test_fence_does_not_wait_without_live_workers():
    store, clock = _fenced_store(worker_acks=False)
    store.s.workers["w1"]["heartbeat_at"] = NOW - 60
    out, _ = _fence(store, clock)
    assert out == {"orders": {"workers": [], "not_acked": []}}
    assert clock.t == NOW


def test_fence_writes_every_pending_stop_in_one_flush_and_skips_a_mirror_changed_meanwhile():
    clock = Clock()
    s = snap(a=ACTIVE, b=ACTIVE, c=PAUSED)
    store = FakeStore(s, clock)
    read = [s.mirrors[t] for t in ("a", "b", "c")]
    s.mirrors["b"] = dataclasses.replace(s.mirrors["b"], state=STOPPED)  # another host failed it over
    fenced, errors = dr._fence(store, read, "failover", 10.0, clock=clock, sleep=clock.sleep)
    assert store.flushes == 1
    assert sorted(fenced) == ["a", "c"] and fenced["a"]["record"].state == PENDING_STOPPED
    assert list(errors) == ["b"] and "is STOPPED now" in str(errors["b"])
    assert s.mirrors["b"].state == STOPPED  # not overwritten


def test_live_workers_by_topic_reads_new_heartbeats():
    s = snap(a=ACTIVE, b=ACTIVE)
    s.workers = {"w1": {"heartbeat_at": NOW - 1, "serving": {"a": "0-3"}},
                 "w2": {"heartbeat_at": NOW - 1, "serving": {"a": "4", "b": "0"}},
                 "w3": {"heartbeat_at": NOW - 60, "serving": {"b": "0"}}}
    assert dr.live_workers_by_topic(s, ["a", "b", "c"], NOW) == {"a": ["w1", "w2"], "b": ["w2"], "c": []}


# ---------------------------------------------------------------- CLI refusal

@pytest.mark.parametrize("cmd", [["failover"], ["promote"], ["mirror", "promote"], ["mirror", "failover"]])
def test_destructive_commands_need_yes_without_a_terminal(cli, cmd):
    # no link exists: the refusal comes first, before any registry or cluster access
    r = cli(*cmd, "orders", "--link", "dr")
    assert r.exit_code == 2
    assert r.stderr.strip() == ("error: nothing " + ("promoted" if "promote" in cmd else "failed over")
                                + ": confirmation needed but there is no terminal; pass --yes")
