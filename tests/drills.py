"""The two DR drills of issue 5, scripted like a runbook, with pluggable commands.

    drill 1, planned migration: producers stop -> promote -> a consumer group moves to the
        destination and reads every remaining record exactly once -> reverse-and-start ->
        the old source is a mirror of the new primary with no record copied twice
    drill 2, disaster: the source broker is killed while records flow -> failover (< 5 s)
        -> the destination takes writes -> the moved group resumes at its last synced
        offset -> the printed RPO is what is really missing -> the source restarts ->
        truncate-and-restore -> the old source mirrors the new primary, its divergent
        tail is in the side topic

The DR commands go through an `Ops` object. `Ops` runs the native commands
(`kafka-mirrors promote TOPIC --link L ...`); a subclass can run the same drills through
another syntax (e.g. Confluent-style flags, `kafka-mirrors --promote --topics t --link l
--bootstrap-server DEST`) by overriding the command methods and, if its output differs,
`printed_rpo`. Everything else a drill checks, it reads from the clusters themselves.

Records carry a unique value (`<phase>-<partition>-<n>`), so "no duplicate" and "nothing
skipped" are checked by content as well as by offset.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions

from kafka_mirrors import state as st
from tests import mirrortools as mt
from tests.mirroring import Mirroring


class Ops:
    """The DR commands a drill runs, as native `kafka-mirrors` commands through the `cli`
    fixture. Each returns the CLI result (exit_code, stdout, stderr)."""

    def __init__(self, cli, link: str, source, destination, reverse_link: str | None = None):
        self.cli = cli
        self.link = link
        self.source = source            # the forward link's source cluster (old source)
        self.destination = destination  # the forward link's destination (new primary)
        self.reverse_link = reverse_link or f"{link}-reverse"

    def promote(self, topic: str):
        return self.cli("promote", topic, "--link", self.link, "--yes", "--timeout", "120", "--output", "json")

    def failover(self, topic: str):
        return self.cli("failover", topic, "--link", self.link, "--yes", "--output", "json")

    def reverse_and_start(self, topic: str):
        return self.cli("reverse-and-start", topic, "--link", self.link, "--reverse-link", self.reverse_link,
                        "--yes", "--output", "json")

    def reverse_and_pause(self, topic: str):
        return self.cli("reverse-and-pause", topic, "--link", self.link, "--reverse-link", self.reverse_link,
                        "--yes", "--output", "json")

    def truncate_and_restore(self, topic: str):
        return self.cli("truncate-and-restore", topic, "--link", self.link, "--reverse-link", self.reverse_link,
                        "--yes", "--output", "json")

    def printed_rpo(self, result, topic: str) -> dict[int, int | None]:
        """Records possibly lost per partition, as the failover command printed them."""
        row = next(r for r in json.loads(result.stdout)["topics"] if r["topic"] == topic)
        return {int(p): v["records_possibly_lost"] for p, v in row["partitions"].items()}


# ---------------------------------------------------------------- small tools

def value(phase: str, partition: int, n: int) -> bytes:
    return f"{phase}-{partition}-{n}".encode()


def produce_phase(cluster, topic: str, phase: str, per_partition: int, partitions: int) -> None:
    """per_partition records with unique values to each partition; keys, headers and
    timestamps vary so a copy that loses any of them shows."""
    now = int(time.time() * 1000)
    p = cluster.producer(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    errors = []
    for part in range(partitions):
        for n in range(per_partition):
            key = None if n % 3 == 0 else (b"" if n % 3 == 1 else f"k{n}".encode())
            p.produce(topic, value=value(phase, part, n), key=key, partition=part,
                      headers=[("phase", phase.encode()), ("dup", b"a"), ("dup", None)][: n % 4],
                      timestamp=now - (n % 5) * 60_000,
                      on_delivery=lambda err, _m: err and errors.append(err))
            p.poll(0)
    assert p.flush(60) == 0 and not errors, errors


def committed(cluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets for topic on cluster (-1001 = none)."""
    admin = cluster.admin()
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    res = admin.list_consumer_group_offsets([req])[group].result(30)
    return {tp.partition: tp.offset for tp in res.topic_partitions}


def consume_n(cluster, group: str, topic: str, n_per_partition: dict[int, int] | None, commit: bool,
              timeout: float = 60.0):
    """Join `group` on `cluster`, read from its committed offsets (earliest if none): per
    partition the given number of records, or (None) everything up to the log end offset.
    Commits what it read when `commit`. Returns [(partition, offset, value)] in read order."""
    c = cluster.consumer(**{"group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                            "isolation.level": "read_committed"})
    out = []
    try:
        c.subscribe([topic])
        parts = mt.log_end_offsets(cluster, topic)
        want = dict(n_per_partition) if n_per_partition is not None else None
        got = {p: 0 for p in parts}
        last = {p: None for p in parts}
        deadline = time.monotonic() + timeout

        def done() -> bool:
            if want is not None:
                return all(got[p] >= want.get(p, 0) for p in parts)
            if not c.assignment():
                return False
            pos = {tp.partition: tp.offset for tp in c.position([TopicPartition(topic, p) for p in parts])}
            return all(pos[p] >= parts[p] or (last[p] is not None and last[p] + 1 >= parts[p]) for p in parts)

        while not done():
            assert time.monotonic() < deadline, f"consuming {topic} as {group}: got {got}, wanted {want or parts}"
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            p = m.partition()
            if want is not None and got[p] >= want.get(p, 0):
                # more than asked on this partition: go back so a commit leaves it unread
                tp = TopicPartition(topic, p, m.offset())
                c.seek(tp)
                c.pause([tp])
                continue
            out.append((p, m.offset(), m.value()))
            got[p] += 1
            last[p] = m.offset()
        if commit:
            c.commit(offsets=[TopicPartition(topic, p, last[p] + 1) for p in parts if last[p] is not None],
                     asynchronous=False)
    finally:
        c.close()
    return out


def link_progress(destination, link: str, topic: str) -> dict[int, dict]:
    store = st.StateStore(destination.conf(), link)
    try:
        return {p: v for (t, p), v in store.snapshot().progress.items() if t == topic}
    finally:
        store.close()


def worker_ids(cluster, link: str) -> list[str]:
    store = st.StateStore(cluster.conf(), link)
    try:
        return sorted(store.snapshot().workers)
    finally:
        store.close()


def acked_since(cluster, link: str, topic: str, workers: list[str], since: float) -> bool:
    """Every one of `workers` acknowledged a stop of `topic` at or after `since`."""
    store = st.StateStore(cluster.conf(), link)
    try:
        acks = store.snapshot().acks
    finally:
        store.close()
    return all((acks.get((topic, w)) or {}).get("state") == "stopped"
               and float((acks.get((topic, w)) or {}).get("at") or 0) >= since for w in workers)


def mirror_record(cluster, link: str, topic: str) -> st.MirrorRecord:
    store = st.StateStore(cluster.conf(), link)
    try:
        return store.snapshot().mirrors[topic]
    finally:
        store.close()


def assert_no_duplicates(cluster, topic: str, partitions: int) -> int:
    """No value twice in the topic; returns the number of records."""
    seen, total = set(), 0
    for p in range(partitions):
        for r in mt.snapshot(cluster, topic, p):
            assert r.value not in seen, f"{topic}-{p} offset {r.offset}: {r.value!r} is there twice"
            seen.add(r.value)
            total += 1
    return total


# ---------------------------------------------------------------- drill 1

@dataclass
class Drill1Result:
    topic: str
    promoted: dict
    reversed: dict
    read_after_move: list = field(default_factory=list)


def drill_planned_migration(ops: Ops, mirroring, partitions: int = 2, before: int = 300, after: int = 120,
                            consumed_before: int = 100) -> Drill1Result:
    """Must-show 1. `mirroring` links ops.source -> ops.destination (tests/mirroring.py)."""
    src, dst = ops.source, ops.destination
    topic = src.create_topic(mt_unique("drill1"), partitions=partitions)
    produce_phase(src, topic, "before", before, partitions)
    mirroring.mirror(topic)
    mirroring.start_worker()
    group = mt_unique("g1")
    # the application consumes part of the topic on the source and commits
    first = consume_n(src, group, topic, {p: consumed_before for p in range(partitions)}, commit=True)
    assert len(first) == consumed_before * partitions
    mirroring.wait_caught_up(topic)

    # producers stop; promote
    r = ops.promote(topic)
    assert r.exit_code == 0, r.stderr
    fwd = mirror_record(dst, ops.link, topic)
    assert (fwd.state, fwd.stopped["reason"]) == (st.STOPPED, "promoted")
    stop = {int(p): v["destination_log_end_offset"] for p, v in fwd.stopped["partitions"].items()}
    assert stop == mt.log_end_offsets(src, topic) == mt.log_end_offsets(dst, topic)

    # the group moves to the destination: its committed offsets came along (promote copies
    # them one last time), and it reads every remaining record exactly once
    assert committed(dst, group, topic, partitions) == {p: consumed_before for p in range(partitions)}
    rest = consume_n(dst, group, topic, None, commit=True)
    for p in range(partitions):
        offs = [o for q, o, _ in rest if q == p]
        assert offs == list(range(consumed_before, before)), f"partition {p}: read {offs[:5]}...{offs[-5:]}"
        assert [v for q, _, v in rest if q == p] == [value("before", p, n) for n in range(consumed_before, before)]

    # the new primary takes writes; then the old source follows it
    produce_phase(dst, topic, "after", after, partitions)
    r = ops.reverse_and_start(topic)
    assert r.exit_code == 0, r.stderr
    rev = mirror_record(src, ops.reverse_link, topic)
    assert (rev.state, rev.source_topic) == (st.ACTIVE, topic)
    reverse = Mirroring.for_link(mirroring, ops.reverse_link, source=dst, destination=src)
    reverse.start_worker()
    reverse.wait_caught_up(topic)

    # no record copied twice: identical offsets and records, exactly `after` records copied
    # per partition, each value once
    mt.assert_identical(dst, src, topic, topic, partitions=partitions)
    assert mt.log_end_offsets(src, topic) == mt.log_end_offsets(dst, topic)
    copied = {p: v["records_copied"] for p, v in link_progress(src, ops.reverse_link, topic).items()}
    mt.wait_until(lambda: {p: v["records_copied"] for p, v in link_progress(src, ops.reverse_link, topic).items()}
                  == {p: after for p in range(partitions)}, 30, "the reverse worker's progress report")
    assert assert_no_duplicates(src, topic, partitions) == (before + after) * partitions
    return Drill1Result(topic, json.loads(r.stdout) if r.stdout.startswith("{") else {}, copied, rest)


def mt_unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- drill 2

class FlowingProducer:
    """Writes bursts of unique records to every partition until closed. `hold()` lets the
    current burst finish (acknowledged) and holds the next one until `release()`."""

    def __init__(self, cluster, topic: str, partitions: int, burst: int = 10, pause: float = 0.2):
        self.cluster, self.topic, self.partitions = cluster, topic, partitions
        self.burst, self.pause = burst, pause
        self.acked: dict[int, list[int]] = {p: [] for p in range(partitions)}
        self.n = 0
        self.stop = threading.Event()
        self.go = threading.Event()
        self.go.set()
        self.idle = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        p = self.cluster.producer(**{"enable.idempotence": True, "acks": "all", "linger.ms": 1,
                                     "message.timeout.ms": 5000})

        def cb(err, msg):
            if err is None:
                self.acked[msg.partition()].append(msg.offset())

        while not self.stop.is_set():
            if not self.go.is_set():
                self.idle.set()
                self.go.wait(0.1)
                continue
            self.idle.clear()
            for part in range(self.partitions):
                for _ in range(self.burst):
                    p.produce(self.topic, value=value("flow", part, self.n), partition=part, on_delivery=cb)
                    self.n += 1
            p.flush(10)
            self.stop.wait(self.pause)
        p.flush(5)

    def start(self) -> "FlowingProducer":
        self.thread.start()
        return self

    def hold(self, timeout: float = 30.0) -> None:
        self.go.clear()
        assert self.idle.wait(timeout), "the producer did not finish its burst"

    def release(self) -> None:
        self.go.set()

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        self.thread.join(30)


def reported_source_high_watermarks(destination, link: str, topic: str) -> dict[int, int | None]:
    return {p: v.get("source_high_watermark") for p, v in link_progress(destination, link, topic).items()}


@dataclass
class Drill2Result:
    topic: str
    failover_seconds: float
    printed_rpo: dict
    missing: dict
    side_topic: str | None


def drill_disaster(ops: Ops, mirroring, local_kafka, src_cluster, partitions: int = 2,
                   preload: int = 200, consumed: int = 80) -> Drill2Result:
    """Must-show 2. `src_cluster` is a cluster of its own that this drill kills and
    restarts; `mirroring` links it to ops.destination."""
    src, dst = src_cluster, ops.destination
    topic = src.create_topic(mt_unique("drill2"), partitions=partitions)
    produce_phase(src, topic, "before", preload, partitions)
    r = ops.cli("link", "alter", ops.link, "--config", "consumer.offset.sync.ms=1000")
    assert r.exit_code == 0, r.stderr
    mirroring.mirror(topic)
    mirroring.start_worker()
    group = mt_unique("g2")
    consume_n(src, group, topic, {p: consumed for p in range(partitions)}, commit=True)
    mirroring.wait_caught_up(topic)
    # the worker copies the group's offsets: this is the last synced offset
    synced = {p: consumed for p in range(partitions)}
    mt.wait_until(lambda: committed(dst, group, topic, partitions) == synced, 60,
                  "the worker to copy the group's committed offsets")

    # records flow; the kill lands between two bursts, once the worker has reported the
    # source's high watermark: records the source accepted after the worker's last fetch
    # are invisible to any copier outside the broker, and the printed RPO could not count them
    flow = FlowingProducer(src, topic, partitions).start()
    try:
        mt.wait_until(lambda: sum(map(len, flow.acked.values())) >= 200, 60, "records flowing")
        flow.hold()
        ends = mt.log_end_offsets(src, topic)
        mt.wait_until(lambda: reported_source_high_watermarks(dst, ops.link, topic) == ends, 30,
                      f"the worker to report the source high watermarks {ends}")
        local_kafka.kill(src)
        flow.release()  # the application keeps trying to write to the dead source
    finally:
        flow.close()

    t0, t0_wall = time.monotonic(), time.time()
    r = ops.failover(topic)
    took = time.monotonic() - t0
    assert r.exit_code == 0, r.stderr
    # "returns in under 5 s" by construction, not by a clock in the test: the live worker
    # acknowledged the stop (failover waits at most dr.FAILOVER_ACK_WAIT_S = 4 s for that,
    # and it did not need to), so nothing was left to wait for; the time is reported
    workers = [w for w in worker_ids(dst, ops.link)]
    assert workers, "the worker should be alive and listed in the state store"
    assert acked_since(dst, ops.link, topic, workers, t0_wall - 1), \
        f"the worker did not acknowledge the failover; output:\n{r.stdout}"
    printed = ops.printed_rpo(r, topic)
    fwd = mirror_record(dst, ops.link, topic)
    assert (fwd.state, fwd.stopped["reason"]) == (st.STOPPED, "failed over")
    stop = {int(p): v["destination_log_end_offset"] for p, v in fwd.stopped["partitions"].items()}
    assert stop == mt.log_end_offsets(dst, topic)

    # the destination takes writes
    dst.produce(topic, [b"written-after-failover"], partition=0)
    # the group resumes there at exactly its last synced offset
    assert committed(dst, group, topic, partitions) == synced
    resumed = consume_n(dst, group, topic, {p: 1 for p in range(partitions)}, commit=False)
    assert sorted((p, o) for p, o, _ in resumed) == sorted(synced.items())

    # the old source restarts: what it holds past the failover point is what was lost
    local_kafka.restart(src)
    src_ends = mt.wait_until(lambda: _ends_or_none(src, topic), 60, "the restarted source to answer")
    missing = {p: src_ends[p] - stop[p] for p in range(partitions)}
    assert printed == missing, f"printed RPO {printed}, records actually missing {missing}"
    # a producer nobody switched over writes to the old source once it is back (split brain)
    produce_phase(src, topic, "stale", 5, partitions)
    tails = {p: [r for r in mt.snapshot(src, topic, p) if r.offset >= stop[p]] for p in range(partitions)}
    assert all(len(tails[p]) == missing[p] + 5 for p in range(partitions))
    assert all(t and t[0].offset == stop[p] for p, t in tails.items() if missing[p]), tails

    r = ops.truncate_and_restore(topic)
    assert r.exit_code == 0, r.stderr
    rev = mirror_record(src, ops.reverse_link, topic)
    assert (rev.state, rev.source_topic) == (st.ACTIVE, topic)
    side = fwd_side_topic(dst, ops.link, topic)
    assert side, "a side topic must hold the divergent tail"
    for p in range(partitions):
        saved = mt.snapshot(src, side, p)
        assert [(s.key, s.value, s.timestamp) for s in saved] == [(t.key, t.value, t.timestamp) for t in tails[p]]
        for s, t in zip(saved, tails[p]):
            assert s.headers[:len(t.headers)] == t.headers
            assert dict(s.headers[len(t.headers):])["kafka-mirrors.diverged.offset"] == str(t.offset).encode()
    reverse = Mirroring.for_link(mirroring, ops.reverse_link, source=dst, destination=src)
    reverse.start_worker()
    reverse.wait_caught_up(topic)
    mt.assert_identical(dst, src, topic, topic, partitions=partitions)
    return Drill2Result(topic, took, printed, missing, side)


def _ends_or_none(cluster, topic: str):
    try:
        return mt.log_end_offsets(cluster, topic)
    except Exception:  # leaders not elected yet after a restart
        return None


def fwd_side_topic(destination, link: str, topic: str) -> str | None:
    rec = mirror_record(destination, link, topic)
    return ((rec.stopped or {}).get("reversed") or {}).get("side_topic")
