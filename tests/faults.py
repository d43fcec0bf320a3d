"""Helpers of the fault suite (tests/integration/test_faults*.py, issue 11).

Each case has records flowing from a `Flow` thread (plain, transactional and compacted
topics), injects faults, then `check_case` compares both clusters record by record
(read_committed: offsets, keys, values, headers in order, timestamps), checks every record
the producer had acknowledged is on the destination, and that a consumer group's offsets
committed on the source reached the destination. The figures (faults injected, records
lost, duplicated, offset mismatches) are printed as one line

    FAULTS kind=<kind> injected=<n> lost=0 dup=0 mismatched=0 records=<n> ...

and appended as JSON to <test state dir>/faults.jsonl, then asserted to be 0.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import OFFSET_STORED, ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from kafka_mirrors import state as st
from tests import mirrortools as mt

ROOT = Path(__file__).resolve().parent.parent
FILLER_HEADER = "kafka-mirrors.filler"
PLAIN, TXN, COMPACT = "plain", "txn", "compacted"
COMPACT_CONFIG = {"cleanup.policy": "compact", "segment.ms": "2000", "min.cleanable.dirty.ratio": "0.01",
                  "min.compaction.lag.ms": "0", "delete.retention.ms": "86400000"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_topic(cluster, kind: str, partitions: int) -> str:
    return cluster.create_topic(unique(f"fault-{kind}"), partitions=partitions,
                                config=COMPACT_CONFIG if kind == COMPACT else None)


# ------------------------------------------------------------------ records flowing

class Flow:
    """One thread producing to every topic given ({topic: (kind, partitions)}) until
    stopped: awkward keys, headers and timestamps (mt.make_records' shapes); plain topics
    through an idempotent producer, compacted ones with 40 repeating keys, transactional
    ones through one transactional producer (1-5 records per transaction, about a third
    aborted; one producer per partition, so no aborted transaction interleaves with
    another producer). Survives the source broker going away (long delivery timeout,
    transactions aborted or the producer made again on errors).

    `acked`: (topic, partition, offset, value) of every record the source acknowledged
    (transactional ones once their transaction committed)."""

    def __init__(self, cluster, topics: dict[str, tuple[str, int]], per_second: int = 150, seed: int = 1):
        self.cluster, self.topics = cluster, topics
        self.interval = 1.0 / per_second
        self.rnd = random.Random(seed)
        self.pool = mt.make_records(600, seed=seed)
        self.acked: list[tuple[str, int, int, bytes | None]] = []
        self.sent = 0
        self.errors: list[str] = []
        self.tx_outcomes = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-flow")
        self.plain = cluster.producer(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                                         "message.timeout.ms": 600000, "log_level": 0})
        self.txp = None
        self._tx_pending: list = []

    # records
    def _record(self, topic: str, kind: str, i: int):
        base = self.pool[i % len(self.pool)]
        key = b"ck-%d" % (i % 40) if kind == COMPACT else base.key
        value = None if (i % 23 == 5 and kind != TXN) else (b"%s|%d|" % (topic.encode(), i) + (base.value or b"")[:512])
        return key, value, base.headers or None, base.timestamp_ms

    def _on_plain(self, err, msg):
        if err is None:
            with self._lock:
                self.acked.append((msg.topic(), msg.partition(), msg.offset(), msg.value()))
        elif len(self.errors) < 10:
            self.errors.append(f"plain delivery: {err}")

    def _on_tx(self, err, msg):
        if err is None:
            self._tx_pending.append((msg.topic(), msg.partition(), msg.offset(), msg.value()))

    def _new_txp(self):
        p = self.cluster.producer(**{"transactional.id": unique("fault-flow-tx"), "linger.ms": 5,
                                     "transaction.timeout.ms": 60000, "message.timeout.ms": 55000,
                                     "log_level": 0})
        while not self._stop.is_set():
            try:
                p.init_transactions(20)
                return p
            except KafkaException as e:
                self.errors.append(f"init_transactions: {e}") if len(self.errors) < 10 else None
                time.sleep(1)
        return None

    def _transaction(self, i: int, tx_topics: list[tuple[str, int]]) -> int:
        if self.txp is None:
            self.txp = self._new_txp()
            if self.txp is None:
                return i
        p = self.txp
        self._tx_pending = []
        try:
            p.begin_transaction()
            for topic, parts in tx_topics:
                part = self.rnd.randrange(parts)
                for _ in range(self.rnd.randint(1, 5)):
                    key, value, headers, ts = self._record(topic, TXN, i)
                    p.produce(topic, key=key, value=value, headers=headers, timestamp=ts, partition=part,
                              on_delivery=self._on_tx)
                    i += 1
                    self.sent += 1
            if p.flush(60) != 0:
                raise KafkaException("transactional records not delivered")
            if self.rnd.random() < 0.33:
                p.abort_transaction(60)
                self.tx_outcomes["aborted"] += 1
            else:
                p.commit_transaction(60)
                self.tx_outcomes["committed"] += 1
                with self._lock:
                    self.acked.extend(self._tx_pending)
        except KafkaException as e:
            err = e.args[0] if e.args and hasattr(e.args[0], "txn_requires_abort") else None
            if len(self.errors) < 10:
                self.errors.append(f"transaction: {e}")
            if err is not None and err.txn_requires_abort():
                try:
                    p.abort_transaction(60)
                    self.tx_outcomes["aborted after error"] += 1
                    return i
                except KafkaException:
                    pass
            # outcome unknown (a timeout, a fatal error): a new producer fences this one and
            # the broker ends its transaction; the comparison reads what the source kept
            self.tx_outcomes["unknown"] += 1
            self.txp = None
        return i

    def _run(self) -> None:
        i = turn = 0
        tx_topics = [(t, n) for t, (k, n) in self.topics.items() if k == TXN]
        other = [(t, k, n) for t, (k, n) in self.topics.items() if k != TXN]
        while not self._stop.is_set():
            for topic, kind, parts in other:
                key, value, headers, ts = self._record(topic, kind, i)
                try:
                    self.plain.produce(topic, key=key, value=value, headers=headers, timestamp=ts,
                                       partition=i % parts, on_delivery=self._on_plain)
                    self.sent += 1
                except BufferError:
                    pass
                i += 1
            turn += 1
            if tx_topics and turn % 3 == 0:
                i = self._transaction(i, tx_topics)
            self.plain.poll(self.interval)

    def start(self) -> "Flow":
        self._thread.start()
        return self

    def stop(self, timeout: float = 120.0) -> None:
        """Stop producing; every record sent is delivered (or reported) and the last
        transaction ended before this returns."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the flow thread did not stop"
        left = self.plain.flush(timeout)
        assert left == 0, f"{left} records of the flow not delivered within {timeout:.0f}s: {self.errors}"

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)


# ------------------------------------------------------------------ consumer group

def committed(cluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    admin = cluster.admin()
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    res = admin.list_consumer_group_offsets([req])[group].result(20)
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.offset >= 0}


class GroupReader:
    """A consumer of group `group` on the source reading every topic given and committing
    its positions every half second until stopped, so offsets move while the fault goes on."""

    def __init__(self, cluster, group: str, topics: dict[str, int], from_committed: bool = False):
        self.group, self.topics = group, topics
        self.consumer = cluster.consumer(**{"group.id": group, "enable.auto.commit": False, "log_level": 0,
                                            "auto.offset.reset": "earliest"})
        # from the start, or where the group committed last (a second reader of the group)
        start = OFFSET_STORED if from_committed else 0
        self.consumer.assign([TopicPartition(t, p, start) for t, n in topics.items() for p in range(n)])
        self.read = 0
        self.commits = 0
        # every offset it committed, per (topic, partition): a group offset on the
        # destination must be one of these (or lowered to the failover point)
        self.committed: dict[tuple[str, int], set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-group")

    def _commit(self) -> None:
        try:
            positions = self.consumer.position(self.consumer.assignment())
            self.consumer.commit(asynchronous=False)
            self.commits += 1
        except KafkaException:
            return  # nothing read yet, or the source is away: next time
        for tp in positions:
            if tp.offset >= 0:
                self.committed.setdefault((tp.topic, tp.partition), set()).add(tp.offset)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            m = self.consumer.poll(0.2)
            if m is not None and not m.error():
                self.read += 1
            if time.monotonic() - last > 0.5:
                self._commit()
                last = time.monotonic()

    def start(self) -> "GroupReader":
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(30)
            self._commit()
            self.consumer.close()


def check_group_synced(source, destination, group: str, topics: dict[str, int], timeout: float = 90.0,
                       log=lambda: "") -> dict[str, dict[int, int]]:
    want = {t: committed(source, group, t, n) for t, n in topics.items()}
    assert any(want.values()), f"group {group} committed nothing on the source"
    def synced():
        return all(committed(destination, group, t, n) == want[t] for t, n in topics.items())
    try:
        mt.wait_until(synced, timeout, f"the offsets of {group} on the destination", interval=0.5)
    except AssertionError as exc:
        got = {t: committed(destination, group, t, n) for t, n in topics.items()}
        raise AssertionError(f"{exc}: source {want}, destination {got}\n{log()[-3000:]}") from None
    return want


def wait_group_on_destination(destination, group: str, topics: dict[str, int], timeout: float = 60.0) -> None:
    """Until the group has an offset on the destination for every partition of `topics`."""
    mt.wait_until(lambda: all(len(committed(destination, group, t, n)) == n for t, n in topics.items()),
                  timeout, f"the offsets of {group} on the destination for every partition", interval=0.5)


def check_group_after_failover(destination, group: str, topics: dict[str, int], points: dict[str, dict[int, int]],
                                reader: GroupReader) -> dict[str, int]:
    """After a failover: the group's offset on the destination, for every partition, is
    one the group committed on the source (offsets are the same on both clusters), or
    lower than one it committed (offset sync lowers an offset the copy had not reached
    yet to the destination's log end offset), and never past the failover point: a
    consumer moved across never skips a record the destination holds. The second bound is
    weak (the reader goes on committing, so most offsets are below one it committed): the
    failover point is the check that matters, and `exact` says how many partitions sat at
    an offset the group committed. Returns how many partitions were checked, and that."""
    out = {"partitions": 0, "exact": 0}
    for t, n in topics.items():
        got = committed(destination, group, t, n)
        assert len(got) == n, f"group {group}: {t} has offsets on the destination for {sorted(got)} of {n} partitions"
        for p, d in got.items():
            mine = reader.committed.get((t, p), set())
            assert d <= points[t][p], f"group {group}: {t}-{p} at {d} on the destination, past the failover point {points[t][p]}"
            assert d in mine or any(o > d for o in mine), \
                f"group {group}: {t}-{p} at {d} on the destination, past every offset the group committed on the source"
            out["partitions"] += 1
            out["exact"] += d in mine
    return out


# ------------------------------------------------------------------ comparison

def _ident(r: mt.Stored) -> tuple:
    return (r.key, r.value, tuple(r.headers), r.timestamp)


def _is_filler(r: mt.Stored) -> bool:
    return any(n == FILLER_HEADER for n, _ in r.headers)


def compare_topic(source, destination, topic: str, kind: str, acked=(), upto: dict[int, int] | None = None,
                  src_topic: str | None = None) -> dict:
    """Record-by-record comparison of one mirror (read_committed). Returns counts:
    records (on the source), lost (a source or acknowledged record not on the destination
    at its offset), dup (records on the destination more often than on the source),
    mismatched (offsets where the two differ, log start included), fillers (visible
    fillers, counted as mismatched unless compaction explains them), and up to 10 lines
    of detail. `upto` limits the comparison to offsets below it per partition (a failover
    point): the destination must be exactly the source's prefix."""
    src_topic = src_topic or topic
    parts = sorted(mt.log_end_offsets(source, src_topic))
    out = {"records": 0, "lost": 0, "dup": 0, "mismatched": 0, "fillers": 0, "detail": []}

    def note(msg: str) -> None:
        if len(out["detail"]) < 10:
            out["detail"].append(msg)

    lost_at: set[tuple[int, int]] = set()
    for p in parts:
        S = mt.snapshot(source, src_topic, p)
        D = mt.snapshot(destination, topic, p)
        if upto is not None:
            S = [r for r in S if r.offset < upto[p]]
            past = [r for r in D if r.offset >= upto[p]]
            assert not past, (f"{topic}-{p}: {len(past)} record(s) past the failover point {upto[p]}, at offsets "
                              f"{past[0].offset}..{past[-1].offset}, {sum(map(_is_filler, past))} of them fillers")
        out["records"] += len(S)
        if S:  # offsets the source shows nothing at: markers, aborted or compacted records
            out["gaps"] = out.get("gaps", 0) + (S[-1].offset + 1 - S[0].offset - len(S))
        src_start = mt.watermarks(source, src_topic, p)[0]
        dst_start = mt.watermarks(destination, topic, p)[0]
        first = S[0].offset if S else None
        if dst_start < src_start or (first is not None and dst_start > first):
            out["mismatched"] += 1
            note(f"{topic}-{p}: log start {src_start} on the source, {dst_start} on the destination")
        if kind != COMPACT:
            msgs, n = mt.compare_snapshots(p, S, D, limit=5)
            out["mismatched"] += n
            for m in msgs:
                note(f"{topic} {m}")
            sc, dc = Counter(map(_ident, S)), Counter(map(_ident, D))
            out["dup"] += sum((dc - sc).values())
            d_off = {r.offset for r in D}
            for r in S:
                if r.offset not in d_off:
                    lost_at.add((p, r.offset))
            out["fillers"] += sum(1 for r in D if _is_filler(r))
        else:
            so, do = {r.offset: r for r in S}, {r.offset: r for r in D}
            last_s = {r.key: r.offset for r in S}
            last_d = {r.key: r.offset for r in D}
            for off in sorted(so.keys() | do.keys()):
                a, b = so.get(off), do.get(off)
                if a is not None and b is not None:
                    if _ident(a) != _ident(b):
                        out["mismatched"] += 1
                        note(f"{topic}-{p} offset {off}: " + "; ".join(mt._record_diff(a, b)))
                elif a is not None:  # the destination's cleaner may have removed it since
                    if last_d.get(a.key, -1) <= off:
                        out["mismatched"] += 1
                        lost_at.add((p, off))
                        note(f"{topic}-{p} offset {off}: on the source only, no later record of its key "
                             f"on the destination")
                elif _is_filler(b):
                    out["fillers"] += 1  # documented: a single offset compaction emptied, after a copied record
                elif last_s.get(b.key, -1) <= off:  # the source's cleaner may have removed it since
                    out["mismatched"] += 1
                    out["dup"] += 1
                    note(f"{topic}-{p} offset {off}: on the destination only, no later record of its key "
                         f"on the source")
            # the newest record of every key: the same offset and content on both
            for key, off in last_s.items():
                if last_d.get(key) != off:
                    out["mismatched"] += 1
                    note(f"{topic}-{p}: newest record of key {key!r} at {off} on the source, "
                         f"{last_d.get(key)} on the destination")
    # every record the source acknowledged to the producer is on the destination
    dst_cache: dict[int, dict[int, mt.Stored]] = {}
    for t, p, off, value in acked:
        if t != src_topic or (upto is not None and off >= upto[p]):
            continue
        if p not in dst_cache:
            dst_cache[p] = {r.offset: r for r in mt.snapshot(destination, topic, p)}
        r = dst_cache[p].get(off)
        if r is None or r.value != value:
            if kind == COMPACT and r is None:
                continue  # compacted away: the per-key check above covers the newest
            if (p, off) not in lost_at:
                lost_at.add((p, off))
                note(f"{topic}-{p} offset {off}: acknowledged to the producer, "
                     f"{'missing' if r is None else 'different'} on the destination")
    out["lost"] = len(lost_at)
    return out


def tracebacks(m) -> int:
    """Tracebacks in every worker log of the Mirroring `m`."""
    n = 0
    for i in range(len(m.procs)):
        n += (m.tmp_path / f"worker-{i}.log").read_text(errors="replace").count("Traceback")
    return n


def report(state_dir: Path, kind: str, injected: int, results: list[dict], **extra) -> dict:
    """Print the FAULTS line of one case, append it to <state_dir>/faults.jsonl, and
    assert that nothing was lost, duplicated or misplaced."""
    row = {"kind": kind, "injected": injected,
           **{k: sum(r.get(k, 0) for r in results) for k in ("lost", "dup", "mismatched", "records", "fillers", "gaps")},
           **extra}
    detail = [d for r in results for d in r["detail"]]
    line = "FAULTS " + " ".join(f"{k}={v}" for k, v in row.items())
    print("\n" + line)
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "faults.jsonl", "a") as f:
        f.write(json.dumps({**row, "at": time.time(), "detail": detail}) + "\n")
    assert row["records"] > 0, line
    assert (row["lost"], row["dup"], row["mismatched"]) == (0, 0, 0), line + "\n  " + "\n  ".join(detail)
    return row


# ------------------------------------------------------------------ the worker

def destination_total(cluster, topics) -> int:
    return sum(sum(mt.log_end_offsets(cluster, t).values()) for t in topics)


def wait_copying(m, proc, topics, timeout: float = 60.0) -> None:
    """Until the destination grew (the worker `proc` copies), `proc` running throughout."""
    base = destination_total(m.destination, topics)
    def grew():
        assert proc.poll() is None, f"the worker exited ({proc.returncode}):\n{m.worker_log()[-3000:]}"
        return destination_total(m.destination, topics) > base
    mt.wait_until(grew, timeout, "the worker to copy new records", interval=0.1)


def heartbeat_at(m, proc) -> float | None:
    store = st.StateStore(m.destination.conf(), m.name)
    try:
        beats = [float(w.get("heartbeat_at") or 0) for w in store.snapshot().workers.values()
                 if w.get("pid") == proc.pid]
    finally:
        store.close()
    return max(beats, default=None)


def watch_nothing_lands(m, proc, topic: str, expected: dict[int, int], seconds: float) -> None:
    """For `seconds`: the destination log end offsets of `topic` stay `expected` while the
    worker runs, and it writes a new heartbeat meanwhile (its loop is alive: it could write)."""
    assert proc.poll() is None, m.worker_log()[-3000:]
    hb0 = mt.wait_until(lambda: heartbeat_at(m, proc), 15, "a heartbeat of the worker", interval=0.5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = mt.log_end_offsets(m.destination, topic, sorted(expected))
        assert now == expected, f"{topic}: writes landed after the stop: {expected} -> {now}\n{m.worker_log()[-3000:]}"
        assert proc.poll() is None, f"the worker exited during the watch:\n{m.worker_log()[-3000:]}"
        time.sleep(0.3)
    mt.wait_until(lambda: (h := heartbeat_at(m, proc)) is not None and h > hb0, 15,
                  "a new heartbeat of the worker during the watch", interval=0.5)
    assert proc.poll() is None


def sigkill(proc: subprocess.Popen) -> bool:
    """SIGKILL a worker; True when it was running at that moment."""
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(15)
    return alive


# ------------------------------------------------------------------ dedicated clusters

def up_cluster(local_kafka, name: str, proxy_port: int | None = None):
    """A cluster of the test's own (the shared fixtures are never broken on purpose)."""
    from tests.kafkatest import Cluster
    args = ["up", name, "--json", "--clean"] + (["--proxy-port", str(proxy_port)] if proxy_port else [])
    proc = local_kafka._run(*args, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kafka-local up {name} failed: {proc.stderr}")
    meta = json.loads(proc.stdout)
    return Cluster(name, meta["bootstrap"], meta["cluster_id"], managed=True, local=local_kafka)


def restart_cluster(local_kafka, cluster, down_seconds: float = 0.0, during=None) -> None:
    """Stop the broker (SIGTERM, data kept), optionally call `during()` or wait, start it again."""
    local_kafka.down(cluster.name)
    if during is not None:
        during()
    elif down_seconds:
        time.sleep(down_seconds)
    proc = local_kafka._run("up", cluster.name, check=False)
    assert proc.returncode == 0, f"kafka-local up {cluster.name} (restart) failed: {proc.stderr}"


# ------------------------------------------------------------------ Toxiproxy

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Toxiproxy:
    """A Toxiproxy 2.5.0 server on 127.0.0.1 (built by scripts/toxiproxy) and its HTTP API."""

    def __init__(self, log: Path):
        built = subprocess.run([str(ROOT / "scripts" / "toxiproxy"), "fetch"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
        if built.returncode != 0:
            raise RuntimeError(f"scripts/toxiproxy fetch failed: {built.stderr[-3000:]}")
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([built.stdout.strip(), "-host", "127.0.0.1", "-port", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, LOG_LEVEL="info"))
        try:
            mt.wait_until(self._answers, 30, "toxiproxy's API to answer")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"toxiproxy exited with {self.proc.returncode}"
        try:
            with urllib.request.urlopen(self.api + "/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def proxy(self, name: str, listen_port: int, upstream_port: int) -> None:
        self.call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{listen_port}",
                                       "upstream": f"127.0.0.1:{upstream_port}", "enabled": True})

    def add_toxic(self, proxy: str, name: str, type_: str, stream: str, **attributes) -> None:
        self.call("POST", f"/proxies/{proxy}/toxics", {"name": name, "type": type_, "stream": stream,
                                                       "toxicity": 1.0, "attributes": attributes})

    def remove_toxic(self, proxy: str, name: str) -> None:
        self.call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[dict]:
        return self.call("GET", f"/proxies/{proxy}/toxics")

    def clear(self, proxy: str) -> None:
        for t in self.toxics(proxy):
            self.remove_toxic(proxy, t["name"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
