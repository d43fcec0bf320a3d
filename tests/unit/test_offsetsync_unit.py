"""Consumer-offset sync decisions without a broker: which groups, which offsets (under
the mirror topic names), clamping to the destination's log end offset, writing only what
changed."""
from kafka_mirrors import dr, offsetsync
from kafka_mirrors.errors import KafkaOperationError, KafkaUnavailableError
from kafka_mirrors.offsetsync import (SyncFence, SyncSummary, matches, plan_writes, select_groups,
                                      sync_consumer_offsets, wanted_offsets)


def test_matches_full_names_include_then_exclude():
    assert matches("orders-app", [".*"], [])
    assert matches("orders-app", ["orders-.*", "billing"], ["orders-test"])
    assert not matches("orders-test", ["orders-.*"], ["orders-test"])
    # a full match, not a search: "orders" does not select "orders-app"
    assert not matches("orders-app", ["orders"], [])
    assert not matches("anything", [], [])


def test_select_groups_skips_excluded_and_groups_in_use_on_the_destination():
    source = ["app", "app-test", "reporting", "busy", "gone"]
    destination = {"busy": "STABLE", "gone": "DEAD", "app": "EMPTY", "other": "STABLE"}
    chosen, skipped = select_groups(source, destination, [".*"], [".*-test"])
    assert chosen == ["app", "gone", "reporting"]
    assert skipped == {"busy": "active on the destination (STABLE)"}


def test_select_groups_rebalancing_and_unknown_states_count_as_in_use():
    chosen, skipped = select_groups(["a", "b", "c"],
                                    {"a": "PREPARING_REBALANCING", "b": "UNKNOWN", "c": "empty"}, [".*"], [])
    assert chosen == ["c"]
    assert set(skipped) == {"a", "b"}


def test_wanted_offsets_only_mirrored_topics_under_mirror_names():
    committed = {("orders", 0): 10, ("orders", 1): 7, ("other", 0): 5, ("orders", 2): -1001}
    mirrors = {"src.orders": "orders", "copy-of-orders": "orders"}
    assert wanted_offsets(committed, mirrors) == {
        ("src.orders", 0): 10, ("src.orders", 1): 7, ("copy-of-orders", 0): 10, ("copy-of-orders", 1): 7}
    assert wanted_offsets(committed, {}) == {}


def test_plan_writes_clamps_to_log_end_and_writes_only_changes():
    wanted = {("t", 0): 100, ("t", 1): 50, ("t", 2): 30, ("t", 3): 9}
    have = {("t", 1): 50, ("t", 2): 20}
    ends = {("t", 0): 80, ("t", 1): 60, ("t", 2): 40}  # partition 3 not on the destination yet
    plan = plan_writes(wanted, have, ends)
    assert plan.writes == {("t", 0): 80, ("t", 2): 30}
    assert (plan.clamped, plan.unchanged) == (1, 1)
    # the clamped value already committed is not written again
    again = plan_writes(wanted, {**have, ("t", 0): 80, ("t", 2): 30}, ends)
    assert again.writes == {} and again.clamped == 1


def test_plan_writes_follows_a_source_group_that_went_back():
    plan = plan_writes({("t", 0): 5}, {("t", 0): 40}, {("t", 0): 100})
    assert plan.writes == {("t", 0): 5}


def test_summary_json_and_line():
    s = SyncSummary(at=1.0, groups={"b": 2, "a": 1}, skipped={"c": "active on the destination (STABLE)"},
                    offsets_written=3, offsets_clamped=1)
    j = s.to_json()
    assert list(j["groups"]) == ["a", "b"] and j["offsets_written"] == 3
    assert s.line() == ("2 group(s) synced, 3 offset(s) written (1 clamped to the destination log end offset), "
                        "1 skipped, 0 failed")


# ---- promote: a failed last copy fails the row and puts the state back

class _Store:
    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def set_state(self, topic, state, reason=None, **fields):
        if self.fail:
            raise KafkaUnavailableError("destination cluster d:9092 is unreachable")
        self.calls.append((topic, state, reason))


class _Link:
    name = "dr"


def test_promote_offset_sync_failure_restores_state_and_names_next_command():
    store = _Store()
    row = dr._offset_sync_failed(_Link(), store, "orders", "ACTIVE", KafkaOperationError("group 'g' refused"))
    assert store.calls == [("orders", "ACTIVE", "promote failed: consumer offsets not copied")]
    assert row["ok"] is False and row["state"] == "ACTIVE"
    assert "state unchanged (ACTIVE)" in row["error"]
    assert "run 'kafka-mirrors promote orders --link dr' again" in row["error"]
    # the state cannot be put back either: say where it is and how to finish
    row = dr._offset_sync_failed(_Link(), _Store(fail=True), "orders", "PAUSED", KafkaOperationError("x"))
    assert row["state"] == "PENDING_STOPPED" and "kafka-mirrors failover orders --link dr" in row["error"]


# ---- the fence: no group offset of a mirror is written after its stop was acknowledged

class _SyncLink:
    def option(self, name):
        return {"consumer.offset.groups.include": [".*"], "consumer.offset.groups.exclude": []}[name]


def _fake_clusters(monkeypatch, on_alter=lambda group, writes: None):
    """One source group 'g' committed at 10 on partition 0 of topics a and b; the
    destination knows no group and holds 100 records of each; every write is recorded."""
    alters = []
    monkeypatch.setattr(offsetsync, "_group_states", lambda admin: {"g": "EMPTY"} if admin == "src" else {})
    monkeypatch.setattr(offsetsync, "_committed", lambda admin, groups: (
        {g: {("a", 0): 10, ("b", 0): 10} for g in groups} if admin == "src" else {}))
    monkeypatch.setattr(offsetsync, "_log_end_offsets", lambda admin, tps: {tp: 100 for tp in tps})

    def alter(admin, group, writes):
        on_alter(group, writes)
        alters.append((group, dict(writes)))
    monkeypatch.setattr(offsetsync, "_alter", alter)
    return alters


def test_the_sync_writes_no_offset_of_a_mirror_closed_since_its_list_was_taken(monkeypatch):
    alters = _fake_clusters(monkeypatch)
    fence = SyncFence()
    fence.set_open("b", False)  # a failover's PENDING_STOPPED seen after the sync took its list
    summary = sync_consumer_offsets("src", "dst", _SyncLink(), {"a": "a", "b": "b"}, fence=fence)
    assert alters == [("g", {("a", 0): 10})]
    assert summary.offsets_written == 1 and fence.writing() == set()
    fence.set_open("b", True)  # ACTIVE again: written again
    alters.clear()
    sync_consumer_offsets("src", "dst", _SyncLink(), {"a": "a", "b": "b"}, fence=fence)
    assert alters == [("g", {("a", 0): 10, ("b", 0): 10})]


def test_a_write_in_flight_is_seen_as_writing_until_it_answered_even_when_it_fails(monkeypatch):
    fence = SyncFence()
    seen = []

    def during(group, writes):
        seen.append(fence.writing())
        raise KafkaOperationError("group 'g' is not empty")
    _fake_clusters(monkeypatch, during)
    summary = sync_consumer_offsets("src", "dst", _SyncLink(), {"a": "a", "b": "b"}, fence=fence)
    assert seen == [{"a", "b"}] and fence.writing() == set()
    assert summary.errors == {"g": "group 'g' is not empty"}


def test_the_fence_lets_only_open_mirrors_begin_and_shows_them_writing_until_they_end():
    fence = SyncFence()
    fence.set_open("a", False)
    assert fence.begin(["a", "b"]) == {"b"} and fence.writing() == {"b"}
    fence.end(["b"])
    assert fence.writing() == set()
    fence.set_open("a", True)
    assert fence.begin(["a"]) == {"a"} and fence.writing() == {"a"}
