"""`kafka-mirrors run --metrics-port N` on real brokers (issue 12, metrics): the endpoint
serves the named series; records copied moves as records are produced; while the mirror
is paused its lag rises with what the source receives, and comes back to 0 once resumed.
Every check is made while the worker process is running and its heartbeat is fresh."""
from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import mirrortools as mt

pytestmark = pytest.mark.integration

NAMED = [
    "kafka_mirrors_partition_lag_records", "kafka_mirrors_partition_lag_seconds",
    "kafka_mirrors_partition_last_copied_offset", "kafka_mirrors_partition_records_copied_total",
    "kafka_mirrors_partition_fillers_written_total", "kafka_mirrors_partition_records_fetched_total",
    "kafka_mirrors_partition_bytes_fetched_total", "kafka_mirrors_partition_bytes_copied_total",
    "kafka_mirrors_partition_offsets_lost_to_source_retention_total",
    "kafka_mirrors_mirror_state", "kafka_mirrors_link_max_lag_records", "kafka_mirrors_link_max_lag_seconds",
    "kafka_mirrors_heartbeat_age_seconds", "kafka_mirrors_worker_partitions_served",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAST_BODY: list[str] = [""]  # the last scrape, kept for the failure message and the saved samples


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    LAST_BODY[0] = body
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _sum(got, name: str, mirror: str) -> float:
    return sum(v for k, v in got.get(name, {}).items() if ("mirror", mirror) in k)


def test_metrics_endpoint_moves_with_the_copy_and_lag_rises_while_paused(mirroring):
    m = mirroring
    topic = m.new_mirror(partitions=2, records=60)
    port = _free_port()
    log = open(m.tmp_path / "worker-metrics.log", "wb")
    w = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", "--registry", str(m.registry_path),
                          "run", "--link", m.name, "--metrics-port", str(port)],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    m.procs.append(w)  # stopped at teardown by the fixture, even when the test fails

    def alive(got) -> None:
        assert w.poll() is None, (m.tmp_path / "worker-metrics.log").read_text(errors="replace")
        age = got.get("kafka_mirrors_heartbeat_age_seconds", {}).get((("link", m.name),))
        assert age is not None and age < 10, f"heartbeat age {age}"

    def scrape_when(pred, what: str, timeout: float = 60):
        def attempt():
            assert w.poll() is None, (m.tmp_path / "worker-metrics.log").read_text(errors="replace")
            try:
                got = _scrape(port)
            except (urllib.error.URLError, ConnectionError):
                return None
            return got if pred(got) else None
        return mt.wait_until(attempt, timeout, what, interval=0.5)

    # 1. the initial copy: records copied reaches what the source holds, lag 0
    got = scrape_when(lambda g: _sum(g, "kafka_mirrors_partition_records_copied_total", topic) == 60
                      and "kafka_mirrors_heartbeat_age_seconds" in g, "60 records copied")
    alive(got)
    (m.tmp_path / "metrics-copied.txt").write_text(LAST_BODY[0])
    for name in NAMED:
        assert name in got, f"{name} not served"
    assert got["kafka_mirrors_mirror_state"][(("link", m.name), ("mirror", topic), ("state", "ACTIVE"))] == 1
    assert got["kafka_mirrors_worker_partitions_served"][(("link", m.name), ("worker_id",
               next(iter(got["kafka_mirrors_worker_partitions_served"]))[1][1]))] == 2
    got = scrape_when(lambda g: _sum(g, "kafka_mirrors_partition_lag_records", topic) == 0
                      and len(g.get("kafka_mirrors_partition_lag_records", {})) == 2, "lag 0 after the copy")
    assert _sum(got, "kafka_mirrors_partition_last_copied_offset", topic) == 60 - 2
    assert _sum(got, "kafka_mirrors_partition_records_fetched_total", topic) >= 60
    bytes_copied = _sum(got, "kafka_mirrors_partition_bytes_copied_total", topic)
    held = sum(len(r.key or b"") + len(r.value or b"") for p in (0, 1) for r in mt.snapshot(m.source, topic, p))
    assert bytes_copied == held, (bytes_copied, held)  # keys and values, counted exactly
    assert _sum(got, "kafka_mirrors_partition_bytes_fetched_total", topic) == held  # nothing in flight now

    # 2. records copied moves as records are produced
    mt.produce_records(m.source, topic, mt.make_records(40, seed=5), partitions=2)
    got = scrape_when(lambda g: _sum(g, "kafka_mirrors_partition_records_copied_total", topic) == 100,
                      "100 records copied")
    alive(got)
    assert _sum(got, "kafka_mirrors_partition_bytes_copied_total", topic) > bytes_copied

    # 3. paused: the lag rises with what the source receives, in records and in seconds
    r = m.cli("mirror", "pause", topic, "--link", m.name)
    assert r.exit_code == 0, r.stderr
    scrape_when(lambda g: g["kafka_mirrors_mirror_state"].get(
        (("link", m.name), ("mirror", topic), ("state", "PAUSED"))) == 1, "state PAUSED in the metrics")
    mt.produce_records(m.source, topic, mt.make_records(30, seed=6), partitions=2)
    got = scrape_when(lambda g: _sum(g, "kafka_mirrors_partition_lag_records", topic) == 30, "lag 30 while paused")
    alive(got)
    assert got["kafka_mirrors_link_max_lag_records"][(("link", m.name),)] == 15
    got = scrape_when(lambda g: _sum(g, "kafka_mirrors_partition_lag_seconds", topic) > 0,
                      "lag in seconds > 0 while paused", timeout=20)
    alive(got)
    (m.tmp_path / "metrics-paused.txt").write_text(LAST_BODY[0])
    assert _sum(got, "kafka_mirrors_partition_records_copied_total", topic) == 100  # nothing copied

    # 4. resumed: copied, the counter carries on from where it was, lag back to 0
    r = m.cli("mirror", "resume", topic, "--link", m.name)
    assert r.exit_code == 0, r.stderr
    got = scrape_when(lambda g: _sum(g, "kafka_mirrors_partition_records_copied_total", topic) == 130
                      and _sum(g, "kafka_mirrors_partition_lag_records", topic) == 0, "caught up after resume")
    alive(got)
    assert _sum(got, "kafka_mirrors_partition_lag_seconds", topic) == 0

    # a clean stop closes the endpoint
    m.stop_worker(w)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _scrape(port)
