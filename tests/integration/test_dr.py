"""DR commands on real brokers: pause/resume, promote, failover (with the source made
unreachable), the refusals (lag not reachable, no terminal without --yes)."""
from __future__ import annotations

import json
import time

import pytest

from kafka_mirrors import state as st
from tests import mirrortools as mt

pytestmark = pytest.mark.integration


@pytest.fixture
def dr(mirroring):
    return mirroring


def test_pause_stops_copying_and_resume_catches_up(dr, cli, source, destination):
    topic = dr.new_mirror(partitions=2, records=200)
    dr.start_worker()
    dr.wait_caught_up(topic)
    r = cli("mirror", "pause", topic, "--link", dr.name)
    assert r.exit_code == 0, r.stderr
    assert f"paused {topic}: PAUSED" in r.stdout
    mt.wait_until(lambda: (dr.state(topic).state == st.PAUSED), 10, "PAUSED")
    # the worker acknowledges the stop once its copiers are flushed
    store = st.StateStore(destination.conf(), dr.name)
    mt.wait_until(lambda: any(t == topic for t, _ in store.snapshot().acks), 20, "the worker's ack")
    store.close()
    before = dr.ends(destination, topic)
    mt.produce_records(source, topic, mt.make_records(100, seed=9), partitions=2)
    time.sleep(4)  # two heartbeat periods: a running copier would have copied by now
    assert dr.ends(destination, topic) == before
    # a second pause of the same mirror is a failed row: exit 1
    r = cli("mirror", "pause", topic, "--link", dr.name)
    assert r.exit_code == 1 and "is PAUSED; pause needs ACTIVE" in r.stderr
    r = cli("mirror", "resume", topic, "--link", dr.name)
    assert r.exit_code == 0, r.stderr
    dr.wait_caught_up(topic)
    mt.assert_identical(source, destination, topic, topic, partitions=2)


def test_pause_unknown_mirror_fails_row(dr, cli):
    topic = dr.new_mirror(partitions=1)
    r = cli("mirror", "pause", topic, "nope-" + topic, "--link", dr.name)
    assert r.exit_code == 1
    assert f"paused {topic}: PAUSED" in r.stdout
    assert f"mirror 'nope-{topic}' of link '{dr.name}' not found" in r.stderr
    assert dr.state(topic).state == st.PAUSED


def test_promote_after_producers_stop(dr, cli, source, destination):
    topic = dr.new_mirror(partitions=2, records=300)
    worker = dr.start_worker()
    dr.wait_worker_serving(topic)
    r = cli("promote", topic, "--link", dr.name, "--yes", "--timeout", "60", "--output", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["topics"][0]
    assert row["state"] == st.STOPPED and row["workers_not_acked"] == [] and row["workers"]
    rec = dr.state(topic)
    assert (rec.state, rec.reason, rec.stopped["reason"]) == (st.STOPPED, "promoted", "promoted")
    mt.assert_identical(source, destination, topic, topic, partitions=2)
    # the destination is now an ordinary topic: a producer writes, the worker leaves it be
    ends = dr.ends(destination, topic)
    destination.produce(topic, [b"after-promote"], partition=0)
    time.sleep(3)
    assert worker.poll() is None
    after = dr.ends(destination, topic)
    assert after == {0: ends[0] + 1, 1: ends[1]}
    assert dr.state(topic).state == st.STOPPED


def test_promote_without_worker_fails_and_changes_nothing(dr, cli):
    topic = dr.new_mirror(partitions=1, records=50)
    r = cli("mirror", "promote", topic, "--link", dr.name, "--yes", "--timeout", "1")
    assert r.exit_code == 1
    assert "not promoted: still 50 record(s) behind" in r.stderr
    assert f"run 'kafka-mirrors run --link {dr.name}'" in r.stderr
    assert dr.state(topic).state == st.ACTIVE


def test_failover_with_worker_running_and_source_down(dr, cli, source, destination, registry_path):
    topic = dr.new_mirror(partitions=2, records=200)
    worker = dr.start_worker()
    dr.wait_caught_up(topic)
    dr.wait_worker_serving(topic)
    # make the source unreachable for the CLI: failover must use the destination only
    text = registry_path.read_text()
    registry_path.write_text(text.replace(source.bootstrap, "127.0.0.1:1"))
    t0 = time.monotonic()
    r = cli("failover", topic, "--link", dr.name, "--yes", "--output", "json")
    took = time.monotonic() - t0
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["topics"][0]
    assert row["workers_not_acked"] == [] and row["workers"]
    assert took < 10, took  # the worker acked promptly: no waiting for the bound
    dst = dr.ends(destination, topic)
    assert {int(p): v["destination_log_end_offset"] for p, v in row["partitions"].items()} == dst
    rec = dr.state(topic)
    assert (rec.state, rec.reason, rec.stopped["reason"]) == (st.STOPPED, "failed over", "failed over")
    assert worker.poll() is None


def test_failover_without_worker_reports_offsets(dr, cli, source, destination):
    topic = dr.new_mirror(partitions=1, records=100)
    worker = dr.start_worker()
    dr.wait_caught_up(topic)
    dr.stop_worker(worker)
    source.produce(topic, [b"x%d" % i for i in range(7)], partition=0)
    r = cli("failover", topic, "--link", dr.name, "--yes")
    assert r.exit_code == 0, r.stderr
    assert "DESTINATION LOG END OFFSET" in r.stdout
    assert "no live worker was copying it" in r.stdout
    # the source is never asked: the last source offset is what the worker reported before
    # it stopped (100), so the 7 records written after it are not counted and the RPO is
    # printed as a lower bound
    assert f"{topic}: STOPPED (failed over); records possibly lost: at least 0" in r.stdout
    rec = dr.state(topic)
    assert rec.state == st.STOPPED
    assert rec.stopped["partitions"]["0"] == {"destination_log_end_offset": 100, "last_known_source_offset": 100,
                                              "records_possibly_lost": 0}


def test_no_terminal_without_yes_changes_nothing(dr, cli):
    topic = dr.new_mirror(partitions=1)
    for cmd in (["failover"], ["promote"], ["mirror", "failover"]):
        r = cli(*cmd, topic, "--link", dr.name)
        assert r.exit_code == 2
        assert "confirmation needed but there is no terminal; pass --yes" in r.stderr
    assert dr.state(topic).state == st.ACTIVE
