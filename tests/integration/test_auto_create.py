"""Auto-created mirrors on real brokers (issue 5, must-show 5): with the link's
auto-create options and a worker running, a new matching source topic is mirrored and
copied without any command; a non-matching one is not; a matching one whose destination
topic is not empty is refused, and the refusal is logged once."""
from __future__ import annotations

import time
import uuid

import pytest

from kafka_mirrors import state as st
from tests import mirrortools as mt

pytestmark = pytest.mark.integration


def mirrors_of(dr) -> dict[str, st.MirrorRecord]:
    store = st.StateStore(dr.destination.conf(), dr.name)
    try:
        return store.snapshot().mirrors
    finally:
        store.close()


def test_matching_source_topic_is_mirrored_without_a_command(mirroring, cli, source, destination):
    dr = mirroring
    run = uuid.uuid4().hex[:8]
    r = cli("link", "alter", dr.name, "--config", "auto.create.mirror.topics.enable=true",
            "--config", f"auto.create.mirror.topics.include=auto-{run}-.*",
            "--config", f"auto.create.mirror.topics.exclude=auto-{run}-skip")
    assert r.exit_code == 0, r.stderr
    # matching, but its destination topic exists and holds a record: refused (logged once)
    taken = f"auto-{run}-taken"
    source.create_topic(taken, partitions=1)
    destination.create_topic(taken, partitions=1)
    destination.produce(taken, [b"someone else's"], partition=0)
    dr.start_worker()

    matching = source.create_topic(f"auto-{run}-orders", partitions=2)
    excluded = source.create_topic(f"auto-{run}-skip", partitions=1)
    other = source.create_topic(f"other-{run}", partitions=1)
    mt.produce_records(source, matching, mt.make_records(300, seed=5), partitions=2)
    for t in (excluded, other):
        source.produce(t, [b"not mirrored %d" % i for i in range(10)], partition=0)

    mt.wait_until(lambda: matching in mirrors_of(dr), 60,
                  f"an auto-created mirror of {matching} (worker log: {dr.worker_log()[-1500:]})")
    rec = mirrors_of(dr)[matching]
    assert (rec.state, rec.source_topic, rec.partitions) == (st.ACTIVE, matching, 2)
    dr.wait_caught_up(matching)
    mt.assert_identical(source, destination, matching, matching, partitions=2)
    # more records follow without any command
    mt.produce_records(source, matching, mt.make_records(50, seed=6), partitions=2)
    dr.wait_caught_up(matching)
    mt.assert_identical(source, destination, matching, matching, partitions=2)

    time.sleep(6)  # more than one auto-create period after the mirror appeared
    mirrors = mirrors_of(dr)
    assert excluded not in mirrors and other not in mirrors and taken not in mirrors
    admin = destination.admin()
    topics = admin.list_topics(timeout=15).topics
    assert excluded not in topics and other not in topics
    log = (dr.tmp_path / "worker-0.log").read_text(errors="replace")
    assert log.count(f"source topic '{taken}' matches the auto-create patterns but was not mirrored") == 1, log
    assert "is not empty" in log
