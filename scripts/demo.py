"""The kafka-mirrors demo, end to end on two local Apache Kafka clusters that it starts
here and stops at the end (unless --keep). Run it through scripts/demo, which prepares
the virtualenv.

    link -> mirror (transactional and plain writes, so the source has offset gaps)
    -> worker copies -> every record is at the same offset on both clusters
    -> a consumer group's committed offset means the same record on both sides
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cache" / "demo-clusters"
ENV = dict(os.environ, KAFKA_LOCAL_STATE=str(STATE))
TOPIC = "orders"
PARTITIONS = 3


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
    plain = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    txn = Producer({"bootstrap.servers": bootstrap, "transactional.id": "demo-txn"})
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
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-reader", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True})
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
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-offsets"})
    try:
        return [c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in range(PARTITIONS)]
    finally:
        c.close()


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
        admin = AdminClient({"bootstrap.servers": src["bootstrap"]})
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(15)
        produce(src["bootstrap"], a.records)

        say("link the clusters and mirror the topic")
        km(registry, "link", "create", "dr", "--source", src["bootstrap"], "--destination", dst["bootstrap"])
        km(registry, "mirror", "create", TOPIC, "--link", "dr")

        say("run the worker")
        log = open(tmp / "worker.log", "wb")
        t_copy = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", "--registry", str(registry),
                                   "run", "--link", "dr"], stdout=log, stderr=subprocess.STDOUT)
        want = log_end_offsets(src["bootstrap"])
        deadline = time.monotonic() + 120
        while log_end_offsets(dst["bootstrap"]) != want:
            if time.monotonic() > deadline or worker.poll() is not None:
                print((tmp / "worker.log").read_text()[-3000:], file=sys.stderr)
                raise SystemExit("demo: the mirror did not catch up")
            time.sleep(0.3)
        copy_s = time.monotonic() - t_copy
        km(registry, "describe", "--link", "dr")

        say("every record at the same offset on both clusters")
        total = 0
        for p in range(PARTITIONS):
            s_recs, d_recs = read(src["bootstrap"], p), read(dst["bootstrap"], p)
            same = s_recs == d_recs
            gaps = sum(1 for x, y in zip(s_recs, s_recs[1:]) if y[0] - x[0] > 1)
            print(f"partition {p}: {len(s_recs)} records, {gaps} offset gaps on the source, "
                  f"identical on the destination: {'yes' if same else 'NO'}")
            if not same:
                raise SystemExit("demo: destination differs from source")
            total += len(s_recs)

        say("a consumer group's offset means the same record on both clusters")
        p, committed = 0, read(src["bootstrap"], 0)[len(read(src["bootstrap"], 0)) // 2][0]
        for label, boot in (("source", src["bootstrap"]), ("destination", dst["bootstrap"])):
            c = Consumer({"bootstrap.servers": boot, "group.id": "billing", "isolation.level": "read_committed"})
            c.assign([TopicPartition(TOPIC, p, committed)])
            m = c.poll(10)
            print(f"{label:<12} group 'billing' resuming at offset {committed}: {m.value().decode()!r}")
            c.close()

        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        worker = None
        km(registry, "describe", "--check", "--max-lag", "0")
        say(f"summary: {total} records copied in {copy_s:.1f} s, offsets identical, "
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
