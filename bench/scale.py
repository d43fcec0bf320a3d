"""How kafka-mirrors copes with many partitions: T topics x P partitions, a few records in
each, one worker. Beside it, a baseline measured in the same invocation on the same brokers:
one raw producer writing the same data set into the destination.

    .venv/bin/python bench/scale.py --topics 10 --partitions 100
    .venv/bin/python bench/scale.py --topics 100 --partitions 100 --run-after-catchup 60

It starts two single-node clusters of its own (scripts/kafka-local, state in
.cache/bench-scale) and stops them at the end, even on error or Ctrl-C (--keep-clusters
leaves them running). Phases, in order:

  baseline  T x P topics "raw-*" on the destination; one idempotent acks=all producer
            writes N records of B bytes into every partition (records/s); then deleted
  preload   the same data set into T x P topics "scale-*" on the source
  link      kafka-mirrors link create, mirror create (registry in a temp file through
            $KAFKA_MIRRORS_REGISTRY)
  catch-up  kafka-mirrors run --link (log in .cache/bench-scale-run/worker.log); time from
            its start until every destination log end offset equals the source's high
            watermark (one list_offsets batch per poll); RSS, threads and fds of the
            worker sampled from /proc every 0.5 s
  verify    K sampled partitions compared record by record (key, value, headers,
            timestamp, offset; read_committed on both clusters)
  run       optional: the worker keeps running S seconds beside a trickle producer
            (a few records/s into random source partitions)
  state     size on disk and record count of __kafka_mirrors_state
  describe  time of `kafka-mirrors describe --link`
  failover  time of `kafka-mirrors failover --all --link --yes` with the worker running,
            and whether the worker acknowledged
  stop      the worker gets SIGTERM (SIGKILL after --stop-timeout)

Exit 1 when lag 0 is not reached (the worker's exit code and log tail are printed if it
died) or the sampled copy differs; 2 on bad arguments. Nothing here is asserted by the
test suite; no number is ever estimated.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from confluent_kafka import KafkaException, TopicPartition  # noqa: E402
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,  # noqa: E402
                                   NewTopic, OffsetSpec, ResourceType)

import copy_rate  # noqa: E402  (bench/copy_rate.py: log, ProcessProbe, payloads)
from copy_rate import log, payloads  # noqa: E402
from tests.kafkatest import Cluster, LocalKafka  # noqa: E402
from tests.mirrortools import assert_identical, producer_config  # noqa: E402

STATE = ROOT / ".cache" / "bench-scale"
RUN_DIR = ROOT / ".cache" / "bench-scale-run"  # beside STATE: kafka-local lists every folder in STATE
SCRIPT = ROOT / "scripts" / "kafka-local"
SOURCE, DESTINATION = "scale-source", "scale-destination"
LINK = "scale"
STATE_TOPIC = "__kafka_mirrors_state"
# partitions per CreateTopics request: the KRaft controller refuses one operation of more
# than 10,000 metadata records
PARTITIONS_PER_REQUEST = 2000
HEADER_SHAPES: list[list[tuple[str, bytes | None]]] = [
    [], [("trace", b"t-1")], [("dup", b"1"), ("dup", b"2"), ("x", b"")], [("null", None)],
]


def topic_names(prefix: str, topics: int) -> list[str]:
    return [f"{prefix}-{t:05d}" for t in range(topics)]


# ---------------------------------------------------------------- data set

def records_of(t: int, p: int, n: int, values: list[bytes], base_ms: int):
    """The N records of partition p of topic number t: the same on every call, so the
    baseline writes exactly the data set the source holds."""
    for i in range(n):
        key = None if i % 5 == 0 else f"k-{t}-{p}-{i}".encode()
        value = values[(t * 31 + p * 7 + i) % len(values)]
        ts = base_ms - ((t * 13 + p * 3 + i * 1000) % 3_600_000)  # within the last hour
        yield key, value, HEADER_SHAPES[i % len(HEADER_SHAPES)], ts


def create_topics(cluster: Cluster, names: list[str], partitions: int) -> None:
    admin = cluster.admin()
    per_request = max(1, PARTITIONS_PER_REQUEST // partitions)
    for i in range(0, len(names), per_request):
        chunk = names[i:i + per_request]
        fs = admin.create_topics([NewTopic(n, partitions, 1) for n in chunk],
                                 operation_timeout=120, request_timeout=180)
        for f in fs.values():
            f.result(240)
    wait_ready(cluster, names, partitions)


def wait_ready(cluster: Cluster, names: list[str], partitions: int, timeout: float = 900) -> None:
    """Until the broker's metadata shows every partition with a leader: CreateTopics
    returns before 10,000 partitions are all ready, and a produce then fails with
    UNKNOWN_TOPIC_OR_PART."""
    deadline = time.monotonic() + timeout
    while True:
        md = cluster.admin().list_topics(timeout=60)  # a new client: no stale cache
        missing = [n for n in names if n not in md.topics or md.topics[n].error is not None
                   or len(md.topics[n].partitions) < partitions
                   or any(pm.leader < 0 for pm in md.topics[n].partitions.values())]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} topic(s) on {cluster.name} not ready after {timeout:.0f}s, "
                               f"e.g. {missing[0]}")
        time.sleep(2)


def delete_topics(cluster: Cluster, names: list[str]) -> None:
    admin = cluster.admin()
    for i in range(0, len(names), 200):
        fs = admin.delete_topics(names[i:i + 200], operation_timeout=120, request_timeout=180)
        for f in fs.values():
            f.result(240)


def produce_data_set(cluster: Cluster, names: list[str], partitions: int, n: int, size: int,
                     base_ms: int) -> float:
    """Every partition of every topic gets its N records, from one idempotent acks=all
    producer (the bulk settings of tests/mirrortools.py); every delivery checked. Returns
    seconds from the first produce() to the end of flush() (start-up left out: a warm-up
    record goes to a topic of its own first)."""
    producer = cluster.producer(**producer_config())
    errors: list[str] = []
    delivered = [0]

    def on_delivery(err, msg):
        if err is not None:
            if len(errors) < 3:
                errors.append(f"{msg.topic()}-{msg.partition()}: {err}")
        else:
            delivered[0] += 1

    warmup = cluster.create_topic(f"scale-warmup-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    producer.produce(warmup, b"warm-up")
    producer.list_topics(timeout=60)
    producer.flush(60)
    values = payloads(size)
    start = time.monotonic()
    sent = 0
    for t, topic in enumerate(names):
        for p in range(partitions):
            for key, value, headers, ts in records_of(t, p, n, values, base_ms):
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, partition=p, headers=headers or None,
                                         timestamp=ts, on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.05)
                sent += 1
            producer.poll(0)
    left = producer.flush(900)
    elapsed = time.monotonic() - start
    if errors or left or delivered[0] != sent:
        raise RuntimeError(f"producing to {cluster.name} failed: "
                           f"{errors or f'{left} undelivered, {delivered[0]} of {sent} confirmed'}")
    return elapsed


# ---------------------------------------------------------------- offsets

class Offsets:
    """High watermarks of many partitions: one AdminClient list_offsets batch per call.

    A partition that fails counts as -1 (not caught up), and the next call uses a new
    AdminClient: librdkafka keeps a topic it once saw missing (one created a moment ago)
    in its metadata cache for up to metadata.max.age.ms (15 min), and a long-lived client
    would report the partition missing all that time."""

    def __init__(self, cluster: Cluster, tps: list[TopicPartition]):
        self.cluster = cluster
        self.admin = cluster.admin()
        self.tps = tps
        self.errors = 0
        self.last_error: str | None = None

    def get(self, spec=OffsetSpec.latest) -> dict[tuple[str, int], int]:
        futures = self.admin.list_offsets({TopicPartition(tp.topic, tp.partition): spec() for tp in self.tps},
                                          request_timeout=60)
        out = {}
        self.errors = 0
        for tp, f in futures.items():
            try:
                out[(tp.topic, tp.partition)] = f.result(90).offset
            except KafkaException as e:
                out[(tp.topic, tp.partition)] = -1
                self.errors += 1
                self.last_error = f"{tp.topic}-{tp.partition}: {e}"
        if self.errors:
            self.admin = self.cluster.admin()
        return out

    def get_all(self, spec=OffsetSpec.latest, timeout: float = 120) -> dict[tuple[str, int], int]:
        """As get(), retried until every partition answered."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.get(spec)
            if not self.errors:
                return out
            if time.monotonic() > deadline:
                raise RuntimeError(f"offsets of {self.errors} partitions on {self.cluster.name} not readable "
                                   f"for {timeout:.0f}s (last: {self.last_error})")
            time.sleep(1)


# ---------------------------------------------------------------- the worker

class Sampler(copy_rate.ProcessProbe):
    """RSS, thread count and open fds of one pid from /proc every `interval` seconds, in a
    thread; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(pid)
        self.interval = interval
        self.max_threads = 0
        self.max_fds = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.max_rss_kib = max(self.max_rss_kib, int(line.split()[1]))
                elif line.startswith("Threads:"):
                    self.max_threads = max(self.max_threads, int(line.split()[1]))
            self.max_fds = max(self.max_fds, len(os.listdir(f"/proc/{self.pid}/fd")))
            self.samples += 1
        except (OSError, ValueError):
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class WorkerDied(Exception):
    pass


class Worker:
    def __init__(self, exe: str, env: dict, log_path: Path):
        self.log_path = log_path
        self.out = open(log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([exe, "run", "--link", LINK], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT)
        self.sampler = Sampler(self.proc.pid)
        self.exit_note: str | None = None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise WorkerDied(f"'kafka-mirrors run' exited with code {self.proc.returncode} after "
                             f"{time.monotonic() - self.started:.1f}s; last lines of {self.log_path}:\n"
                             f"{self.tail()}")

    def stop(self, bound: float) -> None:
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(bound)
                self.exit_note = f"exited {self.proc.returncode} {time.monotonic() - t0:.1f}s after SIGTERM"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                self.exit_note = f"ignored SIGTERM for {bound:.0f}s; killed (SIGKILL)"
        elif self.exit_note is None:
            self.exit_note = f"had exited by itself with code {self.proc.returncode}"
        self.sampler.stop()
        self.out.close()


class Trickle:
    """A few records per second into random source partitions, in a thread, so that the
    worker's progress keeps changing."""

    def __init__(self, cluster: Cluster, tps: list[TopicPartition], per_second: float):
        self.producer = cluster.producer(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5})
        self.tps = tps
        self.per_second = per_second
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rnd = random.Random(7)
        while not self._stop.wait(1 / self.per_second):
            tp = rnd.choice(self.tps)
            self.producer.produce(tp.topic, value=b"trickle-%d" % self.sent, key=b"trickle",
                                  partition=tp.partition, headers=[("trickle", b"1")])
            self.producer.poll(0)
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.flush(30)


# ---------------------------------------------------------------- results

@dataclass
class Result:
    topics: int
    partitions: int
    records: int
    record_bytes: int
    raw_seconds: float | None = None
    preload_seconds: float | None = None
    mirror_create_seconds: float | None = None
    lag0_seconds: float | None = None
    lag_note: str | None = None          # why lag 0 was not reached
    remaining: int | None = None         # records still missing when it gave up
    peak_rss_mib: float | None = None
    peak_threads: int | None = None
    peak_fds: int | None = None
    state_bytes: int | None = None
    state_records: int | None = None
    state_note: str | None = None
    describe_seconds: float | None = None
    describe_note: str | None = None
    failover_seconds: float | None = None
    failover_note: str | None = None
    sample_ok: int = 0
    sample_total: int = 0
    sample_diffs: list[str] = field(default_factory=list)
    worker_exit: str | None = None
    registry: str | None = None
    longest_stall: float = 0.0           # longest time the copy made no progress once started
    trickle_sent: int = 0
    ran_after_catchup: float = 0.0


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(r: Result) -> None:
    total_partitions = r.topics * r.partitions
    print()
    print(f"Scale: {r.topics} topics x {r.partitions} partitions = {total_partitions:,} partitions, "
          f"{r.records:,} records of {r.record_bytes} B, one worker")
    cols = [("system", 28, "<"), ("topics", 6, ">"), ("partitions", 10, ">"), ("records", 10, ">"),
            ("lag 0 s", 8, ">"), ("records/s", 10, ">"), ("vs raw", 6, ">"), ("peak RSS MiB", 12, ">"),
            ("peak threads", 12, ">"), ("state KiB/records", 17, ">"), ("describe s", 10, ">"),
            ("failover s", 10, ">"), ("identical", 9, ">")]
    head = " ".join(f"{name:{align}{width}}" for name, width, align in cols)
    print(head)
    print("-" * len(head))

    def row(values: list[str]) -> None:
        print(" ".join(f"{v:{align}{width}}" for v, (_, width, align) in zip(values, cols)))

    raw_rate = r.records / r.raw_seconds if r.raw_seconds else None
    row(["raw producer -> destination", str(r.topics), f"{total_partitions:,}", f"{r.records:,}",
         "-", fmt(raw_rate, ",.0f"), "base", "-", "-", "-", "-", "-", "-"])
    rate = r.records / r.lag0_seconds if r.lag0_seconds else None
    ratio = rate / raw_rate if rate and raw_rate else None
    state = (f"{r.state_bytes / 1024:,.0f}/{r.state_records:,}"
             if r.state_bytes is not None and r.state_records is not None else "-")
    row(["kafka-mirrors (1 worker)", str(r.topics), f"{total_partitions:,}", f"{r.records:,}",
         fmt(r.lag0_seconds, ".1f") if r.lag0_seconds else "NOT REACHED", fmt(rate, ",.0f"),
         f"{ratio:.2f}x" if ratio else "-", fmt(r.peak_rss_mib, ".0f"), fmt(r.peak_threads, "d"), state,
         fmt(r.describe_seconds, ".2f"), fmt(r.failover_seconds, ".2f"),
         f"{r.sample_ok}/{r.sample_total}"])
    print("lag 0 s: from the worker's start to every destination log end offset equal to the source's "
          "high watermark; records/s = records / that time (start-up included).")
    notes = []
    if r.lag_note:
        notes.append(f"lag 0 not reached: {r.lag_note}")
    if r.longest_stall >= 5:
        notes.append(f"the copy made no progress for {r.longest_stall:.0f}s at its longest (after the first record)")
    if r.peak_fds is not None:
        notes.append(f"worker peak open fds {r.peak_fds:,}")
    if r.preload_seconds:
        notes.append(f"source preload {r.records / r.preload_seconds:,.0f} records/s")
    if r.mirror_create_seconds is not None:
        notes.append(f"mirror create of {r.topics} topics took {r.mirror_create_seconds:.1f}s")
    if r.ran_after_catchup:
        notes.append(f"ran {r.ran_after_catchup:.0f}s after catch-up beside a trickle of {r.trickle_sent} records")
    for what, note in (("state topic", r.state_note), ("describe", r.describe_note),
                       ("failover --all", r.failover_note)):
        if note:
            notes.append(f"{what}: {note}")
    if r.worker_exit:
        notes.append(f"worker {r.worker_exit}")
    for n in notes:
        print(f"  {n}")
    for d in r.sample_diffs[:5]:
        lines = d.splitlines()
        print(f"  DIFFERS: {lines[0]}" + (f" -- first: {lines[1].strip()}" if len(lines) > 1 else ""))
    if len(r.sample_diffs) > 5:
        print(f"  ... and {len(r.sample_diffs) - 5} more sampled partitions differ")


# ---------------------------------------------------------------- phases

def wait_for_lag0(worker: Worker, dst: Offsets, goal: dict, timeout: float, r: Result) -> None:
    total = sum(goal.values())
    last_log = time.monotonic()
    last_missing, moved_at, warned = None, worker.started, False
    while True:
        worker.check()
        ends = dst.get()
        now = time.monotonic()
        missing = sum(max(0, end - max(0, ends.get(k, 0))) for k, end in goal.items())
        behind = sum(1 for k, end in goal.items() if ends.get(k, -1) != end)
        if missing != last_missing:
            if last_missing not in (None, total):  # the start-up before the first record is not a stall
                r.longest_stall = max(r.longest_stall, now - moved_at)
            last_missing, moved_at, warned = missing, now, False
        elif last_missing != total and now - moved_at > 120 and not warned:
            log(f"  no progress for {now - moved_at:.0f}s ({behind:,} partitions behind); still waiting "
                f"(--timeout {timeout:.0f}s); worker log tail:\n{worker.tail(5)}")
            warned = True
        if behind == 0:
            r.lag0_seconds = now - worker.started
            return
        if now - worker.started > timeout:
            r.longest_stall = max(r.longest_stall, now - moved_at)
            r.remaining = missing
            raise TimeoutError(f"{behind:,} partitions behind, {missing:,} of {total:,} records missing "
                               f"after {timeout:.0f}s (--timeout)"
                               + (f"; {dst.errors} partitions not readable ({dst.last_error})" if dst.errors else ""))
        if now - last_log > 15:
            log(f"  {total - missing:,} of {total:,} records copied, {behind:,} partitions behind, "
                f"RSS {worker.sampler.max_rss_kib / 1024:.0f} MiB, threads {worker.sampler.max_threads}"
                + (f"; {dst.errors} partitions not readable ({dst.last_error})" if dst.errors else ""))
            last_log = now
        time.sleep(0.5)


def verify_sample(src: Cluster, dst: Cluster, tps: list[TopicPartition], k: int, r: Result) -> None:
    sample = random.Random(11).sample(tps, min(k, len(tps)))
    r.sample_total = len(sample)
    for tp in sorted(sample, key=lambda tp: (tp.topic, tp.partition)):
        try:
            assert_identical(src, dst, tp.topic, tp.topic, [tp.partition])
            r.sample_ok += 1
        except AssertionError as e:
            r.sample_diffs.append(f"{tp.topic}-{tp.partition}: {e}")


def state_topic_size(dst: Cluster, dst_dir: Path, r: Result) -> None:
    admin = dst.admin()
    md = admin.list_topics(STATE_TOPIC, timeout=30).topics.get(STATE_TOPIC)
    if md is None or md.error is not None:
        r.state_note = f"{STATE_TOPIC} not found on the destination"
        return
    tps = [TopicPartition(STATE_TOPIC, p) for p in md.partitions]
    offsets = Offsets(dst, tps)
    high, low = offsets.get_all(OffsetSpec.latest), offsets.get_all(OffsetSpec.earliest)
    r.state_records = sum(high[k] - low[k] for k in high)
    # confluent-kafka 2.16 has no describe_log_dirs: du of the partition folders (allocated
    # blocks, so the sparse preallocated index files count only what they use)
    size = 0
    for d in (dst_dir / "data").glob(f"{STATE_TOPIC}-*"):
        for f in d.rglob("*"):
            try:
                size += f.lstat().st_blocks * 512
            except OSError:
                pass
    r.state_bytes = size
    r.state_note = f"{len(tps)} partitions, du of {dst_dir / 'data'}/{STATE_TOPIC}-*"


def timed_cli(exe: str, env: dict, args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run([exe, *args], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return time.monotonic() - t0, proc


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def failover_ack(proc: subprocess.CompletedProcess, topics: int) -> str:
    """What failover --output json says about the worker's acknowledgement."""
    try:
        rows = json.loads(proc.stdout)["topics"]
    except (ValueError, KeyError, TypeError):
        return f"exit {proc.returncode}, output not JSON: {last_line(proc)}"
    failed = [row for row in rows if not row.get("ok")]
    not_acked = sorted({w for row in rows for w in row.get("workers_not_acked") or []})
    unserved = [row["topic"] for row in rows if row.get("ok") and not row.get("workers")]
    parts = [f"exit {proc.returncode}, {len(rows) - len(failed)} of {topics} topics STOPPED"]
    if failed:
        parts.append(f"{len(failed)} failed (first: {failed[0].get('error')})")
    if not_acked:
        parts.append(f"NOT acknowledged by worker(s) {', '.join(not_acked)}")
    elif unserved:
        parts.append(f"{len(unserved)} topics had no live worker (first: {unserved[0]})")
    else:
        parts.append("the worker acknowledged every topic")
    return "; ".join(parts)


def wait_for_deleted(dst_dir: Path, prefix: str, timeout: float) -> bool:
    """Until the broker removed the folders of the deleted topics (each still holds an open
    file until then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any((dst_dir / "data").glob(f"{prefix}-*")):
            return True
        time.sleep(1)
    return False


def broker_fd_limit(dst_dir: Path) -> int | None:
    try:
        pid = json.loads((dst_dir / "cluster.json").read_text())["pid"]
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return None


# ---------------------------------------------------------------- main

def run(args, r: Result, cleanup: list) -> None:
    os.environ["KAFKA_LOCAL_STATE"] = str(STATE)
    os.environ.setdefault("KAFKA_LOCAL_HEAP", args.broker_heap)
    local = LocalKafka(SCRIPT, STATE)
    if not args.keep_clusters:
        cleanup.append(("stopping clusters", local.down_all))
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    registry = tmp / "links.toml"
    r.registry = str(registry)
    if not args.keep_clusters:
        cleanup.append(("removing the registry", lambda: shutil.rmtree(tmp, ignore_errors=True)))
    env = dict(os.environ, KAFKA_MIRRORS_REGISTRY=str(registry))
    exe = args.kafka_mirrors

    log(f"starting clusters in {STATE} (heap {os.environ['KAFKA_LOCAL_HEAP']} each)")
    src = local.up(SOURCE)
    dst = local.up(DESTINATION)
    dst_dir = STATE / DESTINATION
    # deleted topics keep their files open until the broker's delete delay (60 s) is over;
    # a dynamic broker setting shortens it (node.id 1: confluent-kafka refuses the
    # cluster-wide default resource ""), so the baseline's topics go quickly
    admin = dst.admin()  # kept until the futures resolve
    fs = admin.incremental_alter_configs([ConfigResource(
        ResourceType.BROKER, "1", incremental_configs=[ConfigEntry(
            "log.segment.delete.delay.ms", "1000", incremental_operation=AlterConfigOpType.SET)])])
    for f in fs.values():
        f.result(30)

    total_partitions = args.topics * args.partitions
    base_ms = int(time.time() * 1000)
    raw_names = topic_names("raw", args.topics)
    names = topic_names("scale", args.topics)

    log(f"baseline: {r.records:,} records into {total_partitions:,} partitions on the destination")
    create_topics(dst, raw_names, args.partitions)
    r.raw_seconds = produce_data_set(dst, raw_names, args.partitions, args.records_per_partition,
                                     args.record_bytes, base_ms)
    log(f"baseline: {r.records / r.raw_seconds:,.0f} records/s; deleting its topics")
    delete_topics(dst, raw_names)

    log(f"preload: {args.topics} topics x {args.partitions} partitions on the source")
    create_topics(src, names, args.partitions)
    r.preload_seconds = produce_data_set(src, names, args.partitions, args.records_per_partition,
                                         args.record_bytes, base_ms)
    log(f"preload: {r.records / r.preload_seconds:,.0f} records/s")

    limit = broker_fd_limit(dst_dir)
    if limit is None or 2 * total_partitions + 2000 > limit:
        log(f"waiting for the destination to remove the baseline's folders (fd limit {limit})")
        if not wait_for_deleted(dst_dir, "raw", 600):
            log("the baseline's folders are still there after 600 s; going on")

    tps = [TopicPartition(n, p) for n in names for p in range(args.partitions)]
    goal = Offsets(src, tps).get_all()

    log("link create, mirror create")
    _, proc = timed_cli(exe, env, ["link", "create", LINK, "--source", src.bootstrap,
                                   "--destination", dst.bootstrap], 120)
    if proc.returncode != 0:
        raise RuntimeError(f"'kafka-mirrors link create' failed: {last_line(proc)}")
    t0 = time.monotonic()
    for i in range(0, len(names), 200):
        _, proc = timed_cli(exe, env, ["mirror", "create", *names[i:i + 200], "--link", LINK], 1800)
        if proc.returncode != 0:
            raise RuntimeError(f"'kafka-mirrors mirror create' failed: {last_line(proc)}")
    r.mirror_create_seconds = time.monotonic() - t0

    log(f"kafka-mirrors run --link {LINK} (log {RUN_DIR / 'worker.log'})")
    worker = Worker(exe, env, RUN_DIR / "worker.log")
    cleanup.insert(0, ("stopping the worker", lambda: worker.stop(args.stop_timeout)))
    dst_offsets = Offsets(dst, tps)
    try:
        try:
            wait_for_lag0(worker, dst_offsets, goal, args.timeout, r)
            log(f"lag 0 after {r.lag0_seconds:.1f}s ({r.records / r.lag0_seconds:,.0f} records/s)")
        except (TimeoutError, WorkerDied) as e:
            r.lag_note = str(e)
            log(f"lag 0 not reached: {e}")
        r.peak_rss_mib, r.peak_threads, r.peak_fds = (worker.sampler.max_rss_mib, worker.sampler.max_threads,
                                                      worker.sampler.max_fds)
        if goal != Offsets(src, tps).get_all():
            raise RuntimeError("the source's high watermarks moved during the copy; nothing else may write")

        log(f"verifying {min(args.sample, len(tps))} sampled partitions record by record")
        verify_sample(src, dst, tps, args.sample, r)
        log(f"identical: {r.sample_ok}/{r.sample_total}")

        if r.lag_note is None and args.run_after_catchup > 0:
            log(f"worker keeps running {args.run_after_catchup:g}s beside a trickle producer")
            trickle = Trickle(src, tps, args.trickle_per_s)
            try:
                t_end = time.monotonic() + args.run_after_catchup
                while time.monotonic() < t_end:
                    worker.check()
                    time.sleep(0.5)
            except WorkerDied as e:
                r.lag_note = f"(after catch-up) {e}"
            finally:
                trickle.stop()
            r.trickle_sent = trickle.sent
            r.ran_after_catchup = args.run_after_catchup

        state_topic_size(dst, dst_dir, r)

        alive = worker.proc.poll() is None
        log("kafka-mirrors describe --link")
        r.describe_seconds, proc = timed_cli(exe, env, ["describe", "--link", LINK], 600)
        if proc.returncode != 0:
            r.describe_note = f"exit {proc.returncode}: {last_line(proc)}"
        log("kafka-mirrors failover --all --link" + (" (worker running)" if alive else " (worker NOT running)"))
        r.failover_seconds, proc = timed_cli(exe, env, ["failover", "--all", "--link", LINK, "--yes",
                                                        "--output", "json"], 600)
        r.failover_note = failover_ack(proc, args.topics) + ("" if alive else "; the worker was not running")
        r.peak_rss_mib, r.peak_threads, r.peak_fds = (worker.sampler.max_rss_mib, worker.sampler.max_threads,
                                                      worker.sampler.max_fds)
    finally:
        worker.stop(args.stop_timeout)
        r.worker_exit = worker.exit_note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, required=True, help="source topics (T)")
    ap.add_argument("--partitions", type=int, required=True, help="partitions per topic (P)")
    ap.add_argument("--records-per-partition", type=int, default=20, help="records in every partition (default 20)")
    ap.add_argument("--record-bytes", type=int, default=100, help="value bytes per record (default 100)")
    ap.add_argument("--sample", type=int, default=20, help="partitions compared record by record (default 20)")
    ap.add_argument("--run-after-catchup", type=float, default=0.0, metavar="SECONDS",
                    help="keep the worker running this long after lag 0, beside a trickle producer (default 0)")
    ap.add_argument("--trickle-per-s", type=float, default=5.0, help="records/s of the trickle producer (default 5)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="give up on lag 0 after this many seconds (default 1800)")
    ap.add_argument("--stop-timeout", type=float, default=60.0,
                    help="seconds the worker gets after SIGTERM before SIGKILL (default 60)")
    ap.add_argument("--broker-heap", default="2g", help="heap of each broker (default 2g; $KAFKA_LOCAL_HEAP wins)")
    ap.add_argument("--keep-clusters", action="store_true", help="leave both clusters (and the registry) in place")
    ap.add_argument("--kafka-mirrors", default=str(ROOT / ".venv" / "bin" / "kafka-mirrors"),
                    help="the kafka-mirrors executable (default .venv/bin/kafka-mirrors)")
    args = ap.parse_args(argv)
    if min(args.topics, args.partitions, args.records_per_partition) < 1 or args.record_bytes < 1 or args.sample < 0:
        ap.error("--topics, --partitions, --records-per-partition >= 1, --record-bytes >= 1, --sample >= 0")
    if args.run_after_catchup < 0 or args.trickle_per_s <= 0 or args.timeout <= 0:
        ap.error("--run-after-catchup >= 0, --trickle-per-s > 0, --timeout > 0")
    if not shutil.which(args.kafka_mirrors):
        ap.error(f"{args.kafka_mirrors} not found (run scripts/test once to make .venv)")

    # SIGTERM (and SIGHUP) clean up like Ctrl-C
    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    r = Result(args.topics, args.partitions, args.topics * args.partitions * args.records_per_partition,
               args.record_bytes)
    cleanup: list = []
    failed: str | None = None
    try:
        run(args, r, cleanup)
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as e:  # a failed phase: report what was measured, and why it stopped
        failed = f"{type(e).__name__}: {e}"
    finally:
        for what, step in cleanup:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
                log(what)
                step()
            except Exception as e:
                log(f"{what} failed: {e}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print_table(r)
    if args.keep_clusters:
        print(f"\nclusters left running (state {STATE}); stop them with "
              f"KAFKA_LOCAL_STATE={STATE} scripts/kafka-local down --all; registry "
              f"{r.registry}")
    print(f"\nApache Kafka 4.1.1, single node each, 127.0.0.1; {os.cpu_count()} CPUs; "
          f"worker log {RUN_DIR / 'worker.log'}")
    if failed:
        print(f"\nbench stopped early: {failed}", file=sys.stderr)
        return 130 if failed == "interrupted" else 1
    if r.lag0_seconds is None:
        print(f"\nFAILED: lag 0 not reached ({(r.lag_note or '?').splitlines()[0]})", file=sys.stderr)
        return 1
    if r.sample_ok != r.sample_total:
        print(f"\nFAILED: {r.sample_total - r.sample_ok} of {r.sample_total} sampled partitions differ",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
