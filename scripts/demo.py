"""The kafka-mirrors demo: two local Apache Kafka clusters, started here and stopped at the
end (unless --keep). Run it through scripts/demo, which prepares the virtualenv."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer, TopicPartition, Consumer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cache" / "demo-clusters"
ENV = dict(os.environ, KAFKA_LOCAL_STATE=str(STATE))


def say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def kafka_local(*args: str) -> str:
    return subprocess.run([str(ROOT / "scripts" / "kafka-local"), *args], env=ENV, check=True,
                          text=True, stdout=subprocess.PIPE).stdout


def up(name: str) -> dict:
    return json.loads(kafka_local("up", name, "--clean", "--json"))


def show(label: str, bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    cluster = admin.describe_cluster().result(10)
    md = admin.list_topics(timeout=10)
    print(f"{label:<12} {bootstrap:<20} cluster id {cluster.cluster_id}")
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-show"})
    for t in sorted(n for n in md.topics if not n.startswith("__")):
        for p in sorted(md.topics[t].partitions):
            low, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
            print(f"{'':<12} topic {t} partition {p}: log start offset {low}, log end offset {high}")
    if topic not in md.topics:
        print(f"{'':<12} (no topic {topic!r} here)")
    c.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="leave the clusters running")
    ap.add_argument("--records", type=int, default=1000)
    a = ap.parse_args()
    t0 = time.monotonic()
    try:
        say("starting two local Apache Kafka clusters (KRaft, 127.0.0.1)")
        src, dst = up("source"), up("destination")
        print(f"source       {src['bootstrap']}  ({src['ready_seconds']} s to answer)")
        print(f"destination  {dst['bootstrap']}  ({dst['ready_seconds']} s to answer)")
        topic = "orders"
        say(f"producing {a.records} records to {topic!r} on the source")
        admin = AdminClient({"bootstrap.servers": src["bootstrap"]})
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(15)
        p = Producer({"bootstrap.servers": src["bootstrap"], "enable.idempotence": True})
        for i in range(a.records):
            p.produce(topic, key=f"customer-{i % 17}".encode(), value=f"order {i}".encode())
            p.poll(0)
        assert p.flush(30) == 0
        say("both clusters")
        show("source", src["bootstrap"], topic)
        show("destination", dst["bootstrap"], topic)
        say(f"done in {time.monotonic() - t0:.1f} s")
    finally:
        if not a.keep:
            kafka_local("down", "--all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
