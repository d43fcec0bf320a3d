"""State store records (keys, JSON, folding a compacted log) and the describe/list views
and health verdict built from them, without a broker."""
import time

import pytest

from kafka_mirrors.errors import UsageError
from kafka_mirrors.kafka.topics import PartitionOffsets
from kafka_mirrors.mirrors import build_mirror_view, health_problems, parse_configs, worker_view
from kafka_mirrors.state import (
    FAILED,
    STOPPED,
    MirrorRecord,
    StateSnapshot,
    StateStore,
    ack_key,
    decode,
    encode,
    mirror_key,
    progress_key,
    worker_key,
)

NOW = 1_000_000.0


def rec(**kw) -> MirrorRecord:
    base = dict(link="dr", topic="orders", source_topic="orders", partitions=2,
                source_topic_id="TID", created_at=10.0, updated_at=20.0)
    base.update(kw)
    return MirrorRecord(**base)


# ---------------------------------------------------------------- encoding

def test_mirror_record_round_trips_through_json_bytes():
    r = rec(state=FAILED, reason="divergence", failed={"partition": 1, "offset": 7, "message": "m"})
    raw = encode(r.to_json())
    assert isinstance(raw, bytes)
    assert MirrorRecord.from_json(decode(raw)) == r


def test_encoding_is_stable_and_sorted():
    assert encode({"b": 1, "a": None}) == b'{"a":null,"b":1}'
    assert encode(None) is None and decode(None) is None


def test_from_json_ignores_fields_a_newer_writer_added():
    value = rec().to_json() | {"added_by_a_later_version": 1}
    assert MirrorRecord.from_json(value) == rec()


def test_keys():
    assert mirror_key("dr", "orders") == "mirror/dr/orders"
    assert worker_key("dr", "h:1") == "worker/dr/h:1"
    assert progress_key("dr", "orders", 3) == "progress/dr/orders/3"
    assert ack_key("dr", "orders", "w/1") == "ack/dr/orders/w/1"


# ---------------------------------------------------------------- folding the log

def test_snapshot_folds_records_last_one_wins_and_tombstones_delete():
    s = StateSnapshot("dr")
    s.apply(mirror_key("dr", "orders"), rec().to_json())
    s.apply(mirror_key("dr", "orders"), rec(state="PAUSED").to_json())
    s.apply(mirror_key("dr", "gone"), rec(topic="gone").to_json())
    s.apply(mirror_key("dr", "gone"), None)
    s.apply(worker_key("dr", "w1"), {"heartbeat_at": 5})
    s.apply(progress_key("dr", "orders", 1), {"next_offset": 4})
    s.apply(ack_key("dr", "orders", "w/1"), {"state": STOPPED, "at": 6})
    assert list(s.mirrors) == ["orders"] and s.mirrors["orders"].state == "PAUSED"
    assert s.workers == {"w1": {"heartbeat_at": 5}}
    assert s.progress == {("orders", 1): {"next_offset": 4}}
    assert s.acks == {("orders", "w/1"): {"state": STOPPED, "at": 6}}


def test_snapshot_skips_other_links_including_a_name_prefix():
    s = StateSnapshot("dr")
    assert not s.apply(mirror_key("dr2", "orders"), rec(link="dr2").to_json())
    assert not s.apply(mirror_key("other", "orders"), rec(link="other").to_json())
    assert s.mirrors == {}


def test_snapshot_skips_unknown_and_malformed_keys():
    s = StateSnapshot("dr")
    assert not s.apply("future/dr/x", {"a": 1})
    assert not s.apply("progress/dr/orders/notanumber", {"next_offset": 1})
    assert not s.apply("mirror/dr/orders", {"topic": "orders"})  # required fields missing
    assert not s.apply("garbage", {})
    assert s.mirrors == {} and s.progress == {}


def test_store_constructor_opens_no_connection():
    # an unreachable address: building the store must not try it
    store = StateStore({"bootstrap.servers": "127.0.0.1:1"}, "dr", timeout=0.5)
    assert store._producer is None and store.label == "destination cluster 127.0.0.1:1"


def test_set_state_rejects_an_unknown_state():
    with pytest.raises(ValueError):
        StateStore({"bootstrap.servers": "127.0.0.1:1"}, "dr").set_state("orders", "RUNNING")


# ---------------------------------------------------------------- views

SRC = {0: PartitionOffsets(2, 10, 12), 1: PartitionOffsets(0, 5, 5)}


def test_lag_is_source_last_stable_offset_minus_destination_log_end_offset():
    progress = {("orders", 0): {"records_copied": 6, "fillers_written": 3,
                                "offsets_lost_to_source_retention": 2, "updated_at": 50.0}}
    v = build_mirror_view(rec(), progress, {}, SRC, {0: 7, 1: 5}, NOW)
    p0, p1 = v["partitions"]
    assert (p0["source_log_start_offset"], p0["source_last_stable_offset"], p0["source_high_watermark"]) == (2, 10, 12)
    assert p0["destination_log_end_offset"] == 7 and p0["lag"] == 3
    assert p0["fillers_written"] == 3 and p0["offsets_lost_to_source_retention"] == 2
    assert p1["lag"] == 0 and p1["fillers_written"] == 0
    assert v["lag"] == 3 and v["fillers_written"] == 3 and v["offsets_lost_to_source_retention"] == 2
    assert v["status"] == "ACTIVE"


def test_source_unavailable_keeps_destination_numbers():
    v = build_mirror_view(rec(), {}, {}, None, {0: 7, 1: 5}, NOW, source_error="source cluster x is unreachable")
    assert v["status"] == "SOURCE_UNAVAILABLE" and v["state"] == "ACTIVE"
    assert [p["destination_log_end_offset"] for p in v["partitions"]] == [7, 5]
    assert [p["lag"] for p in v["partitions"]] == [None, None] and v["lag"] is None
    assert v["partitions"][0]["source_last_stable_offset"] is None
    assert v["source_error"] == "source cluster x is unreachable"


def test_a_stopped_mirror_does_not_report_the_source_missing():
    v = build_mirror_view(rec(state=STOPPED), {}, {}, None, {0: 7, 1: 5}, NOW)
    assert v["status"] == STOPPED


def test_partitions_the_source_added_are_shown():
    src = dict(SRC) | {2: PartitionOffsets(0, 4, 4)}
    v = build_mirror_view(rec(), {}, {}, src, {0: 10, 1: 5}, NOW)
    assert [p["partition"] for p in v["partitions"]] == [0, 1, 2]
    assert v["partitions"][2]["destination_log_end_offset"] is None and v["lag"] is None


def test_worker_view_no_worker_has_run():
    assert worker_view("orders", {}, NOW)["status"] == "no worker has run"


def test_worker_view_stale_and_fresh_heartbeats():
    workers = {"w1": {"heartbeat_at": NOW - 95, "partitions": [{"topic": "orders", "partition": 0}]},
               "w2": {"heartbeat_at": NOW - 2, "partitions": [["payments", 0]]}}
    stale = worker_view("orders", workers, NOW)
    assert stale["status"] == "no worker seen for 95 s" and stale["worker_ids"] == ["w1"]
    fresh = worker_view("payments", workers, NOW)
    assert fresh["status"] == "last heartbeat 2 s ago" and fresh["seconds_since_heartbeat"] == 2
    # a topic no worker lists: the link's freshest worker is the best we know
    assert worker_view("other", workers, NOW)["seconds_since_heartbeat"] == 2


# ---------------------------------------------------------------- health

def view_of(*mirrors):
    return {"links": [{"link": "dr", "source_available": True, "source_error": None, "mirrors": list(mirrors)}]}


def test_health_failed_mirror_is_a_problem_with_its_offset():
    v = build_mirror_view(rec(state=FAILED, reason="offset mismatch",
                              failed={"partition": 1, "offset": 9, "message": "m"}), {}, {}, SRC, {0: 10, 1: 5}, NOW)
    assert health_problems(view_of(v)) == ["mirror 'dr/orders' is FAILED at partition 1 offset 9: offset mismatch"]


def test_health_lag_only_counts_with_max_lag():
    v = build_mirror_view(rec(), {}, {}, SRC, {0: 0, 1: 0}, NOW)  # lag 10 + 5
    assert v["lag"] == 15
    assert health_problems(view_of(v)) == []
    assert health_problems(view_of(v), max_lag=15) == []
    assert health_problems(view_of(v), max_lag=14) == ["mirror 'dr/orders' lag 15 exceeds --max-lag 14"]


def test_health_unknown_lag_fails_a_lag_check_but_not_a_stopped_mirror():
    down = build_mirror_view(rec(), {}, {}, None, {0: 0, 1: 0}, NOW, source_error="source down")
    assert health_problems(view_of(down), max_lag=100) == ["mirror 'dr/orders' lag unknown: source down"]
    assert health_problems(view_of(down)) == []
    stopped = build_mirror_view(rec(state=STOPPED), {}, {}, SRC, {0: 0, 1: 0}, NOW)
    assert health_problems(view_of(stopped), max_lag=0) == []


# ---------------------------------------------------------------- CLI input checks (no broker reached)

def test_parse_configs():
    assert parse_configs(["retention.ms=5", "a.b = x=y"]) == {"retention.ms": "5", "a.b": "x=y"}
    with pytest.raises(UsageError):
        parse_configs(["retention.ms"])


def test_max_lag_without_check_is_a_usage_error(cli):
    r = cli("describe", "--max-lag", "3")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: --max-lag needs --check")
    assert r.stdout == ""


def test_mirror_commands_on_an_unknown_link(cli):
    r = cli("mirror", "describe", "orders", "--link", "nope")
    assert r.exit_code == 1
    assert "link 'nope' not found" in r.stderr and "kafka-mirrors link list" in r.stderr


def test_worker_view_reads_the_workers_topic_partition_strings():
    workers = {"w1": {"heartbeat_at": NOW - 1, "partitions": ["my-orders-0", "my-orders-1"]},
               "w2": {"heartbeat_at": NOW - 50, "partitions": ["other-0"]}}
    v = worker_view("my-orders", workers, NOW)
    assert v["worker_ids"] == ["w1"] and v["status"] == "last heartbeat 1 s ago"


def test_a_worker_that_stopped_cleanly_is_dated_by_its_last_progress():
    progress = {("orders", 0): {"records_copied": 3, "updated_at": NOW - 40}}
    v = build_mirror_view(rec(), progress, {}, SRC, {0: 3, 1: 0}, NOW)
    assert v["worker"]["status"] == "no worker seen for 40 s"


def test_describe_shows_the_newest_consumer_offset_sync_and_the_acls_kept(capsys):
    from kafka_mirrors.cli.application import Application
    from kafka_mirrors.cli.describe import render_text
    from kafka_mirrors import state as st
    from kafka_mirrors.mirrors import build_mirror_view, latest_offset_sync

    now = time.time()
    workers = {"w1": {"consumer_offset_sync": {"at": now - 100, "groups": {"a": 1}, "skipped": {}, "errors": {},
                                               "offsets_written": 1}},
               "w2": {"consumer_offset_sync": {"at": now - 5, "groups": {"a": 2, "b": 1}, "skipped": {"c": "busy"},
                                               "errors": {}, "offsets_written": 3}},
               "w3": {}}
    assert latest_offset_sync(workers)["at"] == now - 5
    assert latest_offset_sync({"w3": {}}) is None
    rec = st.MirrorRecord(link="dr", topic="t", source_topic="t", partitions=1,
                          acls=[{"host": "*", "name": "t", "operation": "WRITE", "pattern": "LITERAL",
                                 "permission": "DENY", "principal": "User:alice", "resource": "TOPIC"}])
    m = build_mirror_view(rec, {}, {}, None, {0: 0}, now=time.time())
    assert m["acls"] == rec.acls
    view = {"links": [{"link": "dr", "source_available": True, "source_error": None,
                       "consumer_offset_sync": latest_offset_sync(workers), "mirrors": [m]}]}
    render_text(Application(), view)
    out = " ".join(capsys.readouterr().out.split())  # the console may wrap long lines
    assert "consumer offsets: last sync 5 s ago: 3 offset(s) written to 2 group(s), 1 group(s) skipped, " \
        "0 failed" in out
    assert "ACLs kafka-mirrors keeps: DENY WRITE User:alice" in out


def test_partition_ranges_round_trip_and_refuse_bad_input():
    from kafka_mirrors.state import format_partition_ranges, parse_partition_ranges
    assert format_partition_ranges([8, 0, 1, 2, 5, 7, 2]) == "0-2,5,7-8"
    assert format_partition_ranges(range(10_000)) == "0-9999"
    assert format_partition_ranges([]) == ""
    assert parse_partition_ranges("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert parse_partition_ranges("") == []
    for bad in ("3-1", "a", "1-b", "-1"):
        with pytest.raises(ValueError):
            parse_partition_ranges(bad)


def test_worker_partitions_read_new_and_old_heartbeats():
    from kafka_mirrors.state import worker_partitions
    assert worker_partitions({"serving": {"t": "0-1", "u": "4"}}) == {("t", 0), ("t", 1), ("u", 4)}
    assert worker_partitions({"partitions": ["my-topic-3", ["t", 1]]}) == {("my-topic", 3), ("t", 1)}
    assert worker_partitions({"serving": {"t": "x"}}) == set()  # malformed: skipped, logged


# ---------------------------------------------------------------- progress: one record per mirror

def test_per_mirror_progress_fills_each_partition_and_replaces_the_mirrors_earlier_progress():
    from kafka_mirrors.state import mirror_progress_key
    s = StateSnapshot("dr")
    assert mirror_progress_key("dr", "orders") == "progress/dr/orders"
    s.apply(progress_key("dr", "orders", 0), {"next_offset": 1, "updated_at": 5})   # an older worker
    s.apply(progress_key("dr", "orders", 2), {"next_offset": 9, "updated_at": 5})
    s.apply(progress_key("dr", "other", 0), {"next_offset": 3})
    assert s.apply(mirror_progress_key("dr", "orders"),
                   {"partitions": {"0": {"next_offset": 4}, "1": {"next_offset": 6, "updated_at": 7}},
                    "updated_at": 8})
    assert s.progress == {("orders", 0): {"next_offset": 4, "updated_at": 8},
                          ("orders", 1): {"next_offset": 6, "updated_at": 7},
                          ("other", 0): {"next_offset": 3}}
    # the older key's tombstone does not take what the newer record said
    s.apply(progress_key("dr", "orders", 0), None)
    assert s.progress[("orders", 0)] == {"next_offset": 4, "updated_at": 8}
    # an older worker writing after the new one: its partition wins, the others stay
    s.apply(progress_key("dr", "orders", 1), {"next_offset": 10})
    assert s.progress[("orders", 1)] == {"next_offset": 10} and ("orders", 0) in s.progress
    # the per-mirror record's tombstone uncovers the per-partition keys still alive (a
    # tombstone is compacted away in time: hiding them could not last); delete_mirror
    # deletes both formats
    s.apply(mirror_progress_key("dr", "orders"), None)
    assert s.progress == {("orders", 1): {"next_offset": 10}, ("orders", 2): {"next_offset": 9, "updated_at": 5},
                          ("other", 0): {"next_offset": 3}}
    assert s.legacy_progress == {("orders", 1), ("orders", 2), ("other", 0)}


def test_malformed_per_mirror_progress_is_skipped_and_changes_nothing():
    from kafka_mirrors.state import mirror_progress_key
    s = StateSnapshot("dr")
    s.apply(mirror_progress_key("dr", "orders"), {"partitions": {"0": {"next_offset": 1}}})
    for bad in ({"no": "partitions"}, {"partitions": ["0"]}, {"partitions": {"x": {}}},
                {"partitions": {"0": 5}}, [1, 2]):
        assert not s.apply(mirror_progress_key("dr", "orders"), bad)
    assert s.progress == {("orders", 0): {"next_offset": 1}}


def test_a_snapshot_copy_can_be_changed_without_touching_the_original():
    s = StateSnapshot("dr")
    s.apply(mirror_key("dr", "orders"), rec().to_json())
    s.apply(progress_key("dr", "orders", 0), {"next_offset": 1})
    c = s.copy()
    c.mirrors["orders"].state = STOPPED
    c.progress[("orders", 0)]["next_offset"] = 99
    c.workers["w"] = {}
    assert s.mirrors["orders"].state == "ACTIVE" and s.progress[("orders", 0)] == {"next_offset": 1}
    assert s.workers == {} and c == c.copy()


def test_partition_ranges_bad_input():
    from kafka_mirrors.state import parse_partition_ranges, worker_partitions
    for bad in ("1-", "0-2-4", "1,x", "5-3", "1.5"):
        with pytest.raises(ValueError):
            parse_partition_ranges(bad)
    assert parse_partition_ranges(" 1 , 3-4 ,") == [1, 3, 4]
    # a heartbeat with both forms: both are read
    assert worker_partitions({"serving": {"t": "0"}, "partitions": ["u-1"]}) == {("t", 0), ("u", 1)}


# ---------------------------------------------------------------- the store against a fake log

class FakeMsg:
    def __init__(self, offset, key, value):
        self._o, self._k, self._v = offset, key, value

    def error(self):
        return None

    def offset(self):
        return self._o

    def key(self):
        return None if self._k is None else self._k.encode()

    def value(self):
        return encode(self._v)


class FakeLog:
    """The state topic's one partition, as a consumer sees it (offsets survive compaction)."""

    def __init__(self):
        self.records: list[tuple[int, str, object]] = []
        self.next = 0
        self.low = 0

    def write(self, key, value):
        self.records.append((self.next, key, value))
        self.next += 1

    def compact_until(self, offset):
        """Drop superseded records below `offset` (what the cleaner does)."""
        last = {k: o for o, k, _ in self.records}
        self.records = [r for r in self.records if r[0] >= offset or last[r[1]] == r[0]]

    def delete_until(self, offset):
        self.records = [r for r in self.records if r[0] >= offset]
        self.low = offset


class FakeConsumer:
    def __init__(self, log):
        self.log, self.at = log, None

    def list_topics(self, topic, timeout=None):
        from types import SimpleNamespace
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None)})

    def get_watermark_offsets(self, tp, timeout=None):
        return self.log.low, self.log.next

    def assign(self, tps):
        self.at = tps[0].offset if tps[0].offset >= 0 else self.log.low

    def unassign(self):
        self.at = None

    def consume(self, n, timeout):
        out = [FakeMsg(*r) for r in self.log.records if r[0] >= self.at][:n]
        if out:
            self.at = out[-1].offset() + 1
        return out

    def position(self, tps):
        from confluent_kafka import TopicPartition
        return [TopicPartition(tps[0].topic, 0, self.log.next)]

    def close(self):
        pass


def fake_store(log):
    store = StateStore({"bootstrap.servers": "127.0.0.1:1"}, "dr", timeout=2)
    store._reader = FakeConsumer(log)
    store.written = []
    store._topic_ready = True

    def put_many(items):
        store.written.append(items)
        store.last_write_offsets = {}
        for k, v in items:
            store.last_write_offsets[k] = log.next
            log.write(k, v)
    store._put_many = put_many
    return store


def test_a_second_read_folds_only_the_new_records():
    log = FakeLog()
    for i in range(100):
        log.write(mirror_key("dr", f"m{i % 10}"), rec(topic=f"m{i % 10}", updated_at=i).to_json())
    store = fake_store(log)
    first = store.snapshot()
    assert len(first.mirrors) == 10 and first.end_offset == 100 and store.records_read == 100
    log.write(mirror_key("dr", "m0"), rec(topic="m0", state="PAUSED").to_json())
    second = store.snapshot()
    assert store.records_read == 101 and store.full_reads == 1
    assert second.mirrors["m0"].state == "PAUSED" and first.mirrors["m0"].state == "ACTIVE"
    # compaction below what was read changes nothing for the cache
    log.compact_until(101)
    assert store.snapshot() == second and store.records_read == 101


def test_changing_a_returned_snapshot_or_record_leaves_the_cache_alone():
    log = FakeLog()
    log.write(mirror_key("dr", "orders"), rec().to_json())
    store = fake_store(log)
    store.snapshot().mirrors["orders"].state = STOPPED
    store.snapshot().mirrors.clear()
    store.get_mirror("orders").state = STOPPED
    assert store.snapshot().mirrors["orders"].state == "ACTIVE"


def test_the_log_start_moving_past_the_cache_or_a_shorter_log_forces_a_full_read():
    log = FakeLog()
    log.write(mirror_key("dr", "a"), rec(topic="a").to_json())
    log.write(mirror_key("dr", "b"), rec(topic="b").to_json())
    store = fake_store(log)
    assert sorted(store.snapshot().mirrors) == ["a", "b"]
    log.write(mirror_key("dr", "b"), None)
    log.write(mirror_key("dr", "c"), rec(topic="c").to_json())
    log.delete_until(3)  # the tombstone of b (offset 2) went unread
    assert sorted(store.snapshot().mirrors) == ["c"] and store.full_reads == 2
    log.records, log.next, log.low = [], 0, 0  # re-created, empty
    log.write(mirror_key("dr", "d"), rec(topic="d").to_json())
    assert sorted(store.snapshot().mirrors) == ["d"] and store.full_reads == 3


def test_an_idle_cache_is_read_again_from_the_start(monkeypatch):
    import kafka_mirrors.state as st
    log = FakeLog()
    log.write(mirror_key("dr", "a"), rec(topic="a").to_json())
    store = fake_store(log)
    store.snapshot()
    store.snapshot()
    assert store.full_reads == 1
    monkeypatch.setattr(st, "FULL_READ_AFTER_IDLE_S", -1.0)
    store.snapshot()
    assert store.full_reads == 2


def test_set_state_with_the_record_read_refuses_a_mirror_changed_meanwhile():
    from kafka_mirrors.errors import ConflictError
    from kafka_mirrors.state import ACTIVE, PENDING_STOPPED
    log = FakeLog()
    log.write(mirror_key("dr", "orders"), rec().to_json())
    log.write(mirror_key("dr", "pay"), rec(topic="pay").to_json())
    store = fake_store(log)
    read = store.snapshot()
    log.write(mirror_key("dr", "orders"), rec(state=STOPPED, reason="failed over").to_json())  # another host
    with pytest.raises(ConflictError, match=r"mirror 'orders' of link 'dr' is STOPPED now \(failed over\), "
                                            r"not ACTIVE as read"):
        store.set_state("orders", PENDING_STOPPED, current=read.mirrors["orders"])
    out = store.set_state_many([read.mirrors["orders"], read.mirrors["pay"], "nope"], PENDING_STOPPED, "failover",
                               per_mirror={"pay": {"stopped": {"x": 1}}})
    assert isinstance(out["orders"], ConflictError) and "not found" in str(out["nope"])
    assert out["pay"].state == PENDING_STOPPED and out["pay"].stopped == {"x": 1}
    assert [k for k, _ in store.written[-1]] == [mirror_key("dr", "pay")]  # one flush, the one mirror
    # the record written is what the next conditional write expects
    assert store.set_state("pay", ACTIVE, current=out["pay"]).state == ACTIVE
    assert store.snapshot().mirrors["orders"].state == STOPPED


def test_progress_is_written_per_mirror_and_slot_and_older_keys_are_tombstoned_once():
    from kafka_mirrors.state import slot_of, slot_progress_key
    # orders-0 and orders-16 share a slot, orders-1 has another
    assert slot_of("orders", 0) == slot_of("orders", 16) != slot_of("orders", 1)
    s0, s1, sp = slot_of("orders", 0), slot_of("orders", 1), slot_of("pay", 0)
    log = FakeLog()
    log.write(progress_key("dr", "orders", 0), {"next_offset": 1})
    store = fake_store(log)
    store.snapshot()
    store.put_progress_many({("orders", 0): {"next_offset": 5, "updated_at": 9.0},
                             ("orders", 16): {"next_offset": 4, "updated_at": 8.0},
                             ("orders", 1): {"next_offset": 6, "updated_at": 8.0},
                             ("pay", 0): {"next_offset": 7, "updated_at": 9.0}})
    assert store.written[-1] == [(progress_key("dr", "orders", 0), None)] + sorted([
        (slot_progress_key("dr", "orders", s0),
         {"partitions": {"0": {"next_offset": 5}, "16": {"next_offset": 4, "updated_at": 8.0}}, "updated_at": 9.0}),
        (slot_progress_key("dr", "orders", s1), {"partitions": {"1": {"next_offset": 6}}, "updated_at": 8.0}),
        (slot_progress_key("dr", "pay", sp), {"partitions": {"0": {"next_offset": 7}}, "updated_at": 9.0})],
        key=lambda kv: (kv[0].split("/")[2], int(kv[0].rsplit("/s", 1)[1])))
    store.put_progress_many({("orders", 0): {"next_offset": 5}})
    assert [k for k, _ in store.written[-1]] == [slot_progress_key("dr", "orders", s0)]
    snap = store.snapshot()
    # the slot's newest record covers orders-16 too: it left it out, so it has no progress now
    assert snap.progress[("orders", 0)]["next_offset"] == 5 and ("orders", 16) not in snap.progress
    assert snap.progress[("orders", 1)]["next_offset"] == 6


def test_delete_mirror_tombstones_every_progress_format():
    from kafka_mirrors.state import SLOTS, mirror_progress_key, slot_progress_key
    log = FakeLog()
    log.write(mirror_key("dr", "orders"), rec().to_json())
    log.write(progress_key("dr", "orders", 3), {"next_offset": 1})
    log.write(mirror_progress_key("dr", "orders"), {"partitions": {"0": {}}, "updated_at": 1})
    log.write(ack_key("dr", "orders", "w1"), {"state": "stopped", "at": 1})
    log.write(slot_progress_key("dr", "orders", 5), {"partitions": {"9": {}}, "updated_at": 1})
    store = fake_store(log)
    store.delete_mirror("orders")
    assert store.written[-1] == [(progress_key("dr", "orders", 0), None), (progress_key("dr", "orders", 3), None),
                                 (mirror_progress_key("dr", "orders"), None)] + [
        (slot_progress_key("dr", "orders", k), None) for k in range(SLOTS)] + [
        (ack_key("dr", "orders", "w1"), None), (mirror_key("dr", "orders"), None)]
    snap = store.snapshot()
    assert snap.mirrors == {} and snap.progress == {} and snap.acks == {}


def test_folding_only_the_last_record_of_each_key_incrementally_or_compacted_gives_the_full_fold():
    import random
    from kafka_mirrors.state import mirror_progress_key, slot_of, slot_progress_key
    rnd = random.Random(7)
    PARTS = (0, 1, 16)  # 0 and 16 share a slot
    assert slot_of("a", 0) == slot_of("a", 16) != slot_of("a", 1) and slot_of("b", 0) == slot_of("b", 16)
    for _ in range(300):
        log = FakeLog()
        full = StateSnapshot("dr")
        store = fake_store(log)  # reads incrementally, at random points
        live: dict[str, tuple[int, dict]] = {}  # the model: every live progress key's last write
        for seq in range(rnd.randint(1, 30)):
            if rnd.random() < 0.2:
                store.snapshot()
            t = rnd.choice(["a", "b"])
            kind = rnd.random()
            if kind < 0.4:
                key = progress_key("dr", t, rnd.choice(PARTS))
                value = None if rnd.random() < 0.3 else {"next_offset": rnd.randint(0, 9)}
            elif kind < 0.6:
                key = mirror_progress_key("dr", t)
                value = None if rnd.random() < 0.2 else \
                    {"partitions": {str(p): {"next_offset": rnd.randint(0, 9)} for p in PARTS if rnd.random() < 0.6},
                     "updated_at": 1}
            elif kind < 0.85:
                k = slot_of(t, rnd.choice(PARTS))
                key = slot_progress_key("dr", t, k)
                value = None if rnd.random() < 0.2 else \
                    {"partitions": {str(p): {"next_offset": rnd.randint(0, 9)} for p in PARTS
                                    if slot_of(t, p) == k and rnd.random() < 0.7}, "updated_at": 1}
            else:
                key = mirror_key("dr", t)
                value = None if rnd.random() < 0.3 else rec(topic=t, updated_at=rnd.random()).to_json()
            log.write(key, value)
            full.apply(key, value)
            if key.startswith("progress/"):
                live.pop(key, None)
                if value is not None:
                    live[key] = (seq, value)
        # the model: a partition's progress is its newest covering record's entry for it
        for t in ("a", "b"):
            for p in PARTS:
                covering = [live[k] for k in (progress_key("dr", t, p), mirror_progress_key("dr", t),
                                              slot_progress_key("dr", t, slot_of(t, p))) if k in live]
                want = None
                if covering:
                    seq, value = max(covering, key=lambda c: c[0])
                    want = value if "partitions" not in value else value["partitions"].get(str(p))
                got = full.progress.get((t, p))
                assert (got and got["next_offset"]) == (want and want["next_offset"]), (t, p, live)
        for got in (fake_store(log).snapshot(), store.snapshot()):
            assert (got.mirrors, got.progress, got.legacy_progress) == \
                (full.mirrors, full.progress, full.legacy_progress)
        log.compact_until(log.next)  # what the cleaner leaves folds to the same
        got = fake_store(log).snapshot()
        assert (got.mirrors, got.progress) == (full.mirrors, full.progress)


def test_worker_view_names_a_worker_that_cannot_follow_the_state_store():
    workers = {"w1": {"heartbeat_at": NOW - 1, "partitions": [["orders", 0]],
                      "state_store_error": "reading __kafka_mirrors_state failed: Broker: Topic authorization failed"},
               "w2": {"heartbeat_at": NOW - 1, "partitions": [["orders", 1]], "state_store_error": None}}
    v = worker_view("orders", workers, NOW)
    assert v["workers_not_following_state"] == ["w1"]
    assert "worker w1 cannot follow the state store (reading __kafka_mirrors_state failed: " in v["status"]
    assert "it does not see pauses or failovers" in v["status"]
    workers["w1"]["state_store_error"] = None
    assert worker_view("orders", workers, NOW)["workers_not_following_state"] == []


def test_worker_view_names_a_worker_that_is_not_writing_and_why():
    why = "its view of the state store is 7 s old (the state topic's end not read, or not caught up with)"
    workers = {"w1": {"heartbeat_at": NOW - 1, "partitions": [["orders", 0]], "not_writing": None},
               "w2": {"heartbeat_at": NOW - 1, "partitions": [["orders", 1]], "not_writing": why}}
    v = worker_view("orders", workers, NOW)
    assert v["workers_not_writing"] == {"w2": why}
    assert v["status"].endswith(f"; worker w2 is not writing: {why}")
    workers["w2"]["heartbeat_at"] = NOW - 600  # a heartbeat that old says nothing of now
    assert worker_view("orders", workers, NOW)["workers_not_writing"] == {}


class _Msg:
    def __init__(self, key=None, value=None, offset=0, err=None, topic="__kafka_mirrors_state"):
        self._k, self._v, self._o, self._e, self._t = key, value, offset, err, topic

    def topic(self):
        return self._t

    def error(self):
        return self._e

    def key(self):
        return self._k

    def value(self):
        return self._v

    def offset(self):
        return self._o


def test_the_state_follower_keeps_the_error_that_stops_it_reading_until_it_reads_again():
    from confluent_kafka import KafkaError

    from kafka_mirrors.state import StateFollower
    f = StateFollower.__new__(StateFollower)
    f._prefixes, f.error = ("mirror/dr/",), None
    f._mirror_prefix, f.mirror_offsets = "mirror/dr/", {}
    batches = [[_Msg(err=KafkaError(KafkaError._TRANSPORT), topic=None)],  # a passing client error
               [_Msg(err=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))], [],
               [_Msg(key=b"mirror/dr/t", value=b'{"x": 1}', offset=3)]]
    f._consumer = type("C", (), {"consume": lambda self, n, t: batches.pop(0)})()
    assert f.poll(0) == [] and f.error is None
    assert f.poll(0) == [] and "Topic authorization failed" in f.error
    assert f.poll(0) == [] and f.error is not None  # nothing read: still not following
    assert f.poll(0) == [("mirror/dr/t", {"x": 1})] and f.error is None


def test_two_commands_deciding_on_the_same_read_one_wins_in_log_order_the_other_is_told():
    # found by the fault suite: promote and failover run at once both printed STOPPED; the
    # check of the state read and the write were two steps, with room between them
    from kafka_mirrors.errors import ConflictError
    from kafka_mirrors.state import PAUSED, PENDING_STOPPED
    log = FakeLog()
    log.write(mirror_key("dr", "orders"), rec().to_json())
    a, b = fake_store(log), fake_store(log)
    read_a, read_b = a.get_mirror("orders"), b.get_mirror("orders")
    # both checked ACTIVE; b's write lands after a's check and before a's write
    a_put, b_won = a._put_many, []

    def b_first(items):
        if not b_won:
            b_won.append(b.set_state("orders", PENDING_STOPPED, "failover", current=read_b))
        a_put(items)
    a._put_many = b_first
    with pytest.raises(ConflictError, match=r"is PENDING_STOPPED now \(failover\): another command"):
        a.set_state("orders", PAUSED, "paused", current=read_a)
    b_won = b_won[0]
    assert b_won.state == PENDING_STOPPED
    # every reader folds the same winner: a fresh one, both stores, and the compacted log
    for store in (fake_store(log), a, b):
        assert store.get_mirror("orders").state == PENDING_STOPPED
    # the loser wrote the winner's record again, so the key's newest record is not its own
    assert [v["state"] for _, k, v in log.records if k == mirror_key("dr", "orders")] == \
        ["ACTIVE", "PENDING_STOPPED", "PAUSED", "PENDING_STOPPED"]
    log.compact_until(log.next)
    assert fake_store(log).get_mirror("orders").state == PENDING_STOPPED


def test_a_losing_write_slipped_in_by_a_race_is_never_folded():
    from kafka_mirrors.state import PAUSED, StateSnapshot
    key = mirror_key("dr", "orders")
    snap = StateSnapshot("dr")
    assert snap.apply(key, rec().to_json(), 0)
    assert snap.apply(key, {**rec(state=STOPPED).to_json(), "based_on": 0}, 1)
    assert not snap.apply(key, {**rec(state=PAUSED).to_json(), "based_on": 0}, 2)  # read 0 too
    assert snap.mirrors["orders"].state == STOPPED and snap.rejected == {2}
    assert snap.apply(key, {**rec(state=PAUSED).to_json(), "based_on": 1}, 3)  # read the winner
    assert snap.mirrors["orders"].state == PAUSED
    assert snap.apply(key, rec(state=STOPPED).to_json(), 4)  # unconditional: last writer wins


def test_the_follower_skips_a_losing_write_as_every_reader_does():
    from kafka_mirrors.state import PAUSED, StateFollower
    f = StateFollower.__new__(StateFollower)
    f._prefixes, f.error, f.position = ("mirror/dr/",), None, 0
    f._mirror_prefix, f.mirror_offsets = "mirror/dr/", {"orders": 0}
    k = b"mirror/dr/orders"
    batch = [_Msg(key=k, value=encode({**rec(state=STOPPED).to_json(), "based_on": 0}), offset=1),
             _Msg(key=k, value=encode({**rec(state=PAUSED).to_json(), "based_on": 0}), offset=2)]
    f._consumer = type("C", (), {"consume": lambda self, n, t: batch})()
    assert [v["state"] for _, v in f.poll(0)] == [STOPPED]


def test_a_topics_partitions_spread_over_the_slots_either_shape_of_assignment_gives_a_worker():
    # librdkafka's cooperative-sticky assignor, measured on Kafka 4.1: members joining a
    # running group take blocks (two: 0-7 and 8-15; three: 0-2+8-9, 3-7, 10-15), members
    # joining together get the slots round robin
    from kafka_mirrors.state import SLOTS, slot_of
    shapes = {"blocks of 2": [range(0, 8), range(8, 16)],
              "blocks of 3": [[0, 1, 2, 8, 9], range(3, 8), range(10, 16)],
              "round robin of 2": [range(0, 16, 2), range(1, 16, 2)],
              "round robin of 3": [range(0, 16, 3), range(1, 16, 3), range(2, 16, 3)]}
    for topic in ("orders", "payments", "t", "bench-bulk", "lat-1k-km", "1k-km2"):
        assert sorted(slot_of(topic, p) for p in range(SLOTS)) == list(range(SLOTS))
        for shape, owned in shapes.items():
            for size in (2, 4, 6, 8, 12, 16):
                loads = [sum(1 for p in range(size) if slot_of(topic, p) in set(b)) for b in owned]
                # never more than one partition over an even share
                assert max(loads) <= -(-size // len(owned)) + 1, (topic, shape, size, loads)


def test_state_topic_ends_asks_on_its_own_thread_and_skips_non_answers(monkeypatch):
    """StateTopicEnds puts (asked at, high watermark) of each answer; an error or
    librdkafka's -1001 is no answer."""
    from kafka_mirrors.state import STATE_TOPIC, StateTopicEnds

    answers = iter([RuntimeError("destination down"), (0, -1001), (0, 42)])

    class Consumer:
        closed = False

        def get_watermark_offsets(self, tp, timeout, cached):
            assert (tp.topic, tp.partition, cached) == (STATE_TOPIC, 0, False)
            a = next(answers, None)
            if a is None:
                ends._stop.set()
                return 0, 42
            if isinstance(a, Exception):
                raise a
            return a

        def close(self):
            self.closed = True

    class Store:
        link, timeout = "dr", 1.0

        def _consumer(self):
            return Consumer()

    ends = StateTopicEnds(Store(), interval=0.0).start()
    ends._thread.join(5)
    assert not ends._thread.is_alive()
    got = []
    while not ends.answers.empty():
        got.append(ends.answers.get_nowait())
    assert [end for _at, end in got] == [42, 42]  # the error and the -1001 gave none
    ends.close()
    assert ends._consumer.closed
