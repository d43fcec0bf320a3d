"""Copy rate and end-to-end latency of kafka-mirrors, beside baselines measured in the
same run on the same brokers: a single raw producer into the destination, and
MirrorMaker 2.

    .venv/bin/python bench/copy_rate.py [--records N] [--latency-seconds S] [--skip-mm2]

It starts its own two single-node clusters (scripts/kafka-local, state in
.cache/bench-clusters) and stops them at the end, even on error or Ctrl-C. Nothing here
is asserted: it prints tables. A system that cannot run is printed as "not available"
with the reason; no number is ever made up.

Phases, in order:
  preload   N records of 1 KiB, round robin over 6 partitions of the source topic
  raw       one idempotent acks=all producer writes the same N records into the destination
  mm2       MirrorMaker 2 (dedicated mode, tasks.max=6, its defaults otherwise) copies the topic (to src.<topic>); time until all N are there
  kafka-mirrors  link create, mirror create, `kafka-mirrors run --link`; time until the
            destination's log end offsets equal the source's
  latency   a producer paces 5 MB/s of 1 KiB records carrying their send time into the
            source; a consumer on the destination computes the delay. Run once with no
            copier (consumer on the source: the floor), then beside each copier.
MB = 10^6 bytes of record values.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import KafkaError, KafkaException, TopicPartition  # noqa: E402

from tests.kafkatest import Cluster, LocalKafka  # noqa: E402
from tests.mirrortools import assert_identical, producer_config  # noqa: E402

STATE = ROOT / ".cache" / "bench-clusters"
SCRIPT = ROOT / "scripts" / "kafka-local"
BULK_TOPIC = "bench-bulk"
# one latency topic per copier: a copier must not find the other's records there
LATENCY_TOPIC_MM2 = "bench-latency-mm2"
LATENCY_TOPIC_KM = "bench-latency-km"
LATENCY_TOPIC_DIRECT = "bench-latency-direct"
RAW_TOPIC = "bench-raw"
MM2_NAME = "bench-mm2"
LINK = "bench"
MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# the two brokers' processes (set once they are up): their CPU time per copied record is
# printed beside the copier's, since on a small machine they share the same CPUs
BROKERS: dict[str, "ProcessProbe"] = {}


class MachineProbe:
    """CPU time of the whole machine (every process, all CPUs) from /proc/stat, stamped at
    the first copied record seen and at the last like the process probes: over a copy
    window it says how many cores were busy, and so whether the CPUs were what held the
    rate (a profile of the machine, not of one process)."""

    def __init__(self):
        self.cpu_at_first_copy: float | None = None
        self.cpu_at_done: float | None = None

    def cpu(self) -> float | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()
            # cpu user nice system idle iowait irq softirq steal ...: busy = user to softirq
            # but idle and iowait (steal is time a VM's CPU wanted and the host gave elsewhere)
            ticks = [int(v) for v in fields[1:8]]
            return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return None


MACHINE = MachineProbe()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- results

@dataclass
class Rate:
    system: str
    records: int = 0
    seconds: float = 0.0          # copy time (first record seen -> last), the rate's base
    wall_seconds: float | None = None  # including process start-up
    cpu_seconds: float | None = None
    # CPU time of the copier per record copied, over the copy window only (start-up left
    # out): steadier than records/s when other processes share the CPUs
    cpu_us_per_record: float | None = None
    cpu_us_by_thread: dict[str, float] = field(default_factory=dict)  # same, per thread name
    broker_us_per_record: dict[str, float] = field(default_factory=dict)  # broker name -> same
    max_rss_mib: float | None = None
    unavailable: str | None = None  # why there is no number

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    system: str
    samples_ms: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    target_mb_s: float = 0.0
    achieved_mb_s: float = 0.0
    unavailable: str | None = None


# ---------------------------------------------------------------- process probes

class ProcessProbe:
    """Samples RSS and CPU time of one pid from /proc (Linux), so the copier's cost is
    printed beside its rate."""

    def __init__(self, pid: int):
        self.pid = pid
        self.max_rss_kib = 0
        self.cpu_start = self.cpu()
        self.cpu_at_first_copy: float | None = None  # set by wait_for_copy
        self.cpu_at_done: float | None = None
        self.threads_at_first_copy: dict[str, float] = {}
        self.threads_at_done: dict[str, float] = {}

    def cpu(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        except (OSError, IndexError, ValueError):
            return None

    def threads_cpu(self) -> dict[str, float]:
        """CPU seconds per thread name (librdkafka names its threads rdk:main, rdk:broker1...);
        the process's first thread (Python's main thread) is called "main"."""
        out: dict[str, float] = {}
        try:
            tasks = list(Path(f"/proc/{self.pid}/task").iterdir())
        except OSError:
            return out
        for task in tasks:
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = "main" if task.name == str(self.pid) else stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
        return out

    def sample(self) -> None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.max_rss_kib = max(self.max_rss_kib, int(line.split()[1]))
        except OSError:
            pass

    def restart_cpu(self) -> None:
        self.cpu_start = self.cpu()

    def cpu_used(self) -> float | None:
        now = self.cpu()
        return None if now is None or self.cpu_start is None else now - self.cpu_start

    @property
    def max_rss_mib(self) -> float | None:
        return self.max_rss_kib / 1024 if self.max_rss_kib else None


# ---------------------------------------------------------------- kafka helpers

def payloads(size: int, n: int = 64) -> list[bytes]:
    rnd = random.Random(42)
    return [rnd.randbytes(size) for _ in range(n)]


def bulk_produce(cluster: Cluster, topic: str, records: int, size: int, partitions: int) -> float:
    """Produce `records` values of `size` bytes round robin over partitions with one
    idempotent acks=all producer; every delivery checked. Returns seconds from the first
    produce() to the end of flush()."""
    producer = cluster.producer(**producer_config())
    values = payloads(size)
    errors: list[str] = []

    def on_delivery(err, msg):
        if err is not None and len(errors) < 3:
            errors.append(str(err))

    # Warm up first: a fresh producer spends up to a second getting its producer ID and the
    # topic's metadata, which is start-up, not rate. The warm-up record goes to a topic of
    # its own so `topic` holds exactly `records` records.
    warmup = cluster.create_topic(f"bench-warmup-{uuid.uuid4().hex[:8]}")
    producer.produce(warmup, b"warm-up", on_delivery=on_delivery)
    producer.list_topics(topic, timeout=15)
    producer.flush(30)

    start = time.monotonic()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, values[i % len(values)], partition=i % partitions,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    elapsed = time.monotonic() - start
    if errors or left:
        raise RuntimeError(f"producing to {topic} failed: {errors or f'{left} undelivered'}")
    return elapsed


class Offsets:
    """Log end offsets (high watermarks) of a topic, with one long-lived client so that
    polling every 100 ms costs little. A topic that does not exist yet counts as empty."""

    def __init__(self, cluster: Cluster, topic: str, partitions: int):
        self.consumer = cluster.consumer()
        self.topic = topic
        self.partitions = partitions

    def get(self) -> dict[int, int]:
        out = {}
        for p in range(self.partitions):
            try:
                out[p] = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                             timeout=5, cached=False)[1]
            except KafkaException:
                out[p] = 0
        return out

    def close(self) -> None:
        self.consumer.close()


def wait_for_copy(dst: Offsets, target: dict[int, int], timeout: float, probe: ProcessProbe | None,
                  alive=lambda: None, poll: float = 0.1) -> tuple[float, float, int]:
    """Poll the destination until its log end offsets reach `target`. Returns (time the
    first copied record was seen, time all were there, records already there at first
    sight). Raises TimeoutError naming how far it got; `alive()` may raise if the copier died."""
    total = sum(target.values())
    start = time.monotonic()
    first_seen = None
    first_count = 0
    while True:
        offsets = dst.get()
        # the time of the answer, not of the ask: a ListOffsets for a topic not created yet
        # can block for seconds while the copy runs, and a first sight stamped with the
        # time it was asked gave a window of 0 s over the whole copy (277M records/s)
        now = time.monotonic()
        copied = sum(offsets.values())
        if probe:
            probe.sample()
        if copied and first_seen is None:
            first_seen, first_count = now, copied
            for b in (*BROKERS.values(), MACHINE):
                b.cpu_at_first_copy = b.cpu()
            if probe:
                probe.cpu_at_first_copy = probe.cpu()
                probe.threads_at_first_copy = probe.threads_cpu()
        if all(offsets.get(p, 0) >= end for p, end in target.items()):
            for b in (*BROKERS.values(), MACHINE):
                b.cpu_at_done = b.cpu()
            if probe:
                probe.cpu_at_done = probe.cpu()
                probe.threads_at_done = probe.threads_cpu()
            return first_seen, now, first_count
        alive()
        if now - start > timeout:
            raise TimeoutError(f"copied {copied} of {total} records in {timeout:.0f}s")
        time.sleep(poll)


def copy_window(records: int, first: float, done: float, first_count: int, started: float,
                min_window: float = 0.5) -> tuple[int, float]:
    """(records, seconds) the copy rate is computed from: from the first copied record seen
    to the last, unless most records were already there at first sight or the rest took
    less than `min_window` s (a copier too fast for the poll), then from the copier's start."""
    if first_count * 2 > records or done - first < min_window:
        return records, done - started
    return records - first_count, done - first


def cpu_per_record(probe: ProcessProbe, records: int, first_count: int) -> float | None:
    """CPU microseconds per record from the first copied record seen to the last (the
    records already there at first sight are left out, like their CPU time)."""
    a, b = probe.cpu_at_first_copy, probe.cpu_at_done
    n = records - first_count
    if a is None or b is None or n < records // 10:
        return None
    return (b - a) * 1e6 / n


def brokers_per_record(records: int, first_count: int) -> dict[str, float]:
    out = {}
    for name, b in BROKERS.items():
        us = cpu_per_record(b, records, first_count)
        if us is not None:
            out[name] = us
    return out


def broker_probes(state: Path, names: list[str]) -> dict[str, "ProcessProbe"]:
    out = {}
    for name in names:
        try:
            out[name] = ProcessProbe(json.loads((state / name / "cluster.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
    return out


def measure_latency(system: str, src: Cluster, dst: Cluster, src_topic: str, dst_topic: str,
                    partitions: int, seconds: float, mb_s: float, size: int,
                    probe: ProcessProbe | None, alive=lambda: None) -> Latency:
    """Pace mb_s of `size`-byte records (send time in the first 8 bytes) into src_topic for
    `seconds`, and read them on dst_topic; latency = receive time - send time (one host,
    one clock). The first second is warm-up and not counted."""
    result = Latency(system, target_mb_s=mb_s)
    per_second = mb_s * MB / size
    pad = payloads(size - 8, 1)[0]
    consumer = dst.consumer(**{"fetch.wait.max.ms": 50, "enable.partition.eof": False})
    consumer.assign([TopicPartition(dst_topic, p, 0) for p in range(partitions)])
    producer = src.producer(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    done_sending = threading.Event()
    sent = [0]
    send_window = [0.0, 0.0]

    def produce() -> None:
        start = time.monotonic()
        send_window[0] = start
        i = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * per_second)
            while i < due:
                producer.produce(src_topic, struct.pack(">q", time.time_ns()) + pad, partition=i % partitions)
                i += 1
            producer.poll(0)
            time.sleep(0.005)
        producer.flush(30)
        send_window[1] = time.monotonic()
        sent[0] = i
        done_sending.set()

    sender = threading.Thread(target=produce, name="latency-producer", daemon=True)
    warmup_ns = time.time_ns() + 1_000_000_000
    sender.start()
    received = 0
    grace_until = None
    try:
        while True:
            # poll() returns as soon as one record is there; consume(timeout=0) then drains
            # what is already fetched. (consume(n, t) alone waits for n records or t seconds,
            # which would add up to t to every latency.)
            first = consumer.poll(0.2)
            batch = [first, *consumer.consume(num_messages=1000, timeout=0)] if first is not None else []
            for m in batch:
                if m.error():
                    if m.error().code() in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                            KafkaError._UNKNOWN_PARTITION):
                        continue  # the mirror topic may appear a little later
                    raise KafkaException(m.error())
                now_ns = time.time_ns()
                sent_ns = struct.unpack(">q", m.value()[:8])[0]
                received += 1
                if sent_ns >= warmup_ns:
                    result.samples_ms.append((now_ns - sent_ns) / 1e6)
            if probe:
                probe.sample()
            alive()
            if done_sending.is_set():
                if received >= sent[0]:
                    break
                grace_until = grace_until or time.monotonic() + 15
                if time.monotonic() > grace_until:
                    break
    finally:
        sender.join(60)
        consumer.close()
    result.sent, result.received = sent[0], received
    span = send_window[1] - send_window[0]
    result.achieved_mb_s = sent[0] * size / MB / span if span > 0 else 0.0
    return result


# ---------------------------------------------------------------- the copiers

def run_mm2(local_env: dict, src: Cluster, dst: Cluster, records: int, partitions: int,
            latency_seconds: float, mb_s: float, size: int, timeout: float) -> tuple[Rate, Latency]:
    rate = Rate("MirrorMaker 2 (tasks.max=6)", records)
    lat = Latency("MirrorMaker 2", target_mb_s=mb_s)
    topics = f"{BULK_TOPIC}|{LATENCY_TOPIC_MM2}"
    started = time.monotonic()
    proc = subprocess.run([str(SCRIPT), "mm2", MM2_NAME, "--source", src.bootstrap, "--target", dst.bootstrap,
                           "--topics", topics], env=local_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if proc.returncode != 0:
        rate.unavailable = lat.unavailable = f"kafka-local mm2 failed: {proc.stderr.strip()[-300:]}"
        return rate, lat
    pid = int(proc.stdout.strip())
    probe = ProcessProbe(pid)
    mm2_log = STATE / MM2_NAME / "mm2.log"

    def alive() -> None:
        if not Path(f"/proc/{pid}").exists():
            raise RuntimeError(f"MirrorMaker 2 exited; see {mm2_log}")

    dst_offsets = Offsets(dst, f"src.{BULK_TOPIC}", partitions)
    try:
        target = Offsets(src, BULK_TOPIC, partitions)
        goal = target.get()
        target.close()
        try:
            first, done, first_count = wait_for_copy(dst_offsets, goal, timeout, probe, alive)
        except (TimeoutError, RuntimeError) as e:
            rate.unavailable = lat.unavailable = f"did not finish: {e}; see {mm2_log}"
            return rate, lat
        rate.records, rate.seconds = copy_window(records, first, done, first_count, started)
        rate.wall_seconds = done - started
        rate.cpu_seconds = probe.cpu_used()
        rate.cpu_us_per_record = cpu_per_record(probe, records, first_count)
        rate.broker_us_per_record = brokers_per_record(records, first_count)
        rate.max_rss_mib = probe.max_rss_mib
        log(f"MirrorMaker 2 copied {records} records ({rate.records_per_s:,.0f} records/s)")
        if latency_seconds > 0:
            log(f"MirrorMaker 2 latency at {mb_s:g} MB/s for {latency_seconds:g}s")
            try:
                lat = measure_latency("MirrorMaker 2", src, dst, LATENCY_TOPIC_MM2, f"src.{LATENCY_TOPIC_MM2}",
                                      partitions, latency_seconds, mb_s, size, probe, alive)
            except RuntimeError as e:
                lat.unavailable = str(e)
        else:
            lat.unavailable = "skipped (--latency-seconds 0)"
        return rate, lat
    finally:
        dst_offsets.close()
        subprocess.run([str(SCRIPT), "down", MM2_NAME], env=local_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


class KafkaMirrors:
    """Drives the kafka-mirrors CLI as a user would, with a registry of its own."""

    def __init__(self, exe: str, workdir: Path, profile: str | None = None, link: str = LINK):
        self.exe = exe
        self.profile = profile
        self.link = link
        self.registry = workdir / "links.toml"
        self.worker_log = workdir / "worker.log"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, "--registry", str(self.registry), *args], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)

    def must(self, *args: str) -> None:
        proc = self.cli(*args)
        if proc.returncode != 0:
            first = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()
            raise Unavailable(f"'kafka-mirrors {' '.join(args[:2])}' failed: {first[-1] if first else ''}")

    def worker_command(self) -> list[str]:
        args = ["--registry", str(self.registry), "run", "--link", self.link,
                "--log-level", os.environ.get("BENCH_WORKER_LOG_LEVEL", "info")]
        if self.profile:
            # cProfile slows Python calls down: the rate and CPU rows of such a run are not
            # comparable with others; it is for finding where the time goes
            return [sys.executable, "-m", "cProfile", "-o", self.profile, "-m", "kafka_mirrors", *args]
        return [self.exe, *args]


class Unavailable(Exception):
    """kafka-mirrors could not be measured; the message says why."""


def run_kafka_mirrors(exe: str, workdir: Path, src: Cluster, dst: Cluster, records: int, partitions: int,
                      latency_seconds: float, mb_s: float, size: int, timeout: float,
                      profile: str | None = None, bulk_topic: str = BULK_TOPIC,
                      link: str = LINK, py_spy: str | None = None) -> tuple[Rate, Latency]:
    rate = Rate("kafka-mirrors (1 worker)" + (" under cProfile" if profile else "")
                + (" under py-spy" if py_spy else ""), records)
    lat = Latency("kafka-mirrors", target_mb_s=mb_s)
    if not shutil.which(exe):
        rate.unavailable = lat.unavailable = f"{exe} not found"
        return rate, lat
    km = KafkaMirrors(exe, workdir, profile, link)
    worker = spy = None
    try:
        km.must("link", "create", link, "--source", src.bootstrap, "--destination", dst.bootstrap)
        km.must("mirror", "create", bulk_topic, "--link", link)
        if latency_seconds > 0:
            km.must("mirror", "create", LATENCY_TOPIC_KM, "--link", link)
        started = time.monotonic()
        with open(km.worker_log, "wb") as out:
            worker = subprocess.Popen(km.worker_command(),
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        probe = ProcessProbe(worker.pid)
        if py_spy:
            # a sampling profile of the worker's Python threads as it runs, with the C frames
            # under them (--native, which needs py-spy to stop the process for each sample:
            # at 100 samples a second that costs far less than cProfile's per-call hooks).
            # librdkafka's own threads run no Python and are not sampled: the per-thread CPU
            # line covers them. It ends when the worker exits.
            with open(f"{py_spy}.log", "wb") as spy_log:  # why a profile is missing, if it is
                spy = subprocess.Popen(["py-spy", "record", "--native", "--threads",
                                        "--rate", "100", "--format", "raw", "--output", py_spy,
                                        "--pid", str(worker.pid)],
                                       stdin=subprocess.DEVNULL, stdout=spy_log, stderr=subprocess.STDOUT)

        def alive() -> None:
            if worker.poll() is not None:
                tail = km.worker_log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise Unavailable(f"'kafka-mirrors run' exited with code {worker.returncode}: {tail[0]} "
                                  f"(log {km.worker_log})")

        target = Offsets(src, bulk_topic, partitions)
        goal = target.get()
        target.close()
        dst_offsets = Offsets(dst, bulk_topic, partitions)
        try:
            first, done, first_count = wait_for_copy(dst_offsets, goal, timeout, probe, alive)
        except TimeoutError as e:
            raise Unavailable(f"did not finish: {e} (log {km.worker_log})")
        finally:
            dst_offsets.close()
        rate.records, rate.seconds = copy_window(records, first, done, first_count, started)
        rate.wall_seconds = done - started
        rate.cpu_seconds = probe.cpu_used()
        rate.cpu_us_per_record = cpu_per_record(probe, records, first_count)
        rate.broker_us_per_record = brokers_per_record(records, first_count)
        n = records - first_count
        if rate.cpu_us_per_record is not None:
            rate.cpu_us_by_thread = {name: (cpu - probe.threads_at_first_copy.get(name, 0.0)) * 1e6 / n
                                     for name, cpu in probe.threads_at_done.items()}
        rate.max_rss_mib = probe.max_rss_mib
        log(f"kafka-mirrors copied {records} records ({rate.records_per_s:,.0f} records/s)")
        if latency_seconds > 0:
            log(f"kafka-mirrors latency at {mb_s:g} MB/s for {latency_seconds:g}s")
            try:
                lat = measure_latency("kafka-mirrors", src, dst, LATENCY_TOPIC_KM, LATENCY_TOPIC_KM,
                                      partitions, latency_seconds, mb_s, size, probe, alive)
            except Unavailable as e:
                lat.unavailable = str(e)
            rate.max_rss_mib = probe.max_rss_mib  # the latency phase may have grown it
        else:
            lat.unavailable = "skipped (--latency-seconds 0)"
    except Unavailable as e:
        if rate.seconds == 0:
            rate.unavailable = str(e)
        lat.unavailable = lat.unavailable or str(e)
    finally:
        try:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    log("kafka-mirrors run ignored SIGTERM for 30s; killing it")
                    worker.kill()
                    worker.wait(10)
        finally:
            if spy is not None:
                try:
                    spy.wait(30)  # it writes its profile once the worker is gone
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(10)
    return rate, lat


# ---------------------------------------------------------------- report

def py_spy_summary(path: str, focus: str = "copy-", top: int = 15) -> list[str]:
    """What a py-spy raw profile ('thread (tid): name;frame;...;frame count' per line) says:
    the share of samples per thread, then for the copy thread (name starting with `focus`)
    the leaf frames (self) and the frames on its stack (total), as shares of its samples."""
    threads: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = focused = 0
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        said = Path(f"{path}.log")
        tail = said.read_text(errors="replace").strip().splitlines()[-1:] if said.exists() else []
        return [f"py-spy profile {path}: {e}" + (f" (py-spy said: {tail[0]})" if tail else "")]
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        name = frames[0].partition(": ")[2] or frames[0]
        samples += n
        threads[name] = threads.get(name, 0) + n
        if not name.startswith(focus):
            continue
        focused += n
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
        for f in set(frames[1:]):
            total[f] = total.get(f, 0) + n
    if not samples:
        return [f"py-spy profile {path}: no samples"]

    def share(d: dict[str, int], of: int) -> list[str]:
        return [f"  {n * 100 / of:5.1f}%  {f}" for f, n in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    out = [f"py-spy profile of the worker's Python threads ({samples:,} samples, {path}); samples by thread:"]
    out += share(threads, samples)
    if focused:
        out += [f"the copy thread ({focused:,} samples): leaf frames (self)"] + share(leaf, focused)
        out += ["the copy thread: frames on the stack (total)"] + share(total, focused)
    return out


def not_measured(system: str, reason: str) -> str:
    if reason.startswith("skipped"):
        return f"{system + ':':<34} {reason}"
    return f"{system + ':':<34} not available ({reason})"


def print_tables(rates: list[Rate], raw: Rate, latencies: list[Latency], args) -> None:
    print()
    print(f"Copy rate: {args.records:,} records of {args.record_size} B over {args.partitions} partitions"
          f" (MB = 10^6 bytes of values)")
    head = f"{'system':<34} {'records/s':>11} {'MB/s':>8} {'vs raw producer':>16} {'wall s':>8} {'CPU s':>7} {'CPU us/rec':>10} {'max RSS MiB':>12}"
    print(head)
    print("-" * len(head))

    def opt(v, fmt):
        return format(v, fmt) if v is not None else "-"

    for r in rates:
        if r.unavailable:
            print(not_measured(r.system, r.unavailable))
            continue
        mb = r.records_per_s * args.record_size / MB
        ratio = r.records_per_s / raw.records_per_s if raw.records_per_s and r is not raw else None
        vs = "baseline" if r is raw else (f"{ratio:.2f}x" if ratio is not None else "-")
        print(f"{r.system:<34} {r.records_per_s:>11,.0f} {mb:>8.1f} {vs:>16} "
              f"{opt(r.wall_seconds, '.1f'):>8} {opt(r.cpu_seconds, '.1f'):>7} {opt(r.cpu_us_per_record, '.1f'):>10} {opt(r.max_rss_mib, '.0f'):>12}")
    print("records/s is measured from the first copied record seen on the destination to the last;"
          " 'wall s' includes process start-up.")
    for r in rates:
        if not r.unavailable and r.broker_us_per_record:
            print(f"broker CPU us/rec during '{r.system}': "
                  + ", ".join(f"{name} {us:.1f}" for name, us in r.broker_us_per_record.items()))
    km = next((r for r in rates if r.system.startswith("kafka-mirrors")), None)
    if km and km.cpu_us_by_thread:
        busy = sorted(km.cpu_us_by_thread.items(), key=lambda kv: -kv[1])
        print("kafka-mirrors CPU us/rec by thread: "
              + ", ".join(f"{name} {us:.1f}" for name, us in busy if us >= 0.05))
    if km and not km.unavailable and raw.records_per_s:
        ratio = km.records_per_s / raw.records_per_s
        print(f"first target (copy rate >= 0.5x raw producer): {'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f}x)")

    print()
    print(f"End-to-end latency at a steady {args.mb_per_s:g} MB/s ({args.record_size} B records, "
          f"{args.latency_seconds:g}s, first second not counted)")
    head = f"{'system':<34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'sent':>8} {'received':>9} {'MB/s sent':>10}"
    print(head)
    print("-" * len(head))
    for lat in latencies:
        if lat.unavailable:
            print(not_measured(lat.system, lat.unavailable))
            continue
        s = sorted(lat.samples_ms)
        if not s:
            print(f"{lat.system:<34} no records arrived ({lat.received} of {lat.sent})")
            continue
        p50 = statistics.median(s)
        p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
        print(f"{lat.system:<34} {p50:>8.1f} {p99:>8.1f} {s[-1]:>8.1f} {lat.sent:>8} {lat.received:>9} "
              f"{lat.achieved_mb_s:>10.2f}")


def print_rounds(rounds: list[tuple[Rate, Rate]]) -> None:
    print()
    print("Rounds: raw producer, then kafka-mirrors on a fresh topic of the same size, back to back"
          " (round 1 is the table above)")
    head = (f"{'round':>5} {'raw records/s':>14} {'kafka-mirrors records/s':>24} {'ratio':>6} "
            f"{'worker CPU us/rec':>18} {'its main thread':>16} {'dst broker us/rec':>18}")
    print(head)
    print("-" * len(head))
    ratios = []
    for i, (raw, km) in enumerate(rounds, 1):
        if km.unavailable:
            print(f"{i:>5} {raw.records_per_s:>14,.0f} not available ({km.unavailable})")
            continue
        ratio = km.records_per_s / raw.records_per_s if raw.records_per_s else 0.0
        ratios.append(ratio)
        us = f"{km.cpu_us_per_record:.1f}" if km.cpu_us_per_record is not None else "-"
        dst_us = km.broker_us_per_record.get("bench-destination")
        main_us = km.cpu_us_by_thread.get("main")
        print(f"{i:>5} {raw.records_per_s:>14,.0f} {km.records_per_s:>24,.0f} {ratio:>5.2f}x {us:>18} "
              f"{(f'{main_us:.1f}' if main_us is not None else '-'):>16} "
              f"{(f'{dst_us:.1f}' if dst_us is not None else '-'):>18}")
    if ratios:
        print(f"ratio over {len(ratios)} rounds: median {statistics.median(ratios):.2f}x, "
              f"min {min(ratios):.2f}x, max {max(ratios):.2f}x; "
              f"rounds at 0.5x or more: {sum(r >= 0.5 for r in ratios)} of {len(ratios)}")


# ---------------------------------------------------------------- main

def raw_producer(dst: Cluster, topic: str, args) -> Rate:
    cpu0 = time.process_time()
    brokers0 = {name: b.cpu() for name, b in BROKERS.items()}
    secs = bulk_produce(dst, topic, args.records, args.record_size, args.partitions)
    cpu = time.process_time() - cpu0
    raw = Rate("raw producer -> destination", args.records, secs, secs, cpu,
               cpu_us_per_record=cpu * 1e6 / args.records)
    for name, b in BROKERS.items():
        now = b.cpu()
        if now is not None and brokers0.get(name) is not None:
            raw.broker_us_per_record[name] = (now - brokers0[name]) * 1e6 / args.records
    return raw


def extra_round(n: int, src: Cluster, dst: Cluster, args, workdir: Path) -> tuple[Rate, Rate]:
    """Round n of --rounds: a fresh source topic, the raw producer into a fresh destination
    topic, then kafka-mirrors (its own link) copying the new topic; no MM2, no latency."""
    bulk, raw_topic = f"{BULK_TOPIC}-r{n}", f"{RAW_TOPIC}-r{n}"
    workdir.mkdir(parents=True, exist_ok=True)
    src.create_topic(bulk, args.partitions)
    dst.create_topic(raw_topic, args.partitions)
    log(f"round {n}: preloading {bulk}")
    bulk_produce(src, bulk, args.records, args.record_size, args.partitions)
    log(f"round {n}: raw producer")
    raw = raw_producer(dst, raw_topic, args)
    log(f"round {n}: kafka-mirrors")
    km, _ = run_kafka_mirrors(args.kafka_mirrors, workdir, src, dst, args.records, args.partitions,
                              0, args.mb_per_s, args.record_size, args.timeout, None,
                              bulk_topic=bulk, link=f"{LINK}-r{n}")
    return raw, km



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=500_000, help="records to copy (default 500000)")
    ap.add_argument("--record-size", type=int, default=1024, help="value bytes per record (default 1024)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--latency-seconds", type=float, default=20.0,
                    help="length of each latency phase; 0 skips them (default 20)")
    ap.add_argument("--mb-per-s", type=float, default=5.0, help="paced rate of the latency phase (default 5)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up on a copier after this many seconds")
    ap.add_argument("--verify", action="store_true",
                    help="after the kafka-mirrors copy, compare both topics record by record")
    ap.add_argument("--skip-mm2", action="store_true", help="do not run the MirrorMaker 2 baseline")
    ap.add_argument("--kafka-mirrors", default=str(ROOT / ".venv" / "bin" / "kafka-mirrors"),
                    help="the kafka-mirrors executable (default .venv/bin/kafka-mirrors)")
    ap.add_argument("--worker-profile", metavar="PATH",
                    help="run the kafka-mirrors worker under cProfile and write its stats to PATH "
                         "(read with python -m pstats; that run's numbers are not comparable)")
    ap.add_argument("--worker-py-spy", metavar="PATH",
                    help="sample the kafka-mirrors worker's Python threads with py-spy (on PATH; --native) "
                         "and write its collapsed stacks to PATH; the top frames are printed after the table")
    ap.add_argument("--rounds", type=int, default=1,
                    help="after the first round, repeat raw producer + kafka-mirrors on fresh topics "
                         "this many times in all and print each ratio (other load on the machine "
                         "makes single ratios noisy)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds >= 1")
    if args.records < 1 or args.record_size < 16 or args.partitions < 1:
        ap.error("--records >= 1, --record-size >= 16 and --partitions >= 1 are required")
    if args.worker_py_spy and not shutil.which("py-spy"):
        ap.error("--worker-py-spy needs py-spy on PATH (pip install py-spy)")

    os.environ["KAFKA_LOCAL_STATE"] = str(STATE)
    os.environ.setdefault("KAFKA_LOCAL_HEAP", "1g")
    local_env = dict(os.environ)
    local = LocalKafka(SCRIPT, STATE)
    # the registry and worker log of this run; kept after it for a look at the log
    workdir = ROOT / ".cache" / "bench-kafka-mirrors"  # beside STATE: kafka-local lists every folder in it
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rates: list[Rate] = []
    latencies: list[Latency] = []
    try:
        log(f"starting clusters in {STATE}")
        src = local.up("bench-source")
        dst = local.up("bench-destination")
        src.create_topic(BULK_TOPIC, args.partitions)
        src.create_topic(LATENCY_TOPIC_MM2, args.partitions)
        src.create_topic(LATENCY_TOPIC_KM, args.partitions)
        src.create_topic(LATENCY_TOPIC_DIRECT, args.partitions)
        dst.create_topic(RAW_TOPIC, args.partitions)

        log(f"preloading {args.records:,} records into {BULK_TOPIC} on the source")
        secs = bulk_produce(src, BULK_TOPIC, args.records, args.record_size, args.partitions)
        log(f"preload: {args.records / secs:,.0f} records/s")

        BROKERS.update(broker_probes(STATE, ["bench-source", "bench-destination"]))
        log("raw producer into the destination")
        raw = raw_producer(dst, RAW_TOPIC, args)
        rates.append(raw)

        if args.latency_seconds > 0:
            # the floor: the same producer and consumer with no copier between them
            log(f"direct latency (no copier) at {args.mb_per_s:g} MB/s for {args.latency_seconds:g}s")
            latencies.append(measure_latency("direct, no copier (floor)", src, src, LATENCY_TOPIC_DIRECT,
                                             LATENCY_TOPIC_DIRECT, args.partitions, args.latency_seconds,
                                             args.mb_per_s, args.record_size, None))

        if args.skip_mm2:
            rates.append(Rate("MirrorMaker 2 (tasks.max=6)", unavailable="skipped (--skip-mm2)"))
            latencies.append(Latency("MirrorMaker 2", unavailable="skipped (--skip-mm2)"))
        else:
            log("MirrorMaker 2")
            r, lat = run_mm2(local_env, src, dst, args.records, args.partitions, args.latency_seconds,
                             args.mb_per_s, args.record_size, args.timeout)
            rates.append(r)
            latencies.append(lat)

        log("kafka-mirrors")
        r, lat = run_kafka_mirrors(args.kafka_mirrors, workdir, src, dst, args.records, args.partitions,
                                   args.latency_seconds, args.mb_per_s, args.record_size, args.timeout,
                                   args.worker_profile, py_spy=args.worker_py_spy)
        rates.append(r)
        latencies.append(lat)
        verified = None
        if args.verify and not r.unavailable:
            log("verifying the kafka-mirrors copy record by record")
            try:
                assert_identical(src, dst, BULK_TOPIC, BULK_TOPIC, args.partitions)
                verified = "kafka-mirrors copy verified: every record identical at the same offset"
            except AssertionError as e:
                verified = f"kafka-mirrors copy DIFFERS from the source:\n{e}"

        rounds = [(raw, r)]
        for n in range(2, args.rounds + 1):
            rounds.append(extra_round(n, src, dst, args, workdir / f"round-{n}"))

        print_tables(rates, raw, latencies, args)
        if verified:
            print(f"\n{verified}")
        if args.rounds > 1:
            print_rounds(rounds)
        if args.worker_py_spy:
            print()
            print("\n".join(py_spy_summary(args.worker_py_spy)))
        print(f"\nclusters: Apache Kafka 4.1.1, single node each, 127.0.0.1; {os.cpu_count()} CPUs; "
              f"worker log and registry in {workdir}")
        return 0
    finally:
        log("stopping clusters")
        subprocess.run([str(SCRIPT), "down", MM2_NAME], env=local_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        local.down_all()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
