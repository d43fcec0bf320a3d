"""Consumer-offset sync decisions without a broker: which groups, which offsets (under
the mirror topic names), clamping to the destination's log end offset, writing only what
changed."""
from kafka_mirrors import dr
from kafka_mirrors.errors import KafkaOperationError, KafkaUnavailableError
from kafka_mirrors.offsetsync import SyncSummary, matches, plan_writes, select_groups, wanted_offsets


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
