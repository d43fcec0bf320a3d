"""DR logic without a broker: who must acknowledge a stop, the RPO arithmetic, mirror
selection, the bounded fencing wait (with an in-memory state store), and the no-terminal
refusal of promote and failover."""
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
    """Snapshot/set_state in memory; `on_pending` lets a simulated worker react."""

    def __init__(self, s: StateSnapshot, clock):
        self.s, self.clock, self.on_pending = s, clock, None

    def snapshot(self):
        return self.s

    def set_state(self, topic, state, reason=None, **fields):
        rec = self.s.mirrors[topic]
        rec.state, rec.reason, rec.updated_at = state, reason, self.clock()
        for k, v in fields.items():
            setattr(rec, k, v)
        if state == PENDING_STOPPED and self.on_pending:
            self.on_pending(topic)
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


def test_missing_acks_ignores_acks_older_than_the_stop():
    s = snap(orders=ACTIVE)
    s.acks = {("orders", "w1"): {"state": "stopped", "at": NOW - 100},   # from an earlier pause
              ("orders", "w2"): {"state": "stopped", "at": NOW + 1}}
    assert dr.missing_acks(s, "orders", ["w1", "w2", "w3"], NOW) == ["w1", "w3"]


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


def test_fence_returns_once_the_live_worker_acked():
    store, clock = _fenced_store(worker_acks=True)
    out = dr._fence(store, ["orders"], "failover", 10.0, clock=clock, sleep=clock.sleep)
    assert out == {"orders": {"workers": ["w1"], "not_acked": []}}
    assert store.s.mirrors["orders"].state == PENDING_STOPPED
    assert clock.t - NOW < 1.0


def test_fence_gives_up_after_the_bound_and_names_the_worker():
    store, clock = _fenced_store(worker_acks=False)
    out = dr._fence(store, ["orders"], "failover", 10.0, clock=clock, sleep=clock.sleep)
    assert out == {"orders": {"workers": ["w1"], "not_acked": ["w1"]}}
    assert 10.0 <= clock.t - NOW < 11.0


def test_fence_does_not_wait_without_live_workers():
    store, clock = _fenced_store(worker_acks=False)
    store.s.workers["w1"]["heartbeat_at"] = NOW - 60
    out = dr._fence(store, ["orders"], "failover", 10.0, clock=clock, sleep=clock.sleep)
    assert out == {"orders": {"workers": [], "not_acked": []}}
    assert clock.t == NOW


# ---------------------------------------------------------------- CLI refusal

@pytest.mark.parametrize("cmd", [["failover"], ["promote"], ["mirror", "promote"], ["mirror", "failover"]])
def test_destructive_commands_need_yes_without_a_terminal(cli, cmd):
    # no link exists: the refusal comes first, before any registry or cluster access
    r = cli(*cmd, "orders", "--link", "dr")
    assert r.exit_code == 2
    assert r.stderr.strip() == ("error: nothing " + ("promoted" if "promote" in cmd else "failed over")
                                + ": confirmation needed but there is no terminal; pass --yes")
