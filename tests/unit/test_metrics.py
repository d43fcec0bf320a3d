"""The metrics collector (kafka_mirrors.metrics) over a fake worker: the series it
serves, lag in records and seconds from the progress view, counters that survive a
partition's copy restarting, mirrors not being copied measured from ListOffsets, and the
port checked as bad input."""
from __future__ import annotations

import types

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kafka_mirrors import metrics as km
from kafka_mirrors import state as st
from kafka_mirrors.errors import UsageError


class FakePlane:
    def __init__(self):
        self.view: dict = {}
        self.view_serial = 0
        self._status: dict = {}

    def publish(self, view: dict) -> None:
        self.view = view
        self.view_serial += 1

    def status(self) -> dict:
        return {t: dict(s) for t, s in self._status.items()}


def _rec(topic: str, state: str = st.ACTIVE, partitions: int = 2) -> st.MirrorRecord:
    return types.SimpleNamespace(topic=topic, source_topic=topic, state=state, partitions=partitions)


def _prog(hw, nxt, copied=0, fillers=0, lost=0) -> dict:
    return {"source_high_watermark": hw, "next_offset": nxt, "records_copied": copied,
            "records_fetched": copied + 1, "bytes_fetched": 100 * (copied + 1), "bytes_copied": 100 * copied,
            "fillers_written": fillers, "offsets_lost_to_source_retention": lost}


class FakeWorker:
    def __init__(self):
        self.link = types.SimpleNamespace(name="dr")
        self.worker_id = "w1"
        self.plane = FakePlane()
        self.known = {"orders": _rec("orders"), "paused": _rec("paused", st.PAUSED, 1)}
        self.running = {"orders"}
        self.errors: dict[str, str] = {}
        self.source = types.SimpleNamespace(ok=True)
        self.jobs = types.SimpleNamespace(offset_sync=None)
        self.last_heartbeat_at = None
        self.src_admin = self.dst_admin = None


def _scrape(collector) -> dict[tuple[str, tuple], float]:
    from prometheus_client.registry import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _p(mirror: str, p: int) -> tuple:
    return tuple(sorted({"link": "dr", "mirror": mirror, "partition": str(p)}.items()))


@pytest.fixture
def world(monkeypatch):
    w = FakeWorker()
    clock = {"now": 1000.0}
    lookups = {"src": {}, "dst": {}}

    def list_offsets_many(admin, partitions, which):
        side = "src" if which == "last_stable" else "dst"
        return {t: {p: lookups[side][t][p] for p in parts if p in lookups[side].get(t, {})}
                for t, parts in partitions.items()}

    from kafka_mirrors.kafka import topics as kt
    monkeypatch.setattr(kt, "list_offsets_many", list_offsets_many)
    sampler = km.Sampler(w)
    col = km.WorkerCollector(w, sampler, clock=lambda: clock["now"])
    return w, sampler, col, clock, lookups


def test_partition_series_from_the_progress_view(world):
    w, sampler, col, clock, lookups = world
    lookups["src"]["paused"] = {0: 50}
    lookups["dst"]["paused"] = {0: 40}
    w.plane._status = {"orders": {"state": "copying", "partitions": [0, 1]}}
    w.plane.publish({"orders": {0: _prog(100, 100, copied=100), 1: _prog(30, 10, copied=10, fillers=2, lost=3)}})
    sampler.tick(1000.0)
    got = _scrape(col)
    assert got[("kafka_mirrors_partition_lag_records", _p("orders", 0))] == 0
    assert got[("kafka_mirrors_partition_lag_records", _p("orders", 1))] == 20
    assert got[("kafka_mirrors_partition_last_copied_offset", _p("orders", 1))] == 9
    assert got[("kafka_mirrors_partition_records_copied_total", _p("orders", 0))] == 100
    assert got[("kafka_mirrors_partition_fillers_written_total", _p("orders", 1))] == 2
    assert got[("kafka_mirrors_partition_records_fetched_total", _p("orders", 0))] == 101
    assert got[("kafka_mirrors_partition_bytes_copied_total", _p("orders", 1))] == 1000
    assert got[("kafka_mirrors_partition_bytes_fetched_total", _p("orders", 0))] == 10100
    assert got[("kafka_mirrors_partition_offsets_lost_to_source_retention_total", _p("orders", 1))] == 3
    # the paused mirror is measured from ListOffsets (the copy plane does not fetch it)
    assert got[("kafka_mirrors_partition_lag_records", _p("paused", 0))] == 10
    assert got[("kafka_mirrors_link_max_lag_records", (("link", "dr"),))] == 20
    assert got[("kafka_mirrors_mirror_state", (("link", "dr"), ("mirror", "paused"), ("state", "PAUSED")))] == 1
    assert got[("kafka_mirrors_mirror_state", (("link", "dr"), ("mirror", "paused"), ("state", "ACTIVE")))] == 0
    assert got[("kafka_mirrors_mirror_copy_status",
                (("link", "dr"), ("mirror", "orders"), ("status", "copying")))] == 1
    # ACTIVE orders: 2 partitions served; the paused mirror is not served
    assert got[("kafka_mirrors_worker_partitions_served", (("link", "dr"), ("worker_id", "w1")))] == 2
    assert ("kafka_mirrors_heartbeat_age_seconds", (("link", "dr"),)) not in got  # no heartbeat yet


def test_lag_seconds_is_the_age_of_the_oldest_uncopied_record(world):
    w, sampler, col, clock, _ = world
    w.known = {"orders": _rec("orders", partitions=1)}
    w.plane._status = {"orders": {"state": "copying", "partitions": [0]}}
    w.plane.publish({"orders": {0: _prog(10, 10)}})
    sampler.tick(1000.0)
    w.plane.publish({"orders": {0: _prog(20, 10)}})   # offsets 10..19 seen at t=1002
    sampler.tick(1002.0)
    w.plane.publish({"orders": {0: _prog(30, 15)}})   # 15 still uncopied: it existed at 1002
    sampler.tick(1004.0)
    clock["now"] = 1005.0
    assert _scrape(col)[("kafka_mirrors_partition_lag_seconds", _p("orders", 0))] == pytest.approx(3.0)
    w.plane.publish({"orders": {0: _prog(30, 25)}})   # what was seen at 1002 is copied
    sampler.tick(1006.0)
    clock["now"] = 1007.0
    assert _scrape(col)[("kafka_mirrors_partition_lag_seconds", _p("orders", 0))] == pytest.approx(3.0)
    w.plane.publish({"orders": {0: _prog(30, 30)}})   # caught up
    sampler.tick(1008.0)
    got = _scrape(col)
    assert got[("kafka_mirrors_partition_lag_seconds", _p("orders", 0))] == 0
    assert got[("kafka_mirrors_partition_lag_records", _p("orders", 0))] == 0


def test_counters_survive_a_restart_of_the_partition_copy(world):
    w, sampler, col, clock, _ = world
    w.known = {"orders": _rec("orders", partitions=1)}
    w.plane._status = {"orders": {"state": "copying", "partitions": [0]}}
    w.plane.publish({"orders": {0: _prog(50, 50, copied=50)}})
    sampler.tick(1000.0)
    w.plane.publish({"orders": {0: _prog(60, 55, copied=5)}})  # a new copier counts from 0
    sampler.tick(1001.0)
    assert _scrape(col)[("kafka_mirrors_partition_records_copied_total", _p("orders", 0))] == 55


def test_link_series_heartbeat_offset_sync_and_errors(world):
    w, sampler, col, clock, _ = world
    w.last_heartbeat_at = 990.0
    w.jobs.offset_sync = {"at": 995.0, "errors": {"g1": "refused"}, "offsets_written": 4}
    w.errors = {"orders": "partition 0: producing to destination failed: _MSG_TIMED_OUT: Local: Message timed out",
                "paused": "cannot start: destination cluster x did not answer within 2 s"}
    sampler.tick(1000.0)
    sampler.tick(1000.5)  # the same sync is counted once
    got = _scrape(col)
    L = (("link", "dr"),)
    assert got[("kafka_mirrors_heartbeat_age_seconds", L)] == 10
    assert got[("kafka_mirrors_consumer_offset_sync_age_seconds", L)] == 5
    assert got[("kafka_mirrors_consumer_offset_sync_groups_failed", L)] == 1
    assert got[("kafka_mirrors_consumer_offset_sync_group_failures_total", L)] == 1
    assert got[("kafka_mirrors_link_client_errors", (("kind", "_MSG_TIMED_OUT"), ("link", "dr")))] == 1
    assert got[("kafka_mirrors_link_client_errors", (("kind", "timeout"), ("link", "dr")))] == 1
    assert got[("kafka_mirrors_mirror_error", (("kind", "_MSG_TIMED_OUT"), ("link", "dr"), ("mirror", "orders")))] == 1
    assert got[("kafka_mirrors_source_reachable", L)] == 1


def test_stopped_mirrors_have_no_partition_series(world):
    w, sampler, col, clock, _ = world
    w.known = {"orders": _rec("orders", st.STOPPED, 1)}
    w.running = set()
    w.plane.publish({"orders": {0: _prog(10, 5)}})
    sampler.tick(1000.0)
    got = _scrape(col)
    assert not [k for k in got if k[0].startswith("kafka_mirrors_partition_")]


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_metrics_port_out_of_range_is_a_usage_error(port):
    with pytest.raises(UsageError, match="expected 1-65535"):
        km.check_port(port)


def test_metrics_port_in_range():
    assert km.check_port(1) == 1 and km.check_port(65535) == 65535


def test_run_refuses_a_bad_metrics_port_before_anything(cli):
    r = cli("run", "--link", "nope", "--metrics-port", "70000")
    assert r.exit_code == 2
    assert "metrics port 70000 is out of range: expected 1-65535" in r.stderr


def test_metrics_port_link_option_is_checked():
    from kafka_mirrors.errors import ConfigError
    from kafka_mirrors.registry import validate_option
    assert validate_option("metrics.port", "9405") == 9405
    with pytest.raises(ConfigError, match="metrics.port"):
        validate_option("metrics.port", "65536")


def test_error_kind():
    assert km.error_kind("x failed: UNKNOWN_TOPIC_OR_PART: gone") == "UNKNOWN_TOPIC_OR_PART"
    assert km.error_kind("FAILED, not recorded yet: boom") == "failed_not_recorded"
    assert km.error_kind("something odd") == "other"
