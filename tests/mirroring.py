"""One link between the `source` and `destination` fixtures for integration tests: the
mirrors made on it and the worker processes started for it (real `kafka-mirrors run`
processes, so a test can SIGKILL them). The `mirroring` fixture (conftest.py) stops every
worker at teardown, even when the test fails."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

from kafka_mirrors import state as st
from tests import mirrortools as mt


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Mirroring:
    def __init__(self, cli, registry_path: Path, source, destination, tmp_path: Path):
        self.cli = cli
        self.registry_path = registry_path
        self.source = source
        self.destination = destination
        self.tmp_path = tmp_path
        self.name = unique("link")
        self.procs: list[subprocess.Popen] = []
        r = cli("link", "create", self.name, "--source", source.bootstrap,
                "--destination", destination.bootstrap)
        assert r.exit_code == 0, r.stderr

    @classmethod
    def for_link(cls, other: "Mirroring", name: str, source, destination) -> "Mirroring":
        """Another link in the same registry (e.g. the reverse link a fail-back made), not
        created here; its workers share `other`'s list, so `other.stop_all()` stops them."""
        m = cls.__new__(cls)
        m.__dict__.update(other.__dict__)
        m.name, m.source, m.destination = name, source, destination
        return m

    # ---- mirrors
    def mirror(self, topic: str) -> str:
        r = self.cli("mirror", "create", topic, "--link", self.name)
        assert r.exit_code == 0, r.stderr
        return topic

    def new_mirror(self, partitions: int = 2, records: int = 0) -> str:
        """A new source topic (with `records` awkward records) and its mirror."""
        topic = self.source.create_topic(unique("t"), partitions=partitions)
        if records:
            mt.produce_records(self.source, topic, mt.make_records(records, seed=3), partitions=partitions)
        return self.mirror(topic)

    def state(self, topic: str) -> st.MirrorRecord:
        store = st.StateStore(self.destination.conf(), self.name)
        try:
            return store.snapshot().mirrors[topic]
        finally:
            store.close()

    # ---- workers
    def start_worker(self, instance_id: str | None = None) -> subprocess.Popen:
        """A worker of the link; with `instance_id` a static member of its group (a
        restart takes back the killed one's slots at once, not after its session timeout)."""
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")
        p = subprocess.Popen(
            [sys.executable, "-m", "kafka_mirrors", "--registry", str(self.registry_path),
             "run", "--link", self.name, *(["--instance-id", instance_id] if instance_id else []),
             # KAFKA_MIRRORS_TEST_WORKER_LOG_LEVEL=debug: the workers' logs in full, to look into a failure
             "--log-level", os.environ.get("KAFKA_MIRRORS_TEST_WORKER_LOG_LEVEL", "info")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    def stop_worker(self, p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def kill_during_copy(self, topics: list[str], kills: int, rnd: random.Random) -> int:
        """`kills` times: start a worker, let it copy a random part of what remains, then
        SIGKILL it. Kill moments follow the copy's progress (not the clock), so they land
        while records are being written. Returns how many kills left the copy unfinished.
        Stops early when the copy stops moving for 20 s (e.g. a mirror went FAILED)."""
        parts = {t: sorted(mt.log_end_offsets(self.source, t)) for t in topics}
        total = sum(sum(mt.log_end_offsets(self.source, t).values()) for t in topics)
        c = self.destination.consumer()
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]

        def copied() -> int:
            return sum(c.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in tps)

        mid_copy = 0
        try:
            for k in range(kills):
                now = copied()
                remaining = total - now
                if remaining <= 0:
                    break
                target = now + max(1, int(remaining / (kills - k + 1) * rnd.uniform(0.3, 1.0)))
                # the same instance id each time, as a service manager restarts a worker
                w = self.start_worker(instance_id=f"{self.name}-restarted")
                last, moved_at = now, time.monotonic()
                while (n := copied()) < target and w.poll() is None:
                    if n != last:
                        last, moved_at = n, time.monotonic()
                    elif time.monotonic() - moved_at > 20:
                        break
                    time.sleep(0.005)
                w.send_signal(signal.SIGKILL)
                w.wait(10)
                if n < target:  # stalled, not killed on purpose mid-copy
                    break
                if copied() < total:
                    mid_copy += 1
        finally:
            c.close()
        return mid_copy

    def worker_log(self) -> str:
        return "\n".join((self.tmp_path / f"worker-{i}.log").read_text(errors="replace")[-3000:]
                         for i in range(len(self.procs)))

    # ---- waiting
    def ends(self, cluster, topic: str) -> dict[int, int]:
        return mt.log_end_offsets(cluster, topic)

    def wait_caught_up(self, topic: str, timeout: float = 120.0) -> None:
        """Until every destination partition's log end offset equals the source's high
        watermark (markers and fillers included, the logs line up exactly)."""
        def caught_up():
            src = mt.log_end_offsets(self.source, topic)
            return src == mt.log_end_offsets(self.destination, topic, sorted(src))
        try:
            mt.wait_until(caught_up, timeout, f"mirror {topic} to catch up")
        except AssertionError:
            raise AssertionError(f"not caught up; worker log tail:\n{self.worker_log()}") from None

    def wait_worker_serving(self, topic: str, timeout: float = 30.0) -> None:
        def serving():
            store = st.StateStore(self.destination.conf(), self.name)
            try:
                return any(any(t == topic for t, _ in st.worker_partitions(w))
                           for w in store.snapshot().workers.values())
            finally:
                store.close()
        mt.wait_until(serving, timeout, f"a worker heartbeat listing {topic}", interval=0.5)
