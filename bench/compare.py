"""Side by side: kafka-mirrors against MirrorMaker 2 (tuned, and at its defaults) and the
raw producer ceiling, over several workloads, in one run on the same brokers (issue 10).

    .venv/bin/python bench/compare.py --quick        # 3 workloads, small, ~6 minutes
    .venv/bin/python bench/compare.py                # every workload + distance, ~20 minutes

It starts two single-node clusters of its own with scripts/kafka-local (state in
.cache/bench-compare, or --state-dir / $BENCH_COMPARE_STATE) and stops them, every
MirrorMaker 2, worker and Toxiproxy it started, at the end, also on error, Ctrl-C or
SIGTERM. Nothing is asserted: it prints one table. A system that cannot run is printed as
"not available (reason)"; a row that cannot exist yet says why; no number is made up.

Each system copies its own source topic (same generator, same records), so MirrorMaker 2's
stored task offsets and prefixed topics never meet another system's. Per workload and
system: preload the source topic, read it back (offsets and record ids), commit a consumer
group at the middle of every partition, start the copier, time the copy, measure latency
at a paced rate (where the workload has one), wait for the group's offsets to appear on
the destination, stop the copier, read the copy back and compare.
MB = 10^6 bytes of record values.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copy_rate as cr  # noqa: E402  (also puts the repository root on sys.path)

from confluent_kafka import KafkaError, KafkaException, TopicPartition  # noqa: E402
from confluent_kafka.admin import OffsetSpec  # noqa: E402

from tests.kafkatest import Cluster, LocalKafka  # noqa: E402
from tests.mirrortools import producer_config  # noqa: E402

ROOT = cr.ROOT
MB = cr.MB
log = cr.log
GROUP = "bench-moved-group"
# the destination's log end offsets are polled this often during a copy, and a rate is
# taken over the window from the first copied record seen to the last when that window is
# at least MIN_WINDOW_S long (else from the copier's start): a copier that takes 1.5 s for
# the workload is measured to within a few per cent, not charged its start-up
POLL_S = 0.02
MIN_WINDOW_S = 0.25

# ---------------------------------------------------------------- MirrorMaker 2 settings

# What a careful operator sets for throughput (see bench/README.md, "compare.py", for the
# reasons). kafka-local mm2 passes them into mm2.properties; `dst.producer.*` reaches the
# producers writing to the destination, `src.consumer.*` the consumers reading the source.
MM2_TUNED = {
    # same guarantees as kafka-mirrors: acks=all, idempotent; 5 in flight keeps order with
    # idempotence (Connect's default is 1 in flight and idempotence off)
    "dst.producer.acks": "all",
    "dst.producer.enable.idempotence": "true",
    "dst.producer.max.in.flight.requests.per.connection": "5",
    "dst.producer.batch.size": str(1024 * 1024),
    "dst.producer.linger.ms": "20",
    "dst.producer.buffer.memory": str(256 * 1024 * 1024),
    "dst.producer.max.request.size": str(8 * 1024 * 1024),
    "src.consumer.fetch.min.bytes": str(256 * 1024),
    "src.consumer.fetch.max.wait.ms": "100",
    "src.consumer.fetch.max.bytes": str(64 * 1024 * 1024),
    "src.consumer.max.partition.fetch.bytes": str(4 * 1024 * 1024),
    "src.consumer.max.poll.records": "5000",
    "src.consumer.isolation.level": "read_committed",
    "src.consumer.receive.buffer.bytes": str(1024 * 1024),
    "tasks.max": "6",
    # consumer groups moved across: translate and write them every second
    "sync.group.offsets.enabled": "true",
    "sync.group.offsets.interval.seconds": "1",
    "emit.checkpoints.interval.seconds": "1",
}
# both rows: a worker that leaves is never waited for (each run of this benchmark stops its
# MirrorMaker 2 before the next starts); not a tuning
MM2_HARNESS = {"scheduled.rebalance.max.delay.ms": "0"}


# ---------------------------------------------------------------- workloads

@dataclass
class Workload:
    name: str
    label: str
    records: int
    size: int = 1024
    partitions: int = 6
    topic_config: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)  # extra producer settings (compression)
    key_space: int = 0            # > 0: keyed records, key = seq % key_space (compaction)
    txn_records: int = 0          # > 0: transactional preload, this many records per transaction
    abort_every: int = 0          # every n-th transaction aborted
    compressible: bool = False
    latency_mb_s: float = 0.0     # > 0: a latency phase at this rate
    far: bool = False             # the copier reaches the source through Toxiproxy


def workloads(quick: bool, scale: float) -> list[Workload]:
    def n(full: int, q: int) -> int:
        return max(100, int((q if quick else full) * scale))
    compact = {"cleanup.policy": "compact", "segment.bytes": str(1024 * 1024),
               "min.cleanable.dirty.ratio": "0.01", "segment.ms": "1000", "delete.retention.ms": "600000"}
    out = [
        Workload("1k", "1 KiB x 6 partitions", n(300_000, 60_000), latency_mb_s=5.0),
        Workload("100b", "100 B x 6 partitions", n(300_000, 50_000), size=100),
        Workload("64k", "64 KiB x 6 partitions", n(6_000, 500), size=65536),
        Workload("200p", "1 KiB x 200 partitions, 0.2 MB/s", n(24_000, 2_000), partitions=200,
                 latency_mb_s=0.2),
        # batches must fit the 1 MiB segments that let the cleaner compact most of the log
        Workload("compact", "compacted, 1 KiB, 1/20 keys live", n(60_000, 20_000), topic_config=compact,
                 producer={"batch.size": 256 * 1024}),
        Workload("txn", "transactional, 1 KiB, 1 in 10 aborted", n(100_000, 20_000), txn_records=500,
                 abort_every=10),
        Workload("zstd", "zstd-compressed text, 1 KiB", n(200_000, 20_000), producer={"compression.type": "zstd"},
                 compressible=True),
        Workload("1k-far", "1 KiB x 6, 50 ms RTT to source", n(200_000, 20_000), latency_mb_s=5.0, far=True),
    ]
    for w in out:
        if w.name == "compact":
            w.key_space = max(10, w.records // 20)
    return out


QUICK_SET = ["1k", "compact", "txn"]


# ---------------------------------------------------------------- records

def pad_pool(size: int, compressible: bool, n: int = 64) -> list[bytes]:
    """Value bodies after the 8-byte record id: random (incompressible), or text-like."""
    if not compressible:
        return cr.payloads(size, n)
    words = [b"order", b"customer", b"amount", b"EUR", b"shipped", b"pending", b"warehouse", b"42"]
    out = []
    for i in range(n):
        b = bytearray()
        j = i
        while len(b) < size:
            b += words[j % len(words)] + b" "
            j = j * 7 + 3
        out.append(bytes(b[:size]))
    return out


def record_id(partition: int, seq: int) -> bytes:
    return struct.pack(">II", partition, seq)


@dataclass
class Loaded:
    seconds: float
    cpu_seconds: float
    machine_cpu_seconds: float | None  # every process on the machine, over the same window
    data: dict[int, int]        # records written per partition (aborted included)
    committed: dict[int, int]   # records readable with read_committed per partition


def load(cluster: Cluster, topic: str, wl: Workload, warmup_topic: str, transactional: bool) -> Loaded:
    """Write wl.records records round robin over the partitions: value = 8-byte id + body,
    key = seq % key_space when keyed; in transactions when asked. Every delivery checked.
    Seconds and CPU count from the first produce() to the end of flush()/commit."""
    conf = producer_config(**wl.producer)
    txn = transactional and wl.txn_records > 0
    if txn:
        conf["transactional.id"] = f"bench-{uuid.uuid4().hex[:8]}"
    producer = cluster.producer(**conf)
    bodies = pad_pool(wl.size - 8, wl.compressible)
    errors: list[str] = []

    def on_delivery(err, _msg):
        if err is not None and len(errors) < 3:
            errors.append(str(err))

    if txn:
        producer.init_transactions(30)
        producer.begin_transaction()
    producer.produce(warmup_topic, b"warm-up", on_delivery=on_delivery)
    producer.list_topics(topic, timeout=15)
    if txn:
        producer.commit_transaction(30)
    else:
        producer.flush(30)
    data = {p: 0 for p in range(wl.partitions)}
    committed = dict(data)
    pending = dict(data)
    cpu0, start, machine0 = time.process_time(), time.monotonic(), cr.MACHINE.cpu()
    if txn:
        producer.begin_transaction()
    for i in range(wl.records):
        p = i % wl.partitions
        seq = i // wl.partitions
        key = b"k%08d" % (seq % wl.key_space) if wl.key_space else None
        value = record_id(p, seq) + bodies[i % len(bodies)]
        while True:
            try:
                producer.produce(topic, value, key=key, partition=p, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        data[p] += 1
        pending[p] += 1
        if i % 1000 == 0:
            producer.poll(0)
        if txn and (i + 1) % wl.txn_records == 0:
            n_txn = (i + 1) // wl.txn_records
            if wl.abort_every and n_txn % wl.abort_every == 0:
                # written first, so the aborted records take offsets in the log (an abort
                # alone would purge what is still queued)
                producer.flush(60)
                producer.abort_transaction(60)
            else:
                producer.commit_transaction(60)
                for q, c in pending.items():
                    committed[q] += c
            pending = {q: 0 for q in pending}
            producer.begin_transaction()
    if txn:
        producer.commit_transaction(60)
        for q, c in pending.items():
            committed[q] += c
        left = 0
    else:
        left = producer.flush(300)
        committed = dict(data)
    elapsed, cpu, machine1 = time.monotonic() - start, time.process_time() - cpu0, cr.MACHINE.cpu()
    if errors or left:
        raise RuntimeError(f"producing to {topic} failed: {errors or f'{left} undelivered'}")
    machine = machine1 - machine0 if machine0 is not None and machine1 is not None else None
    return Loaded(elapsed, cpu, machine, data, committed)


def scan(cluster: Cluster, topic: str, partitions: int, timeout: float = 300) -> dict[int, list[tuple[int, bytes]]]:
    """Every readable record (read_committed) of every partition: (offset, 8-byte id)."""
    consumer = cluster.consumer(**{"enable.partition.eof": True, "fetch.max.bytes": 64 * 1024 * 1024,
                                   "max.partition.fetch.bytes": 8 * 1024 * 1024})
    out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    try:
        assign = []
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False)
            if high > low:
                assign.append(TopicPartition(topic, p, low))
        if not assign:
            return out
        consumer.assign(assign)
        left = {tp.partition for tp in assign}
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=10_000, timeout=1.0):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        left.discard(m.partition())
                        continue
                    raise KafkaException(m.error())
                v = m.value()
                out[m.partition()].append((m.offset(), v[:8] if v else b""))
        if left:
            raise TimeoutError(f"reading {topic}: partitions {sorted(left)[:5]} not read to the end in {timeout:.0f}s")
        return out
    finally:
        consumer.close()


class EndOffsets:
    """Log end offsets of one topic's partitions in one ListOffsets call (the Offsets of
    copy_rate.py asks partition by partition, too slow at 200 partitions). A partition
    that cannot be read counts as 0, and the next call uses a new AdminClient: librdkafka
    keeps a topic it once saw missing in its metadata cache."""

    def __init__(self, cluster: Cluster, topic: str, partitions: int):
        self.cluster, self.topic, self.partitions = cluster, topic, partitions
        self.admin = cluster.admin()
        self.renewed = time.monotonic()

    def get(self) -> dict[int, int]:
        req = {TopicPartition(self.topic, p): OffsetSpec.latest() for p in range(self.partitions)}
        out = {p: 0 for p in range(self.partitions)}
        failed = False
        try:
            # short: a missing topic (the mirror not created yet) must not hold the poll
            futures = self.admin.list_offsets(req, request_timeout=2)
            for tp, f in futures.items():
                try:
                    out[tp.partition] = f.result(3).offset
                except KafkaException:
                    failed = True
        except KafkaException:
            failed = True
        if failed and time.monotonic() - self.renewed > 0.2:  # soon: a copy can start any moment
            self.admin = self.cluster.admin()
            self.renewed = time.monotonic()
        return out

    def close(self) -> None:
        pass


def log_bytes(state: Path, cluster_name: str, topic: str) -> int:
    """Bytes of the topic's log segments (*.log files) in the cluster's data dir."""
    total = 0
    for d in (state / cluster_name / "data").glob(f"{topic}-*"):
        if d.name.rsplit("-", 1)[0] != topic:
            continue
        total += sum(f.stat().st_size for f in d.glob("*.log"))
    return total


# ---------------------------------------------------------------- results

@dataclass
class Row:
    workload: str
    system: str
    records_per_s: float | None = None
    mb_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float | None = None
    dst_broker_us: float | None = None
    src_broker_us: float | None = None
    machine_us: float | None = None  # every process on the machine, per record copied
    cores_busy: float | None = None  # CPUs busy (all processes) over the copy window
    rss_mib: float | None = None
    identical: float | None = None   # share of the copied records that sit at their source offset
    missing: int | None = None       # source records (read before the copy) not on the destination
    extra: int | None = None         # destination records that are not a committed source record
    reread: int | None = None
    skipped: int | None = None
    group_note: str = ""
    disk: tuple[int, int] | None = None  # (source log bytes, destination log bytes)
    note: str = ""


# ---------------------------------------------------------------- copiers

def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only ever a process this script started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Copier:
    key = ""
    system = ""
    committed_only = True  # reads the source read_committed

    def dst_topic(self, topic: str) -> str:
        return topic

    def start(self, wl: Workload, source_boot: str, dst: Cluster, topics: list[str]) -> int:
        raise NotImplementedError

    def alive(self) -> None:
        pass

    def stop(self) -> None:
        pass


class MirrorMaker2(Copier):
    def __init__(self, key: str, system: str, settings: dict, env: dict, state: Path):
        self.key, self.system, self.settings, self.env, self.state = key, system, settings, env, state
        self.committed_only = settings.get("src.consumer.isolation.level") == "read_committed"
        self.name: str | None = None
        self.pid: int | None = None

    def dst_topic(self, topic: str) -> str:
        return f"src.{topic}"

    def start(self, wl, source_boot, dst, topics):
        self.name = f"mm2-{wl.name}-{self.key}"
        # Connect's group and internal topics of this run only: otherwise a new MirrorMaker 2
        # starts with the previous run's stored connector configs, then restarts its tasks
        sets = {**MM2_HARNESS, "group.id": self.name, "config.storage.topic": f"{self.name}-configs",
                "offset.storage.topic": f"{self.name}-offsets", "status.storage.topic": f"{self.name}-status",
                **self.settings}
        if wl.producer.get("compression.type") and self.settings:
            # the tuned operator compresses the way the source was written
            sets["dst.producer.compression.type"] = wl.producer["compression.type"]
        cmd = [str(cr.SCRIPT), "mm2", self.name, "--source", source_boot, "--target", dst.bootstrap,
               "--topics", "|".join(topics)]
        for k, v in sets.items():
            cmd += ["--set", f"{k}={v}"]
        proc = subprocess.run(cmd, env=self.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=120)
        if proc.returncode != 0:
            raise cr.Unavailable(f"kafka-local mm2 failed: {proc.stderr.strip()[-300:]}")
        self.pid = int(proc.stdout.strip())
        return self.pid

    @property
    def log_path(self) -> Path:
        return self.state / (self.name or "?") / "mm2.log"

    def alive(self):
        if self.pid and not Path(f"/proc/{self.pid}").exists():
            raise cr.Unavailable(f"MirrorMaker 2 exited; see {self.log_path}")

    def stop(self):
        if self.name:
            subprocess.run([str(cr.SCRIPT), "down", self.name], env=self.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
        self.pid = None


class WorkersProbe(cr.ProcessProbe):
    """ProcessProbe over several worker processes: CPU time summed, RSS summed at each
    sample (the row's peak RSS is that of all workers together), thread CPU merged."""

    def __init__(self, pids: list[int]):
        self.probes = [cr.ProcessProbe(p) for p in pids]
        super().__init__(pids[0])

    def cpu(self):
        vals = [p.cpu() for p in self.probes]
        return None if any(v is None for v in vals) else sum(vals)

    def threads_cpu(self):
        out: dict[str, float] = {}
        for i, p in enumerate(self.probes):
            for name, v in p.threads_cpu().items():
                out[f"w{i}:{name}"] = v
        return out

    def sample(self):
        total = 0
        for p in self.probes:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        self.max_rss_kib = max(self.max_rss_kib, total)


class KafkaMirrorsWorker(Copier):
    key = "km"

    def __init__(self, exe: str, workdir: Path, workers: int = 1):
        self.exe, self.workdir, self.workers = exe, workdir, workers
        self.system = f"kafka-mirrors ({workers} worker{'s' if workers > 1 else ''})"
        self.key = f"km{workers}" if workers > 1 else "km"
        self.km: cr.KafkaMirrors | None = None
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.settle_topic: str | None = None  # a 16-partition source topic: one partition per slot
        self.copy_started_at = 0.0
        self.creator: threading.Thread | None = None
        self.create_error: Exception | None = None
        self.settled_note = ""

    def start(self, wl, source_boot, dst, topics):
        if not shutil.which(self.exe):
            raise cr.Unavailable(f"{self.exe} not found")
        self.settled_note = ""
        d = self.workdir / f"{wl.name}-{self.key}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        link = f"cmp-{wl.name}-{self.key}"
        self.km = cr.KafkaMirrors(self.exe, d, link=link)
        # as the tuned MirrorMaker 2: the mirror is compressed the way the source was written
        # (else the link's default, lz4)
        codec = wl.producer.get("compression.type")
        self.km.must("link", "create", link, "--source", source_boot, "--destination", dst.bootstrap,
                      "--config", "consumer.offset.sync.ms=1000",
                      *(["--config", f"mirror.compression.type={codec}"] if codec else []))
        if self.settle_topic:
            self.km.must("mirror", "create", self.settle_topic, "--link", link)
        self.procs, self.logs = [], []
        for i in range(self.workers):
            path = self.km.worker_log.with_name(f"{self.km.worker_log.stem}-{i}.log")
            with open(path, "wb") as out:
                self.procs.append(subprocess.Popen(self.km.worker_command(), stdin=subprocess.DEVNULL, stdout=out,
                                                   stderr=subprocess.STDOUT))
            self.logs.append(path)
        if self.settle_topic:
            self.wait_settled()
        # The workload's mirrors are created from a thread, so the destination is polled
        # (wait_for_copy) from before the first one exists: the copy window runs from the
        # first copied record seen, as for MirrorMaker 2, and the group's forming is not in it.
        self.create_error = None

        def create():
            try:
                for t in topics:
                    self.km.must("mirror", "create", t, "--link", link)
            except Exception as e:  # noqa: BLE001 - alive() raises it in the bench's thread
                self.create_error = e
        self.copy_started_at = time.monotonic()
        self.creator = threading.Thread(target=create, name="mirror-create", daemon=True)
        self.creator.start()
        return [p.pid for p in self.procs] if self.workers > 1 else self.procs[0].pid

    def created(self, timeout: float = 120.0) -> None:
        """Every mirror of the workload exists (before its latency phase)."""
        if self.creator is not None:
            self.creator.join(timeout)
        self.alive()

    def wait_settled(self, timeout: float = 120.0) -> None:
        """Until the group of the link has shared its 16 slots evenly among all the workers
        (the settle topic has a partition in every slot) and that held for 2 s: the rows
        measure copying by a running group, as an operator's workers are before a mirror
        is created, not the group forming (tests/integration/test_scale_out.py is about
        joins and leaves under load)."""
        deadline, since, last = time.monotonic() + timeout, None, None
        while time.monotonic() < deadline:
            self.alive()
            owners = self.owners(self.settle_topic)
            counts = sorted(owners.values())
            even = (len(owners) == self.workers and "none" not in owners and sum(counts) == 16
                    and counts[-1] - counts[0] <= 1)
            if even and owners == last:
                if since is not None and time.monotonic() - since >= 2.0:
                    return
                since = since or time.monotonic()
            else:
                since = None
            last = owners
            time.sleep(0.5)
        self.settled_note = f"group not settled after {timeout:.0f} s ({self.spread(self.settle_topic)}); "

    def owners(self, topic: str) -> dict[str, int]:
        """Partitions of `topic` per owning worker ("none" for unowned), from describe."""
        proc = self.km.cli("describe", "--link", self.km.link, "--output", "json")
        if proc.returncode != 0:
            return {}
        owners: dict[str, int] = {}
        for lv in json.loads(proc.stdout)["links"]:
            for mv in lv["mirrors"]:
                if mv["topic"] == topic:
                    for p in mv["partitions"]:
                        who = p.get("owner") if p.get("owner_live", True) else None
                        owners[who or "none"] = owners.get(who or "none", 0) + 1
        return owners

    def alive(self):
        if self.create_error is not None:
            raise cr.Unavailable(str(self.create_error))
        for proc, path in zip(self.procs, self.logs):
            if proc.poll() is not None:
                tail = path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise cr.Unavailable(f"'kafka-mirrors run' exited with code {proc.returncode}: {tail[0]} "
                                     f"(log {path})")

    def spread(self, topic: str) -> str:
        """Partitions of `topic` owned by each worker, as describe shows them ("4/2")."""
        owners = self.owners(topic)
        if not owners:
            return "spread unknown"
        return "/".join(str(n) for n in sorted(owners.values(), reverse=True))

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            stop_process(proc, 30)
        self.procs = []


# ---------------------------------------------------------------- Toxiproxy

class Toxiproxy:
    """scripts/toxiproxy's server on a free port, one proxy with a latency toxic each way."""

    def __init__(self, logfile: Path):
        built = subprocess.run([str(ROOT / "scripts" / "toxiproxy"), "fetch"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
        if built.returncode != 0:
            raise RuntimeError(f"scripts/toxiproxy fetch failed: {built.stderr.strip()[-500:]}")
        self.api_port = _free_port()
        self._out = open(logfile, "wb")
        self.proc = subprocess.Popen([built.stdout.strip(), "-host", "127.0.0.1", "-port", str(self.api_port)],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    self._api("GET", "/version")
                    return
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"toxiproxy did not answer (log {logfile})")
                    time.sleep(0.2)
        except BaseException:  # never leave the server behind
            self.stop()
            raise

    def _api(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:  # /version answers plain text
            return raw.decode(errors="replace")

    def delay(self, listen: int, upstream: int, one_way_ms: int) -> None:
        self._api("POST", "/proxies", {"name": "source", "listen": f"127.0.0.1:{listen}",
                                       "upstream": f"127.0.0.1:{upstream}", "enabled": True})
        for stream in ("upstream", "downstream"):
            self._api("POST", "/proxies/source/toxics",
                      {"name": f"rtt-{stream}", "type": "latency", "stream": stream, "toxicity": 1.0,
                       "attributes": {"latency": one_way_ms, "jitter": 0}})

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self._out.close()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- one measurement

class Bench:
    def __init__(self, args, state: Path, src: Cluster, dst: Cluster, far_boot: str | None):
        self.args, self.state, self.src, self.dst, self.far_boot = args, state, src, dst, far_boot
        self.warmup_src = src.create_topic(f"warmup-{uuid.uuid4().hex[:6]}", 6)
        self.warmup_dst = dst.create_topic(f"warmup-{uuid.uuid4().hex[:6]}", 6)
        # a fresh broker's JVM is cold: the first workload's ceiling would be low for it
        warm = Workload("warm-up", "", 10_000 if args.quick else 30_000)
        for cluster, t in ((src, self.warmup_src), (dst, self.warmup_dst)):
            load(cluster, t, warm, t, transactional=False)

    def ceiling(self, wl: Workload) -> Row:
        topic = self.dst.create_topic(f"raw-{wl.name}", wl.partitions)
        row = Row(wl.label, "raw producer -> destination (ceiling)")
        brokers0 = {name: b.cpu() for name, b in cr.BROKERS.items()}
        loaded = load(self.dst, topic, wl, self.warmup_dst, transactional=False)
        if loaded.machine_cpu_seconds is not None:
            row.machine_us = loaded.machine_cpu_seconds * 1e6 / wl.records
            row.cores_busy = loaded.machine_cpu_seconds / loaded.seconds
        row.records_per_s = wl.records / loaded.seconds
        row.mb_per_s = row.records_per_s * wl.size / MB
        row.cpu_us = loaded.cpu_seconds * 1e6 / wl.records
        b = cr.BROKERS.get("cmp-destination")
        if b and brokers0.get("cmp-destination") is not None:
            row.dst_broker_us = (b.cpu() - brokers0["cmp-destination"]) * 1e6 / wl.records
        return row

    def run(self, wl: Workload, copier: Copier) -> Row:
        row = Row(wl.label, copier.system)
        src, dst = self.src, self.dst
        topic = src.create_topic(f"{wl.name}-{copier.key}", wl.partitions, wl.topic_config)
        lat_topic = None
        if wl.latency_mb_s:
            lat_topic = src.create_topic(f"lat-{wl.name}-{copier.key}", wl.partitions)
        log(f"{wl.name} / {copier.system}: preloading {wl.records:,} records into {topic}")
        loaded = load(src, topic, wl, self.warmup_src, transactional=True)
        if wl.key_space:
            wait_compacted(src, topic, wl.partitions)
        source = scan(src, topic, wl.partitions)
        readable = sum(len(v) for v in source.values())
        # the group a consumer on the source has committed: the middle record of every partition
        group = f"{GROUP}-{wl.name}-{copier.key}"
        commit_at = {p: recs[len(recs) // 2][0] for p, recs in source.items() if recs}
        commit_group(src, group, topic, commit_at)
        src_ends = EndOffsets(src, topic, wl.partitions)
        source_leo = src_ends.get()
        src_ends.close()
        if isinstance(copier, MirrorMaker2):
            counts = loaded.committed if copier.committed_only else loaded.data
            if wl.key_space:
                counts = {p: len(v) for p, v in source.items()}
            goal = counts
        else:
            goal = source_leo
        topics = [topic] + ([lat_topic] if lat_topic else [])
        boot = self.far_boot if wl.far else src.bootstrap
        if isinstance(copier, KafkaMirrorsWorker):
            copier.settle_topic = src.create_topic(f"settle-{wl.name}-{copier.key}", 16)
        started = time.monotonic()
        try:
            pid = copier.start(wl, boot, dst, topics)
            if isinstance(copier, KafkaMirrorsWorker):
                started = copier.copy_started_at  # its mirrors were created after the group settled
            probe = WorkersProbe(pid) if isinstance(pid, list) else cr.ProcessProbe(pid)
            dst_ends = EndOffsets(dst, copier.dst_topic(topic), wl.partitions)
            try:
                first, done, first_offsets = cr.wait_for_copy(dst_ends, goal, self.args.timeout, probe,
                                                              copier.alive, poll=POLL_S)
            except TimeoutError as e:
                raise cr.Unavailable(f"did not finish: {e}")
            finally:
                dst_ends.close()
            total = sum(goal.values()) or 1
            first_records = round(readable * first_offsets / total)
            n, secs = cr.copy_window(readable, first, done, first_records, started, min_window=MIN_WINDOW_S)
            log(f"{wl.name} / {copier.system}: first copied record seen {first - started:.2f} s after the "
                f"start with {first_records:,} records there, the last {done - first:.2f} s later; rate over "
                f"{n:,} records in {secs:.2f} s")
            row.records_per_s = n / secs if secs > 0 else None
            row.mb_per_s = row.records_per_s * wl.size / MB if row.records_per_s else None
            row.cpu_us = cr.cpu_per_record(probe, readable, first_records)
            brokers = cr.brokers_per_record(readable, first_records)
            row.dst_broker_us = brokers.get("cmp-destination")
            row.src_broker_us = brokers.get("cmp-source")
            row.machine_us = cr.cpu_per_record(cr.MACHINE, readable, first_records)
            if row.machine_us is not None and done > first:
                row.cores_busy = (cr.MACHINE.cpu_at_done - cr.MACHINE.cpu_at_first_copy) / (done - first)
            log(f"{wl.name} / {copier.system}: {readable:,} records in {done - started:.1f}s "
                f"({(row.records_per_s or 0):,.0f} records/s)")
            if isinstance(copier, KafkaMirrorsWorker):
                copier.created()
            if lat_topic:
                lat = cr.measure_latency(copier.system, src, dst, lat_topic, copier.dst_topic(lat_topic),
                                         wl.partitions, self.args.latency_seconds, wl.latency_mb_s, wl.size,
                                         probe, copier.alive)
                if lat.samples_ms:
                    s = sorted(lat.samples_ms)
                    row.p50_ms = statistics.median(s)
                    row.p99_ms = s[min(len(s) - 1, int(len(s) * 0.99))]
                if lat.received < lat.sent:
                    row.note += f"latency: {lat.received} of {lat.sent} arrived; "
            moved = wait_group(dst, group, copier.dst_topic(topic), wl.partitions,
                               self.args.group_wait, probe, copier.alive)
            if isinstance(copier, KafkaMirrorsWorker):
                row.note += copier.settled_note
                if copier.workers > 1:
                    row.note += f"partitions per worker {copier.spread(topic)}; "
            probe.sample()
            row.rss_mib = probe.max_rss_mib
        except cr.Unavailable as e:
            row.note = f"not available ({e})"
            return row
        finally:
            copier.stop()
        copy = scan(dst, copier.dst_topic(topic), wl.partitions)
        compare(row, source, copy, commit_at, moved)
        if wl.producer.get("compression.type"):
            row.disk = (log_bytes(self.state, "cmp-source", topic),
                        log_bytes(self.state, "cmp-destination", copier.dst_topic(topic)))
        return row


def wait_compacted(cluster: Cluster, topic: str, partitions: int, timeout: float = 90) -> None:
    """Until the log cleaner has compacted the closed segments: readable records stop falling."""
    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(3)
        n = sum(len(v) for v in scan(cluster, topic, partitions).values())
        if n == last:
            return
        last = n
    log(f"{topic}: still compacting after {timeout:.0f}s; copying it as it is")


def commit_group(cluster: Cluster, group: str, topic: str, at: dict[int, int]) -> None:
    c = cluster.consumer(**{"group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in at.items()], asynchronous=False)
    finally:
        c.close()


def group_offsets(cluster: Cluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = cluster.consumer(**{"group.id": group})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    except KafkaException:
        return {}
    finally:
        c.close()


def wait_group(dst: Cluster, group: str, topic: str, partitions: int, timeout: float, probe, alive) -> dict:
    """The group's offsets on the destination once every partition has one and they stayed
    the same for 3 s (or whatever is there after `timeout`)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        got = group_offsets(dst, group, topic, partitions)
        probe.sample()
        alive()
        if got != last:
            last, since = got, time.monotonic()
        elif len(got) == partitions and time.monotonic() - since >= 3:
            return got
        time.sleep(0.5)
    return last or {}


def compare(row: Row, source: dict, copy: dict, commit_at: dict[int, int], moved: dict[int, int]) -> None:
    """Identical offsets, extra records, and what a consumer of the group resuming on the
    destination (at the synced offsets, else at the earliest) would read twice or miss."""
    same = both = extra = missing = reread = skipped = 0
    for p, recs in source.items():
        src_at = {rid: off for off, rid in recs}
        dst_at = {rid: off for off, rid in copy.get(p, [])}
        for rid, off in src_at.items():
            doff = dst_at.get(rid)
            if doff is None:
                missing += 1
            else:
                both += 1
                same += doff == off
        extra += sum(1 for rid in dst_at if rid not in src_at)
        c = commit_at.get(p)
        if c is None:
            continue
        d = moved.get(p, 0)  # no synced offset: auto.offset.reset=earliest
        for rid, off in src_at.items():
            doff = dst_at.get(rid)
            if doff is None:
                continue
            if off < c and doff >= d:
                reread += 1
            elif off >= c and doff < d:
                skipped += 1
    row.identical = same / both if both else None
    row.extra, row.missing, row.reread, row.skipped = extra, missing, reread, skipped
    if len(moved) < len(commit_at):
        row.group_note = f"{len(moved)}/{len(commit_at)} partitions synced, rest from earliest"


# ---------------------------------------------------------------- report

def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row], args) -> None:
    cols = [("workload", 34, "<"), ("system", 36, "<"), ("records/s", 10, ">"), ("MB/s", 7, ">"),
            ("p50 ms", 7, ">"), ("p99 ms", 7, ">"), ("CPU us/rec", 10, ">"), ("dst brk us/rec", 14, ">"),
            ("src brk us/rec", 14, ">"), ("all CPU us/rec", 14, ">"), ("cores busy", 10, ">"),
            ("peak RSS MiB", 12, ">"), ("same offset", 11, ">"), ("re-read", 8, ">"), ("skipped", 8, ">"),
            ("ours/MM2 tuned", 14, ">"), ("ours/ceiling", 12, ">")]
    head = " ".join(f"{name:{al}{w}}" for name, w, al in cols)
    print()
    print("kafka-mirrors vs MirrorMaker 2 vs the raw producer ceiling (MB = 10^6 bytes of values; "
          "latency at the workload's paced rate; re-read/skipped: a consumer group committed at the middle "
          "of every source partition, resumed on the destination)")
    print(head)
    print("-" * len(head))
    by_wl: dict[str, list[Row]] = {}
    for r in rows:
        by_wl.setdefault(r.workload, []).append(r)
    for wl, group in by_wl.items():
        ceiling = next((r for r in group if r.system.startswith("raw producer")), None)
        tuned = next((r for r in group if r.system.startswith("MirrorMaker 2 tuned")), None)
        for r in group:
            if r.note.startswith("not "):
                print(f"{wl:<34} {r.system:<36} {r.note}")
                continue
            ours = r.system.startswith("kafka-mirrors")
            vs_mm2 = (f"{r.records_per_s / tuned.records_per_s:.2f}x"
                      if ours and tuned and tuned.records_per_s and r.records_per_s else "-")
            vs_ceil = (f"{r.records_per_s / ceiling.records_per_s:.2f}x"
                       if ours and ceiling and ceiling.records_per_s and r.records_per_s else "-")
            same = "-" if r.identical is None else f"{r.identical * 100:.1f}%"
            vals = [wl, r.system, fmt(r.records_per_s, ",.0f"), fmt(r.mb_per_s, ".1f"), fmt(r.p50_ms, ".1f"),
                    fmt(r.p99_ms, ".1f"), fmt(r.cpu_us, ".1f"), fmt(r.dst_broker_us, ".1f"),
                    fmt(r.src_broker_us, ".1f"), fmt(r.machine_us, ".1f"), fmt(r.cores_busy, ".2f"),
                    fmt(r.rss_mib, ".0f"), same, fmt(r.reread, ","), fmt(r.skipped, ","), vs_mm2, vs_ceil]
            print(" ".join(f"{v:{al}{w}}" for v, (_, w, al) in zip(vals, cols)))
    notes = [r for r in rows if (r.extra or r.missing or r.group_note or r.disk or (r.note and not r.note.startswith("not ")))]
    if notes:
        print()
    for r in notes:
        bits = []
        if r.extra:
            bits.append(f"{r.extra:,} records on the destination that are not committed source records")
        if r.missing:
            bits.append(f"{r.missing:,} source records not on the destination (a compacted log: the cleaners "
                        f"of either cluster may remove them after the source was read)")
        if r.group_note:
            bits.append(r.group_note)
        if r.disk:
            s, d = r.disk
            bits.append(f"log bytes on disk: source {s / MB:.1f} MB, mirror {d / MB:.1f} MB "
                        f"({(d / s if s else 0):.2f}x)")
        if r.note and not r.note.startswith("not "):
            bits.append(r.note.rstrip("; "))
        print(f"{r.workload} / {r.system}: " + "; ".join(bits))
    print()
    print("Noisy: 2 CPUs shared by both brokers, the copier, this script's clients and other people's tests; "
          "records/s swings from run to run, CPU us/rec (the copier's own process, copy window only) is steadier. "
          "Ceiling CPU us/rec is this script's producer.")
    print(f"all CPU us/rec: every process on the machine (the copier, both brokers, this script's clients) per "
          f"record over the copy window, from /proc/stat; cores busy: how many of the {os.cpu_count()} CPUs they "
          f"kept busy over it. Near {os.cpu_count()} the CPUs held the rate, and the copier's rate can rise only "
          f"as its all CPU us/rec falls.")


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"small counts, workloads {','.join(QUICK_SET)}")
    ap.add_argument("--workloads", help="comma-separated subset of: 1k,100b,64k,200p,compact,txn,zstd,1k-far")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every record count (default 1)")
    ap.add_argument("--latency-seconds", type=float, default=None,
                    help="length of each latency phase (default 15, --quick 6)")
    ap.add_argument("--group-wait", type=float, default=None,
                    help="seconds to wait for a moved group's offsets on the destination (default 15, --quick 10)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up on one copy after this many seconds")
    ap.add_argument("--rtt-ms", type=int, default=50, help="round trip added to the source by Toxiproxy (1k-far)")
    ap.add_argument("--workers", default="1,2,3", type=lambda v: [int(x) for x in v.split(",")],
                    help="kafka-mirrors rows: how many workers share the link in each (default 1,2,3)")
    ap.add_argument("--skip-mm2-default", action="store_true", help="leave out MirrorMaker 2 at its defaults")
    ap.add_argument("--skip-mm2", action="store_true",
                    help="leave out both MirrorMaker 2 rows (to look at kafka-mirrors alone; no ours/MM2 ratio)")
    ap.add_argument("--state-dir", default=os.environ.get("BENCH_COMPARE_STATE", str(ROOT / ".cache" / "bench-compare")),
                    help="kafka-local state dir of this benchmark's clusters (default .cache/bench-compare)")
    ap.add_argument("--kafka-mirrors", default=str(ROOT / ".venv" / "bin" / "kafka-mirrors"))
    args = ap.parse_args(argv)
    if args.latency_seconds is None:
        args.latency_seconds = 6.0 if args.quick else 15.0
    if args.group_wait is None:
        args.group_wait = 10.0 if args.quick else 15.0
    all_wl = {w.name: w for w in workloads(args.quick, args.scale)}
    names = (args.workloads.split(",") if args.workloads
             else (QUICK_SET if args.quick else list(all_wl)))
    unknown = [n for n in names if n not in all_wl]
    if unknown:
        ap.error(f"unknown workload(s) {','.join(unknown)}; known: {','.join(all_wl)}")
    chosen = [all_wl[n] for n in names]

    state = Path(args.state_dir).resolve()
    workdir = state.parent / (state.name + "-runs")  # beside the state dir: kafka-local lists its folders
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ["KAFKA_LOCAL_STATE"] = str(state)
    os.environ.setdefault("KAFKA_LOCAL_HEAP", "1g")
    env = dict(os.environ)
    local = LocalKafka(cr.SCRIPT, state)
    toxi: Toxiproxy | None = None
    rows: list[Row] = []

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        far_boot = None
        proxy_port = None
        far_reason = None
        if any(w.far for w in chosen):
            if not (ROOT / "scripts" / "toxiproxy").exists():
                far_reason = "scripts/toxiproxy is not there"
            else:
                proxy_port = _free_port()
        log(f"starting clusters in {state}")
        if proxy_port:
            proc = local._run("up", "cmp-source", "--json", "--clean", "--proxy-port", str(proxy_port), check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"kafka-local up cmp-source failed: {proc.stderr}")
            meta = json.loads(proc.stdout)
            src = Cluster("cmp-source", meta["bootstrap"], meta["cluster_id"], managed=True, local=local)
            try:
                toxi = Toxiproxy(workdir / "toxiproxy.log")
                toxi.delay(proxy_port, meta["proxied"]["port"], args.rtt_ms // 2)
                far_boot = f"127.0.0.1:{proxy_port}"
            except (RuntimeError, OSError, ValueError) as e:
                far_reason = f"Toxiproxy: {e}"
        else:
            src = local.up("cmp-source")
        dst = local.up("cmp-destination")
        cr.BROKERS.update(cr.broker_probes(state, ["cmp-source", "cmp-destination"]))
        bench = Bench(args, state, src, dst, far_boot)
        copiers: list[Copier] = []
        if not (args.skip_mm2_default or args.skip_mm2):
            copiers.append(MirrorMaker2("mm2d", "MirrorMaker 2 defaults (tasks.max=6)", {}, env, state))
        if not args.skip_mm2:
            copiers.append(MirrorMaker2("mm2t", "MirrorMaker 2 tuned", MM2_TUNED, env, state))
        copiers += [KafkaMirrorsWorker(args.kafka_mirrors, workdir, n) for n in args.workers]

        if any(w.name == "1k" for w in chosen) and args.latency_seconds > 0:
            w = all_wl["1k"]
            t = src.create_topic("lat-direct", w.partitions)
            lat = cr.measure_latency("direct", src, src, t, t, w.partitions, args.latency_seconds,
                                     w.latency_mb_s, w.size, None)
            s = sorted(lat.samples_ms)
            floor = Row(w.label, "direct, no copier (latency floor)")
            if s:
                floor.p50_ms, floor.p99_ms = statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.99))]
            rows.append(floor)
        for wl in chosen:
            if wl.far and not far_boot:
                rows.append(Row(wl.label, "every system", note=f"not run ({far_reason})"))
                continue
            log(f"workload {wl.name}: {wl.label}, {wl.records:,} records")
            if not wl.far:
                rows.append(bench.ceiling(wl))
            for c in copiers:
                if wl.far and c.key == "mm2d":
                    continue
                try:
                    rows.append(bench.run(wl, c))
                except (RuntimeError, KafkaException, TimeoutError, OSError) as e:
                    c.stop()
                    rows.append(Row(wl.label, c.system, note=f"not available ({str(e)[:200]})"))
        print_table(rows, args)
        print(f"\nclusters: Apache Kafka {os.environ.get('KAFKA_LOCAL_VERSION', '4.1.1')}, single node each, "
              f"127.0.0.1; {os.cpu_count()} CPUs; logs in {workdir} and {state}/mm2-*/mm2.log")
        return 0
    except KeyboardInterrupt:
        if rows:
            print_table(rows, args)
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        log("stopping MirrorMaker 2, workers, Toxiproxy and clusters")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for c in locals().get("copiers", []):
            try:
                c.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                log(f"stopping {c.system}: {e}")
        if toxi:
            toxi.stop()
        local.down_all()


if __name__ == "__main__":
    sys.exit(main())
