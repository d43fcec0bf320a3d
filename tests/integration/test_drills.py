"""Fail back on real brokers, and the two DR drills of issue 5 (tests/drills.py): planned
migration with reverse-and-start, and disaster (source broker killed) with
truncate-and-restore. Plus the refusals: a diverged old source, a wrong reverse link, no
terminal without --yes."""
from __future__ import annotations

import json
import uuid

import pytest

from kafka_mirrors import state as st
from tests import drills
from tests import mirrortools as mt
from tests.mirroring import Mirroring

pytestmark = pytest.mark.integration


def _stopped_mirror(mirroring, cli, source, partitions: int = 2, records: int = 50, how: str = "promote") -> str:
    topic = mirroring.new_mirror(partitions=partitions)
    drills.produce_phase(source, topic, "before", records, partitions)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)
    args = ["--timeout", "60"] if how == "promote" else []
    r = cli(how, topic, "--link", mirroring.name, "--yes", *args)
    assert r.exit_code == 0, r.stderr
    return topic


def test_drill_1_planned_migration(cli, mirroring, source, destination):
    ops = drills.Ops(cli, mirroring.name, source, destination)
    drills.drill_planned_migration(ops, mirroring)


def test_drill_2_disaster(cli, registry_path, local_kafka, destination, tmp_path):
    src = local_kafka.up(f"drill-src-{uuid.uuid4().hex[:8]}")
    m = None
    try:
        m = Mirroring(cli, registry_path, src, destination, tmp_path)
        ops = drills.Ops(cli, m.name, src, destination)
        result = drills.drill_disaster(ops, m, local_kafka, src)
        print(result)
    finally:
        if m is not None:
            m.stop_all()
        local_kafka.down(src.name)


def test_reverse_refuses_a_diverged_old_source_then_truncate_and_restore_saves_it(cli, mirroring, source,
                                                                                  destination):
    topic = _stopped_mirror(mirroring, cli, source)
    stop = mt.log_end_offsets(destination, topic)
    # an application kept writing to the old source after the promote
    source.produce(topic, [b"late-1", b"late-2"], partition=1)
    r = cli("reverse-and-start", topic, "--link", mirroring.name, "--yes")
    assert r.exit_code == 1
    assert f"partition 1: log end offset {stop[1] + 2} is past the stop offset {stop[1]}" in r.stderr
    assert f"kafka-mirrors truncate-and-restore {topic} --link {mirroring.name}" in r.stderr
    reverse = f"{mirroring.name}-reverse"
    assert "created reverse link" not in r.stdout  # a refusal changes nothing, not even the registry
    assert reverse not in cli("link", "list").stdout
    assert topic not in st.StateStore(source.conf(), reverse).snapshot().mirrors
    assert drills.mirror_record(destination, mirroring.name, topic).stopped.get("reversed") is None

    r = cli("truncate-and-restore", topic, "--link", mirroring.name, "--yes", "--output", "json")
    assert r.exit_code == 0, r.stderr
    view = json.loads(r.stdout)
    row = view["topics"][0]
    assert (row["action"], row["records_saved"], row["state"]) == ("re-created", 2, st.ACTIVE)
    assert f"created reverse link '{reverse}'" not in r.stdout  # JSON only
    assert view["reverse_link"] == {"name": reverse, "created": True, "source": destination.bootstrap,
                                    "destination": source.bootstrap}
    assert view["next"] == [f"kafka-mirrors run --link {reverse}"]
    saved = mt.snapshot(source, row["side_topic"], 1)
    assert [s.value for s in saved] == [b"late-1", b"late-2"]
    assert [dict(s.headers)["kafka-mirrors.diverged.offset"] for s in saved] == \
           [str(stop[1]).encode(), str(stop[1] + 1).encode()]
    assert mt.snapshot(source, row["side_topic"], 0) == []

    back = Mirroring.for_link(mirroring, reverse, source=destination, destination=source)
    destination.produce(topic, [b"new-primary"], partition=0)
    back.start_worker()
    back.wait_caught_up(topic)
    mt.assert_identical(destination, source, topic, topic, partitions=2)
    # once failed back, a second attempt is refused
    r = cli("truncate-and-restore", topic, "--link", mirroring.name, "--yes")
    assert r.exit_code == 1 and "was failed back already (truncate-and-restore)" in r.stderr


def test_truncate_and_restore_without_a_tail_keeps_the_topic(cli, mirroring, source, destination):
    topic = _stopped_mirror(mirroring, cli, source, how="failover")
    r = cli("mirror", "truncate-and-restore", topic, "--link", mirroring.name, "--yes")
    assert r.exit_code == 0, r.stderr
    assert f"{topic}: nothing past the stop offsets; no side topic" in r.stdout
    assert "continuing at its log end offset" in r.stdout
    rec = drills.mirror_record(source, f"{mirroring.name}-reverse", topic)
    assert (rec.state, rec.source_topic, rec.reason) == (st.ACTIVE, topic, "truncate-and-restore")


def test_reverse_and_pause_records_a_paused_mirror(cli, mirroring, source, destination):
    topic = _stopped_mirror(mirroring, cli, source, partitions=1)
    r = cli("reverse-and-pause", topic, "--link", mirroring.name, "--reverse-link", "back-" + mirroring.name,
            "--yes")
    assert r.exit_code == 0, r.stderr
    assert f"next: kafka-mirrors mirror resume {topic} --link back-{mirroring.name}" in r.stdout
    assert drills.mirror_record(source, "back-" + mirroring.name, topic).state == st.PAUSED


def test_a_reverse_link_that_is_not_the_reverse_is_refused(cli, mirroring, source, destination):
    topic = _stopped_mirror(mirroring, cli, source, partitions=1)
    same_way = "same-way-" + mirroring.name
    r = cli("link", "create", same_way, "--source", source.bootstrap, "--destination", destination.bootstrap)
    assert r.exit_code == 0, r.stderr
    r = cli("reverse-and-start", topic, "--link", mirroring.name, "--reverse-link", same_way, "--yes")
    assert r.exit_code == 1
    assert f"link '{same_way}' is not the reverse of '{mirroring.name}'" in r.stderr
    assert drills.mirror_record(destination, mirroring.name, topic).stopped.get("reversed") is None


def test_truncate_and_restore_needs_yes_without_a_terminal(cli, mirroring, source):
    topic = _stopped_mirror(mirroring, cli, source, partitions=1, how="failover")
    r = cli("truncate-and-restore", topic, "--link", mirroring.name)
    assert r.exit_code == 2
    assert "confirmation needed but there is no terminal; pass --yes" in r.stderr
    assert f"{mirroring.name}-reverse" not in cli("link", "list").stdout


def test_truncate_and_restore_finishes_after_a_crash_past_the_deletion(cli, mirroring, source, destination,
                                                                       monkeypatch):
    from kafka_mirrors import failback
    from kafka_mirrors.errors import KafkaUnavailableError

    topic = _stopped_mirror(mirroring, cli, source, partitions=1, how="failover")
    source.produce(topic, [b"tail-1", b"tail-2", b"tail-3"], partition=0)
    real = failback._create_topic

    def crash(admin, name, *args, **kw):
        if name == topic:  # the side topic is made; the re-creation of the old topic "crashes"
            raise KafkaUnavailableError("simulated crash")
        return real(admin, name, *args, **kw)

    monkeypatch.setattr(failback, "_create_topic", crash)
    r = cli("truncate-and-restore", topic, "--link", mirroring.name, "--yes")
    assert r.exit_code == 1 and "simulated crash" in r.stderr
    restore = drills.mirror_record(destination, mirroring.name, topic).stopped["restore"]
    assert restore["saved"] == {"0": 3}
    assert topic not in source.admin().list_topics(timeout=10).topics  # the old topic was deleted

    monkeypatch.setattr(failback, "_create_topic", real)
    r = cli("truncate-and-restore", topic, "--link", mirroring.name, "--yes", "--output", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["topics"][0]
    # the tail saved by the first run, not saved twice
    assert (row["side_topic"], row["records_saved"], row["action"]) == (restore["side_topic"], 3, "re-created")
    assert [s.value for s in mt.snapshot(source, restore["side_topic"], 0)] == [b"tail-1", b"tail-2", b"tail-3"]
    back = Mirroring.for_link(mirroring, f"{mirroring.name}-reverse", source=destination, destination=source)
    back.start_worker()
    back.wait_caught_up(topic)
    mt.assert_identical(destination, source, topic, topic, partitions=1)


def test_truncate_and_restore_re_creates_a_deleted_old_topic(cli, mirroring, source, destination):
    topic = _stopped_mirror(mirroring, cli, source, partitions=2, how="failover")
    admin = source.admin()  # the handle must outlive its future
    admin.delete_topics([topic])[topic].result(30)
    mt.wait_until(lambda: topic not in source.admin().list_topics(timeout=10).topics, 30, "the deletion")
    r = cli("reverse-and-start", topic, "--link", mirroring.name, "--yes")
    assert r.exit_code == 1
    assert "was failed over, not promoted" in r.stderr
    r = cli("truncate-and-restore", topic, "--link", mirroring.name, "--yes", "--output", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["topics"][0]
    assert (row["action"], row["side_topic"], row["records_saved"]) == ("re-created", None, 0)
    back = Mirroring.for_link(mirroring, f"{mirroring.name}-reverse", source=destination, destination=source)
    back.start_worker()
    back.wait_caught_up(topic)
    mt.assert_identical(destination, source, topic, topic, partitions=2)


def test_truncate_and_restore_deletes_nothing_when_the_old_topic_takes_writes_meanwhile(
        cli, mirroring, source, destination, monkeypatch):
    from kafka_mirrors import failback
    topic = _stopped_mirror(mirroring, cli, source, how="failover")
    source.produce(topic, [b"tail-1"], partition=0)
    real_copy = failback.copy_tails

    def copy_while_an_app_writes(*args, **kwargs):
        saved = real_copy(*args, **kwargs)
        source.produce(topic, [b"written-during-the-save"], partition=1)  # a producer nobody stopped
        return saved

    monkeypatch.setattr(failback, "copy_tails", copy_while_an_app_writes)
    before = mt.log_end_offsets(source, topic)
    r = cli("truncate-and-restore", topic, "--link", mirroring.name, "--yes")
    assert r.exit_code == 1
    assert "took writes while its tail was being saved" in r.stderr and "nothing was deleted" in r.stderr
    # the old topic and every record in it are still there
    assert mt.log_end_offsets(source, topic) == {0: before[0], 1: before[1] + 1}
    assert [r.value for r in mt.snapshot(source, topic, 1)][-1] == b"written-during-the-save"

    # once the producers stopped, a re-run saves the whole tail and only then deletes
    monkeypatch.setattr(failback, "copy_tails", real_copy)
    r = cli("truncate-and-restore", topic, "--link", mirroring.name, "--yes", "--output", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["topics"][0]
    assert row["action"] == "re-created"
    side_values = {p: [s.value for s in mt.snapshot(source, row["side_topic"], p)] for p in (0, 1)}
    assert side_values[1][-1] == b"written-during-the-save" and b"tail-1" in side_values[0]
