"""Instructions per copied record of the copy path, counted by callgrind, beside a baseline
version of the code measured in the same run.

Wall-clock rates on a 2-core machine shared with both brokers swing by 2x from one run to
the next; instruction counts do not (callgrind counts every thread of the process, the
librdkafka threads included). The copy path alone runs here: SourceFeeds, SinkProducers and
a PartitionCopier per partition over real brokers (scripts/kafka-local, state in
.cache/bench-instructions), without the control loop, the state store or the jobs thread.
Each version copies a preloaded topic twice under callgrind, once with 0 records and once
with --records; the difference divided by --records is its cost per record (start-up,
imports and metadata left out).

    .venv/bin/python bench/copy_instructions.py --baseline-ref 3eab6ca~12 --records 60000

The baseline is checked out with `git worktree` into a temporary folder and imported from
there (PYTHONPATH); the current tree is the other row. Needs valgrind.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cache" / "bench-instructions"
TOPIC = "bench-instructions"


def harness(src: str, dst: str, topic: str, dest_topic: str, partitions: int, total: int) -> None:
    """Copy `total` records of `topic` into a new `dest_topic` with the copy path alone."""
    import logging

    from confluent_kafka.admin import AdminClient, NewTopic

    from kafka_mirrors.kafka.admin import Admin
    from kafka_mirrors.kafka.partition import (KafkaPartitionSink, KafkaPartitionSource, OffsetReader,
                                               SinkProducers, SourceFeeds)
    from kafka_mirrors.replication.copier import PartitionCopier
    sconf, dconf = {"bootstrap.servers": src}, {"bootstrap.servers": dst}
    admin = AdminClient(dconf)  # kept: a client dropped at once fails its futures
    for f in admin.create_topics([NewTopic(dest_topic, partitions, 1)]).values():
        f.result(timeout=60)
    time.sleep(1)
    sadm, dadm = Admin(sconf, "source"), Admin(dconf, "destination")
    so, do = OffsetReader(sadm.client, "source", 30), OffsetReader(dadm.client, "destination", 30)
    feeds, producers = SourceFeeds(sconf, "[bench]"), SinkProducers(dconf, "bench", "[bench]")
    log = logging.getLogger("bench")
    copiers = []
    for p in range(partitions):
        c = PartitionCopier(KafkaPartitionSource(feeds, so, topic, p),
                            KafkaPartitionSink(producers, do, dadm, dconf, dest_topic, p, False),
                            label=f"p{p}", logger=log)
        c.start()
        copiers.append(c)
    try:  # the worker's GC setting, where the version has one
        from kafka_mirrors.worker.loop import _quiet_gc
        _quiet_gc()
    except ImportError:
        pass
    deadline = time.monotonic() + 600
    while sum(c.progress.next_offset for c in copiers) < total:
        if time.monotonic() > deadline:
            raise SystemExit("copy did not finish within 600 s")
        for c in copiers:
            c.step(0.0)
        producers.poll(0)
        feeds.pump(0.01)
    print(json.dumps({"copied": sum(c.progress.next_offset for c in copiers)}), flush=True)
    os._exit(0)  # no orderly close: its cost is not the copy's


def count(pythonpath: str, src: str, dst: str, dest_topic: str, partitions: int, total: int) -> int:
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
           "--harness", src, dst, TOPIC, dest_topic, str(partitions), str(total)]
    r = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True, text=True, timeout=1800)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"callgrind run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    shutil.rmtree(out.parent, ignore_errors=True)
    return int(m.group(1))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--harness":
        a = sys.argv[2:]
        harness(a[0], a[1], a[2], a[3], int(a[4]), int(a[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-ref", required=True, help="git ref of the baseline version")
    ap.add_argument("--records", type=int, default=60000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--record-size", type=int, default=1024)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        ap.error("valgrind is needed")
    env = {**os.environ, "KAFKA_LOCAL_STATE": str(STATE)}
    local = [str(ROOT / "scripts" / "kafka-local")]
    base = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline_ref],
                   check=True, capture_output=True)
    try:
        up = {n: json.loads(subprocess.run(local + ["up", n, "--clean", "--json"], env=env, check=True,
                                           capture_output=True, text=True).stdout.strip().splitlines()[-1])
              for n in ("instr-source", "instr-destination")}
        src, dst = up["instr-source"]["bootstrap"], up["instr-destination"]["bootstrap"]
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": src})
        for f in admin.create_topics([NewTopic(TOPIC, args.partitions, 1)]).values():
            try:
                f.result(timeout=60)
            except Exception:  # noqa: BLE001 - a re-run finds it: a new topic name is not needed
                pass
        p = Producer({"bootstrap.servers": src, "enable.idempotence": True, "linger.ms": 5})
        value = os.urandom(args.record_size)
        for i in range(args.records):
            while True:
                try:
                    p.produce(TOPIC, value, partition=i % args.partitions)
                    break
                except BufferError:
                    p.poll(0.1)
        assert p.flush(60) == 0
        rows = []
        stamp = int(time.time())
        for name, path in ((f"baseline {args.baseline_ref}", str(base)), ("this tree", str(ROOT))):
            zero = count(path, src, dst, f"d-{stamp}-{len(rows)}-0", args.partitions, 0)
            full = count(path, src, dst, f"d-{stamp}-{len(rows)}-n", args.partitions, args.records)
            rows.append((name, zero, full, (full - zero) / args.records))
        print(f"\nCopy path instructions (callgrind, all threads): {args.records:,} records of "
              f"{args.record_size} B over {args.partitions} partitions")
        print(f"{'version':<32} {'start-up Ir':>14} {'with copy Ir':>14} {'Ir/record':>10} {'vs baseline':>12}")
        for name, zero, full, per in rows:
            print(f"{name:<32} {zero:>14,} {full:>14,} {per:>10,.0f} {per / rows[0][3]:>11.2f}x")
    finally:
        subprocess.run(local + ["down", "--all"], env=env, capture_output=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
