"""The kafka-mirrors demo, end to end on two local Apache Kafka clusters that it starts
here and stops at the end (unless --keep). Run it through scripts/demo, which prepares
the virtualenv.

    link -> mirror (transactional and plain writes, so the source has offset gaps)
    -> worker copies -> every record is at the same offset on both clusters
    -> a consumer group commits on the source; the worker copies its offsets
    -> records keep flowing; the source broker is killed (SIGKILL)
    -> failover (timed) -> the destination takes writes -> the group resumes there
       at exactly the next record
    -> the old source comes back: the records it had that the destination never got
       are exactly the RPO that failover printed
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cache" / "demo-clusters"
ENV = dict(os.environ, KAFKA_LOCAL_STATE=str(STATE))
TOPIC = "orders"
PARTITIONS = 3


def conf(bootstrap: str, **extra) -> dict:
    """The demo's own clients: quiet (log_level 2), since the demo kills a broker on purpose
    and librdkafka would fill the screen with reconnect attempts."""
    return {"bootstrap.servers": bootstrap, "log_level": 2, **extra}


def say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def kafka_local(*args: str) -> str:
    return subprocess.run([str(ROOT / "scripts" / "kafka-local"), *args], env=ENV, check=True,
                          text=True, stdout=subprocess.PIPE).stdout


def km(registry: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kafka_mirrors", "--registry", str(registry), *args]
    print("$ kafka-mirrors " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: 'kafka-mirrors {' '.join(args)}' exited {proc.returncode}")
    return proc


def produce(bootstrap: str, n: int) -> None:
    """Plain idempotent writes and transactions (some aborted), so the source log has the
    gaps (markers, aborted records) a naive copier would close up."""
    plain = Producer(conf(bootstrap, **{"enable.idempotence": True, "linger.ms": 5}))
    # log_level 3: no warning while the new broker's transaction coordinator is still loading
    txn = Producer(conf(bootstrap, **{"transactional.id": "demo-txn", "log_level": 3}))
    txn.init_transactions(30)
    for i in range(n):
        plain.produce(TOPIC, key=f"customer-{i % 17}".encode(), value=f"order {i}".encode(),
                      partition=i % PARTITIONS)
        if i % 100 == 99:
            txn.begin_transaction()
            for p in range(PARTITIONS):
                txn.produce(TOPIC, key=b"txn", value=f"batch {i} p{p}".encode(), partition=p)
            txn.flush(10)
            (txn.abort_transaction if i % 300 == 299 else txn.commit_transaction)(30)
        plain.poll(0)
    assert plain.flush(30) == 0


def read(bootstrap: str, partition: int) -> list[tuple[int, bytes | None, bytes | None]]:
    c = Consumer(conf(bootstrap, **{"group.id": "demo-reader", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True}))
    c.assign([TopicPartition(TOPIC, partition, 0)])
    out = []
    while True:
        m = c.poll(10)
        if m is None or (m.error() and m.error().code() == -191):
            break
        out.append((m.offset(), m.key(), m.value()))
    c.close()
    return out


def log_end_offsets(bootstrap: str) -> list[int]:
    c = Consumer(conf(bootstrap, **{"group.id": "demo-offsets"}))
    try:
        return [c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in range(PARTITIONS)]
    finally:
        c.close()


def committed(bootstrap: str, group: str) -> list[int]:
    c = Consumer(conf(bootstrap, **{"group.id": group}))
    try:
        return [tp.offset for tp in c.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)]
    finally:
        c.close()


def stopped_at(bootstrap: str) -> dict[int, dict]:
    """What failover recorded per partition in the state store (on the destination)."""
    from kafka_mirrors.state import StateStore
    store = StateStore(conf(bootstrap), "dr")
    try:
        parts = store.get_mirror(TOPIC).stopped["partitions"]
    finally:
        store.close()
    return {int(p): v for p, v in parts.items()}


class SteadyProducer(threading.Thread):
    """Writes to the source at a steady rate until told to stop or the source dies; counts
    the writes the source acknowledged, per partition."""

    def __init__(self, bootstrap: str, rate: int = 400):
        super().__init__(daemon=True)
        self.producer = Producer(conf(bootstrap, **{"enable.idempotence": True,
                                  "linger.ms": 0, "message.timeout.ms": 3000,
                                  "log_level": 0}))  # it is about to lose its broker: no noise
        self.rate, self.stop, self.acked, self.n = rate, threading.Event(), [0] * PARTITIONS, 0

    def _delivered(self, err, msg) -> None:
        if err is None:
            self.acked[msg.partition()] += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.producer.produce(TOPIC, key=f"late-{self.n}".encode(), value=f"late order {self.n}".encode(),
                                  partition=self.n % PARTITIONS, on_delivery=self._delivered)
            self.n += 1
            self.producer.poll(1.0 / self.rate)
        self.producer.flush(5)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="leave the clusters running")
    ap.add_argument("--records", type=int, default=3000)
    a = ap.parse_args()
    t0 = time.monotonic()
    worker = None
    tmp = Path(tempfile.mkdtemp(prefix="kafka-mirrors-demo-"))
    registry = tmp / "links.toml"
    try:
        say("starting two local Apache Kafka clusters (KRaft, 127.0.0.1)")
        src = json.loads(kafka_local("up", "source", "--clean", "--json"))
        dst = json.loads(kafka_local("up", "destination", "--clean", "--json"))
        print(f"source       {src['bootstrap']}  cluster id {src['cluster_id']}")
        print(f"destination  {dst['bootstrap']}  cluster id {dst['cluster_id']}")

        say(f"producing {a.records} records to '{TOPIC}' on the source (plain writes and transactions)")
        admin = AdminClient(conf(src["bootstrap"]))
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(15)
        produce(src["bootstrap"], a.records)

        say("link the clusters and mirror the topic")
        km(registry, "link", "create", "dr", "--source", src["bootstrap"], "--destination", dst["bootstrap"],
           "--config", "consumer.offset.sync.ms=1000")
        km(registry, "mirror", "create", TOPIC, "--link", "dr")

        say("run the worker")
        log = open(tmp / "worker.log", "wb")
        t_copy = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", "--registry", str(registry),
                                   "run", "--link", "dr"], stdout=log, stderr=subprocess.STDOUT)

        def wait_for(what: str, done, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                if time.monotonic() > deadline or (worker is not None and worker.poll() is not None):
                    print((tmp / "worker.log").read_text()[-3000:], file=sys.stderr)
                    raise SystemExit(f"demo: {what}")
                time.sleep(0.3)

        want = log_end_offsets(src["bootstrap"])
        wait_for("the mirror did not catch up", lambda: log_end_offsets(dst["bootstrap"]) == want)
        copy_s = time.monotonic() - t_copy
        km(registry, "describe", "--link", "dr")

        say("every record at the same offset on both clusters")
        total, source_records = 0, {}
        for p in range(PARTITIONS):
            s_recs, d_recs = read(src["bootstrap"], p), read(dst["bootstrap"], p)
            same = s_recs == d_recs
            gaps = sum(1 for x, y in zip(s_recs, s_recs[1:]) if y[0] - x[0] > 1)
            print(f"partition {p}: {len(s_recs)} records, {gaps} offset gaps on the source, "
                  f"identical on the destination: {'yes' if same else 'NO'}")
            if not same:
                raise SystemExit("demo: destination differs from source")
            total += len(s_recs)
            source_records[p] = {o: (k, v) for o, k, v in s_recs}

        say("consumer group 'billing' reads part of the topic on the source and commits")
        c = Consumer(conf(src["bootstrap"], **{"group.id": "billing", "enable.auto.commit": False,
                      "isolation.level": "read_committed"}))
        for p in range(PARTITIONS):  # about half of each partition
            c.assign([TopicPartition(TOPIC, p, 0)])
            for _ in range(len(source_records[p]) // 2):
                m = c.poll(10)
                if m is None or m.error():
                    raise SystemExit("demo: the consumer could not read the source")
            c.commit(asynchronous=False)
        c.close()
        group_offsets = committed(src["bootstrap"], "billing")
        print(f"committed offsets on the source: {dict(enumerate(group_offsets))}")
        wait_for("the worker did not copy the group's offsets",
                 lambda: committed(dst["bootstrap"], "billing") == group_offsets, timeout=60)
        print(f"committed offsets on the destination: {dict(enumerate(committed(dst['bootstrap'], 'billing')))}"
              " (copied by the worker, no translation)")

        say("records keep flowing into the source ... and the source broker dies (SIGKILL)")
        steady = SteadyProducer(src["bootstrap"])
        steady.start()
        time.sleep(3)
        os.kill(src["pid"], signal.SIGKILL)
        print(f"killed the source broker (pid {src['pid']}) with {sum(steady.acked)} late records acknowledged")
        steady.stop.set()
        steady.join(15)

        say("fail over to the destination")
        t_fail = time.monotonic()
        km(registry, "failover", TOPIC, "--link", "dr", "--yes")
        failover_s = time.monotonic() - t_fail
        point = stopped_at(dst["bootstrap"])

        say("the destination topic takes writes now")
        dp = Producer(conf(dst["bootstrap"], **{"enable.idempotence": True}))
        dp.produce(TOPIC, key=b"after-failover", value=b"written on the new primary", partition=0)
        if dp.flush(15) != 0:
            raise SystemExit("demo: the destination refused a write after failover")
        print("wrote 1 record to partition 0 of the destination")

        say("consumer group 'billing' resumes on the destination")
        c = Consumer(conf(dst["bootstrap"], **{"group.id": "billing", "enable.auto.commit": False,
                      "isolation.level": "read_committed"}))
        c.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])  # at the group's committed offsets
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(seen) < PARTITIONS and time.monotonic() < deadline:
            m = c.poll(1)
            if m is None or m.error() or m.partition() in seen:
                continue
            seen[m.partition()] = m.offset()
            # the next record: the source's first committed record at or after the group's
            # offset (the offset itself may hold a transaction marker or an aborted record)
            recs = source_records[m.partition()]
            nxt = min((o for o in recs if o >= group_offsets[m.partition()]), default=None)
            same = nxt == m.offset() and recs[nxt] == (m.key(), m.value())
            print(f"partition {m.partition()}: group offset {group_offsets[m.partition()]}, first record read "
                  f"at offset {m.offset()}: the next record the group had not read on the source: "
                  f"{'yes' if same else 'NO'}")
            if not same:
                raise SystemExit("demo: the group did not resume at exactly the next record")
        c.close()

        say("the old source comes back: what did the destination never get?")
        kafka_local("up", "source", "--json")
        src_end = log_end_offsets(src["bootstrap"])
        dst_point = [point[p]["destination_log_end_offset"] for p in range(PARTITIONS)]
        missing = sum(max(0, s - d) for s, d in zip(src_end, dst_point))
        reported = sum(point[p]["records_possibly_lost"] or 0 for p in range(PARTITIONS))
        print(f"source log end offsets {src_end}, failover point {dst_point}: {missing} record(s) never copied")
        print(f"failover reported {reported}: what the source held by the worker's last fetch; "
              f"{missing - reported} more were acknowledged by the source after that fetch, "
              f"while it was dying")
        if missing < reported:
            raise SystemExit("demo: failover reported more missing records than there are")

        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        worker = None
        say(f"summary: {total} records copied in {copy_s:.1f} s with identical offsets; "
            f"failover took {failover_s:.1f} s with the source down; RPO {missing} record(s) "
            f"({reported} known to the worker when the source died); group 'billing' resumed at exactly the next record; "
            f"demo took {time.monotonic() - t0:.1f} s")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
        if not a.keep:
            kafka_local("down", "--all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
