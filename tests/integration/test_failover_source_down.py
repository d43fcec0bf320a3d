"""Disaster drill on real brokers (issue 5, must-show 2): records flow through a running
worker, the source broker process is SIGKILLed, and `failover` must stop the mirror with
the worker's acknowledgement, leave a writable topic, and print an RPO that matches the
records really missing, checked by restarting the killed broker (its data kept) and
comparing its log end offsets with the failover point.

The source here is a cluster of its own (`src-down-*`): the shared `source` fixture is
never killed."""
from __future__ import annotations

import json
import shutil
import threading
import time
import uuid

import pytest

from kafka_mirrors import state as st
from tests import mirrortools as mt
from tests.mirroring import Mirroring

pytestmark = pytest.mark.integration


class Flow:
    """A producer writing steadily to every partition of a topic from a thread; keeps the
    highest offset the source acknowledged per partition."""

    def __init__(self, cluster, topic: str, partitions: int):
        self.producer = cluster.producer(**{"enable.idempotence": True, "acks": "all", "linger.ms": 2,
                                            "message.timeout.ms": 60000, "log_level": 0})
        self.topic, self.partitions = topic, partitions
        self.acked: dict[int, int] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, err, msg) -> None:
        if err is None:
            p = msg.partition()
            self.acked[p] = max(self.acked.get(p, -1), msg.offset())

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.producer.produce(self.topic, value=b"flow-%d" % i, key=b"k%d" % i,
                                      partition=i % self.partitions, on_delivery=self._delivered)
                self.sent += 1
                i += 1
            except BufferError:
                pass
            self.producer.poll(0.002)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.purge()
        self.producer.flush(1)


@pytest.mark.parametrize("when", ["at-once", "after-the-worker-noticed", "worker-restarted-during-the-outage"])
def test_failover_while_the_source_broker_is_killed(local_kafka, cli, registry_path, destination, tmp_path, when):
    name = f"src-down-{uuid.uuid4().hex[:6]}"
    src = local_kafka.up(name)
    dr = flow = None
    try:
        dr = Mirroring(cli, registry_path, src, destination, tmp_path)
        topic = dr.new_mirror(partitions=2, records=200)
        worker = dr.start_worker()
        dr.wait_caught_up(topic)
        dr.wait_worker_serving(topic)

        flow = Flow(src, topic, 2)
        flow.start()
        # records flow through the worker: the copy moves past the first 200 records
        base = sum(dr.ends(destination, topic).values())
        mt.wait_until(lambda: sum(dr.ends(destination, topic).values()) > base + 500, 120,
                      "the flow to reach the destination")
        local_kafka.kill(src)
        if when == "worker-restarted-during-the-outage":
            # a clean stop with the source gone, then a new worker that never saw the source:
            # it still answers for the mirror, and the last source offset is the old one's
            dr.stop_worker(worker)
            worker = dr.start_worker()
        if when != "at-once":
            # failover once the worker has found the source unreachable (copying waits)
            log = tmp_path / f"worker-{len(dr.procs) - 1}.log"
            mt.wait_until(lambda: "is unreachable" in log.read_text(errors="replace"), 60,
                          "the worker to notice the source is gone")
        t0 = time.monotonic()
        r = cli("failover", topic, "--link", dr.name, "--yes", "--output", "json")
        took = time.monotonic() - t0
        flow.stop()
        print(f"\nfailover with the source broker killed ({when}) "
              f"took {took:.2f} s; the producer had sent "
              f"{flow.sent} records")
        assert r.exit_code == 0, r.stderr
        assert "did not acknowledge" not in r.stdout + r.stderr
        (row,) = json.loads(r.stdout)["topics"]
        assert row["workers"] and row["workers_not_acked"] == [], (row, dr.worker_log())
        rec = dr.state(topic)
        assert (rec.state, rec.reason) == (st.STOPPED, "failed over")
        assert worker.poll() is None

        # the failover point is the destination as it stands: nothing lands after it
        point = {int(p): v["destination_log_end_offset"] for p, v in row["partitions"].items()}
        time.sleep(2)
        assert dr.ends(destination, topic) == point
        # the topic is an ordinary one now: it takes a write
        destination.produce(topic, [b"after failover"], partition=0)
        assert dr.ends(destination, topic) == {0: point[0] + 1, 1: point[1]}

        # what is really missing: the restarted source (its data kept) past the failover point
        local_kafka.restart(src)
        source_ends = mt.log_end_offsets(src, topic, [0, 1])
        exact = 0
        for p, v in sorted(row["partitions"].items()):
            p = int(p)
            actual = source_ends[p] - point[p]
            printed, last_known = v["records_possibly_lost"], v["last_known_source_offset"]
            print(f"partition {p}: failover point {point[p]}, last known source offset {last_known}, "
                  f"source log end offset after restart {source_ends[p]} (producer acked up to "
                  f"{flow.acked.get(p)}); printed RPO {printed}, actually missing {actual}")
            assert last_known is not None and printed == last_known - point[p]
            # a record the source acknowledged after the worker's last fetch response is
            # unknown to the worker: the printed RPO can only be lower, never higher
            assert 0 <= printed <= actual
            assert last_known <= source_ends[p]
            if last_known == source_ends[p]:
                exact += 1
                assert printed == actual
            assert flow.acked.get(p, -1) < source_ends[p]  # nothing acknowledged was lost by the source
        print(f"printed RPO exact on {exact} of 2 partitions")
    finally:
        if flow is not None:
            flow.stop()
        if dr is not None:
            dr.stop_all()
        local_kafka.down(name)
        shutil.rmtree(local_kafka.state_dir / name, ignore_errors=True)  # its data: this test's only
