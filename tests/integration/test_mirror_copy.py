"""The offset-preserving copy on real brokers (issue 4's "must show" list, DESIGN.md §4).

Each test makes a link and a mirror through the CLI, runs the worker as a real process
(`kafka-mirrors run`, so it can be SIGKILLed), and then reads both clusters record by
record. CI sizes are small enough to finish quickly and still prove the case; the `heavy`
marker runs the issue's full sizes (`scripts/test -m heavy`).
"""
from __future__ import annotations

import random
import signal
import time

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewPartitions

from kafka_mirrors import state as st
from tests import mirrortools as mt
from tests.mirroring import unique

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ 1. exact copy

@pytest.mark.parametrize("n", [pytest.param(6_000, id="ci"),
                               pytest.param(200_000, id="full", marks=pytest.mark.heavy)])
def test_exact_copy_of_awkward_records(mirroring, source, destination, n):
    topic = source.create_topic(unique("exact"), partitions=6)
    records = mt.make_records(n, seed=1, big_every=n // 6)  # six 1 MiB values
    mt.produce_records(source, topic, records, partitions=6)
    mirroring.mirror(topic)
    worker = mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    mt.assert_identical(source, destination, topic, topic, partitions=6)
    # what a read_uncommitted reader sees is the same too: a dense source needs no filler
    mt.assert_identical(source, destination, topic, topic, partitions=6, isolation="read_uncommitted")
    assert mirroring.state(topic).state == st.ACTIVE
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


# ------------------------------------------------------------------ 2. deleted head

def test_deleted_head_keeps_offsets(mirroring, source, destination):
    topic = source.create_topic(unique("head"), partitions=1)
    source.produce(topic, [f"r{i}".encode() for i in range(300)], partition=0)
    admin = source.admin()
    fut = admin.delete_records([TopicPartition(topic, 0, 120)])
    list(fut.values())[0].result(15)
    mirroring.mirror(topic)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    low, high = mt.watermarks(destination, topic, 0)
    assert (low, high) == (120, 300)
    mt.assert_identical(source, destination, topic, topic, partitions=1)


# ------------------------------------------------------------------ 3. compacted source

def _compacted_source(source) -> str:
    topic = source.create_topic(unique("compacted"), partitions=1, config={
        "cleanup.policy": "compact", "segment.ms": "200", "min.cleanable.dirty.ratio": "0.001",
        "delete.retention.ms": "100", "min.compaction.lag.ms": "0"})
    # key k<i> is written i times in a row: compaction leaves gaps of 1, 2, 3, ... offsets
    values = []
    for i in range(1, 40):
        for j in range(i % 5 + 1):
            values.append((f"k{i}".encode(), f"v{i}-{j}".encode()))
    p = source.producer(**{"enable.idempotence": True})
    for k, v in values:
        p.produce(topic, key=k, value=v, partition=0)
    assert p.flush(30) == 0

    rolls = iter(range(10**6))

    def cleaned():
        # keep rolling the active segment so the cleaner can reach every record; unique
        # keys, so the roll records themselves are never compacted away later
        p.produce(topic, key=f"roll-{next(rolls)}".encode(), value=b"roll", partition=0)
        p.flush(10)
        snap = mt.snapshot(source, topic, 0)
        keys = [s.key for s in snap if not s.key.startswith(b"roll-")]
        # fully cleaned: each k-key once, so the source no longer changes under the copy
        return len(keys) == len(set(keys)) == 39
    mt.wait_until(cleaned, 120, "the source's log cleaner to finish", interval=1.0)
    offs = [s.offset for s in mt.snapshot(source, topic, 0)]
    gaps = {b - a - 1 for a, b in zip(offs, offs[1:]) if b - a > 1}
    assert 1 in gaps and any(g >= 2 for g in gaps), f"cleaning left gaps {sorted(gaps)}"
    return topic


def test_compacted_source_after_cleaning(mirroring, source, destination):
    topic = _compacted_source(source)
    mirroring.mirror(topic)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    # the source's first offset was compacted away: with no record before it, the mirror
    # spends it with a filler and DeleteRecords, so its log start may be one further on
    mt.assert_identical(source, destination, topic, topic, partitions=1, same_log_start=False)
    # and the mirror is compact-only again after that DeleteRecords
    from kafka_mirrors.kafka import topics as kt
    from kafka_mirrors.kafka.admin import Admin
    overrides = kt.topic_overrides(Admin(destination.conf(), "destination"), topic)
    assert overrides["cleanup.policy"] == "compact" and "retention.ms" not in overrides


# ------------------------------------------------------------------ 4. transactional source

def _transactional_source(source, partitions: int = 2, rounds: int = 60, seed: int = 4) -> str:
    topic = source.create_topic(unique("txn"), partitions=partitions)
    rnd = random.Random(seed)
    producers = [source.producer(**{"transactional.id": unique("tx")}) for _ in range(2)]
    for p in producers:
        p.init_transactions(30)
    plain = source.producer(**{"enable.idempotence": True})
    for r in range(rounds):
        tp = producers[r % 2]
        tp.begin_transaction()
        for i in range(rnd.randint(1, 5)):
            tp.produce(topic, value=f"tx{r}-{i}".encode(), key=f"k{i}".encode(),
                       partition=rnd.randrange(partitions))
        tp.flush(10)
        for i in range(rnd.randint(0, 3)):
            plain.produce(topic, value=f"plain{r}-{i}".encode(), partition=rnd.randrange(partitions))
        plain.flush(10)
        if rnd.random() < 0.4:
            tp.abort_transaction(30)
        else:
            tp.commit_transaction(30)
    return topic


def test_transactional_source(mirroring, source, destination):
    topic = _transactional_source(source)
    mirroring.mirror(topic)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    mt.assert_identical(source, destination, topic, topic, partitions=2, same_log_start=False)
    for p in range(2):
        values = [s.value for s in mt.snapshot(destination, topic, p)]
        aborted_on_source = {s.value for s in mt.snapshot(source, topic, p, "read_uncommitted")} - \
            {s.value for s in mt.snapshot(source, topic, p)}
        assert not aborted_on_source & set(values), "an aborted record is visible on the destination"


# ------------------------------------------------------------------ 5. SIGKILL during a big copy

@pytest.mark.parametrize("n,kills", [pytest.param(120_000, 10, id="ci"),
                                     pytest.param(500_000, 10, id="full", marks=pytest.mark.heavy)])
def test_sigkill_restarts_resume_exactly(mirroring, source, destination, n, kills):
    topic = source.create_topic(unique("kill"), partitions=3)
    mt.produce_records(source, topic, mt.make_records(n, seed=5), partitions=3)
    mirroring.mirror(topic)
    mid_copy = mirroring.kill_during_copy([topic], kills, random.Random(55))
    assert mid_copy == kills, f"only {mid_copy} of {kills} kills landed during the copy"
    mirroring.start_worker()
    mirroring.wait_caught_up(topic, timeout=300)
    mt.assert_identical(source, destination, topic, topic, partitions=3)
    assert mirroring.state(topic).state == st.ACTIVE


# ------------------------------------------------------------------ 6. foreign write

def test_foreign_write_fails_the_mirror(mirroring, source, destination):
    topic = source.create_topic(unique("foreign"), partitions=1)
    source.produce(topic, [b"a", b"b", b"c"], partition=0)
    mirroring.mirror(topic)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    destination.produce(topic, [b"intruder"], partition=0)  # lands at offset 3
    mt.wait_until(lambda: mirroring.state(topic).state == st.FAILED, 60, "the mirror to turn FAILED")
    rec = mirroring.state(topic)
    assert rec.failed["offset"] == 3, rec.failed
    assert "3" in rec.reason
    # the worker writes nothing more to it
    source.produce(topic, [b"d", b"e"], partition=0)
    time.sleep(3)
    assert mt.watermarks(destination, topic, 0, "read_uncommitted")[1] == 4


# ------------------------------------------------------------------ 7. new source partitions

def test_partitions_added_to_source_are_copied(mirroring, source, destination):
    topic = source.create_topic(unique("grow"), partitions=2)
    mt.produce_records(source, topic, mt.make_records(200, seed=7), partitions=2)
    mirroring.mirror(topic)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    admin = source.admin()
    admin.create_partitions([NewPartitions(topic, 4)])[topic].result(15)
    mt.produce_records(source, topic, mt.make_records(400, seed=8), partitions=4)
    mt.wait_until(lambda: len(mt.log_end_offsets(destination, topic)) == 4, 60,
                  "the destination to have 4 partitions")
    mirroring.wait_caught_up(topic)
    mt.assert_identical(source, destination, topic, topic, partitions=4)


# ------------------------------------------------------------------ 8. SIGKILL with gaps

def test_sigkill_during_gapped_copies_leaves_every_mirror_identical(mirroring, source, destination, record_property):
    """Kill the worker while it copies a compacted and a transactional topic. Afterwards
    every partition is identical and no mirror is FAILED: every transaction the copier
    opens holds only what the source shows nothing at (fillers, or a marker alone), so a
    kill inside one leaves what was planned there (DESIGN.md section 4, crash safety; before
    marker-only transactions, a kill inside a one-record transaction failed its mirror)."""
    topics = [_compacted_source(source), _transactional_source(source, partitions=2, rounds=150, seed=8)]
    for t in topics:
        mirroring.mirror(t)
    kills = 10
    mid_copy = mirroring.kill_during_copy(topics, kills, random.Random(88))
    assert mid_copy == kills, f"only {mid_copy} of {kills} kills landed during the copy: " \
        f"{ {t: (mirroring.state(t).state, mirroring.state(t).reason) for t in topics} }"
    mirroring.start_worker()
    for t in topics:
        def settled():
            rec = mirroring.state(t)
            assert rec.state != st.FAILED, f"mirror {t} FAILED: {rec.reason}"
            src = mt.log_end_offsets(source, t)
            return src == mt.log_end_offsets(destination, t, sorted(src)) or None
        mt.wait_until(settled, 180, f"mirror {t} to catch up")
        mt.assert_identical(source, destination, t, t, same_log_start=False)
    record_property("kills", mid_copy)


# ------------------------------------------------------------------ source topic identity

@pytest.mark.parametrize("recreate", [False, True], ids=["deleted", "re-created"])
def test_deleted_or_recreated_source_topic_fails_the_mirror(mirroring, source, destination, recreate):
    topic = source.create_topic(unique("ident"), partitions=1)
    source.produce(topic, [b"a", b"b"], partition=0)
    mirroring.mirror(topic)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    admin = source.admin()
    admin.delete_topics([topic], operation_timeout=15)[topic].result(20)
    if recreate:
        mt.wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 30, "the topic to be gone")
        source.create_topic(topic, partitions=1)
        source.produce(topic, [b"from another topic"], partition=0)
    mt.wait_until(lambda: mirroring.state(topic).state == st.FAILED, 60, "the mirror to turn FAILED")
    assert f"source topic '{topic}'" in mirroring.state(topic).reason
    # nothing of the new topic is mixed into the mirror
    assert [s.value for s in mt.snapshot(destination, topic, 0)] == [b"a", b"b"]


# ------------------------------------------------------------------ topic config sync

def test_topic_configs_follow_the_source(mirroring, cli, source, destination):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from kafka_mirrors.kafka import topics as kt
    from kafka_mirrors.kafka.admin import Admin

    topic = source.create_topic(unique("cfg"), partitions=1, config={
        "retention.ms": "86400000", "max.message.bytes": "2000000", "message.timestamp.type": "LogAppendTime"})
    r = cli("link", "alter", mirroring.name, "--config", "topic.config.sync.ms=1000")
    assert r.exit_code == 0, r.stderr
    r = cli("mirror", "create", topic, "--link", mirroring.name, "--config", "segment.ms=3600000")
    assert r.exit_code == 0, r.stderr
    mirroring.start_worker()
    admin = source.admin()
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "172800000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    admin.incremental_alter_configs([resource])[resource].result(15)
    dst = Admin(destination.conf(), "destination")

    def synced():
        o = kt.topic_overrides(dst, topic)
        return o if o.get("retention.ms") == "172800000" and "max.message.bytes" not in o else None
    overrides = mt.wait_until(synced, 60, "the mirror's configs to follow the source")
    assert overrides["message.timestamp.type"] == "CreateTime"   # must differ from the source
    assert overrides["segment.ms"] == "3600000"                  # the operator's --config stays


# ------------------------------------------------------------------ retention follows the source

def test_log_start_offset_follows_source_retention(mirroring, source, destination):
    """DeleteRecords on the source after the copy: the mirror's log start offset follows
    (the copier looks every 30 s while idle, so this waits up to a minute)."""
    topic = source.create_topic(unique("retention"), partitions=1)
    source.produce(topic, [f"r{i}".encode() for i in range(100)], partition=0)
    mirroring.mirror(topic)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    admin = source.admin()
    list(admin.delete_records([TopicPartition(topic, 0, 60)]).values())[0].result(15)
    mt.wait_until(lambda: mt.watermarks(destination, topic, 0)[0] == 60, 75,
                  "the destination's log start offset to reach 60")
    mt.assert_identical(source, destination, topic, topic, partitions=1)
