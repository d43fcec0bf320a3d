"""The state store on a real broker (issue 9): reads cost what was written since the last
read, not the link's history, and the state topic carries the settings that keep
compaction up with the workers' heartbeats and progress."""
from __future__ import annotations

import uuid

import pytest

from kafka_mirrors import state as st

pytestmark = pytest.mark.integration

MIRRORS = 300
ONE_BY_ONE = 100  # conditional changes made one at a time (each is three round trips)
HISTORY = 20_000


def _link() -> str:
    return f"scale-{uuid.uuid4().hex[:8]}"


def _history(link: str) -> list[tuple[str, object]]:
    """HISTORY records with distinct keys (nothing for the cleaner to drop meanwhile):
    MIRRORS mirror records, then progress of their partitions in the older per-partition
    format."""
    items: list[tuple[str, object]] = [
        (st.mirror_key(link, f"m{i:03d}"),
         st.MirrorRecord(link=link, topic=f"m{i:03d}", source_topic=f"m{i:03d}", partitions=1).to_json())
        for i in range(MIRRORS)]
    p = 0
    while len(items) < HISTORY:
        items.append((st.progress_key(link, f"m{p % MIRRORS:03d}", p // MIRRORS), {"next_offset": p}))
        p += 1
    return items


def test_a_second_read_and_many_state_changes_do_not_read_the_history_again(destination):
    link = _link()
    writer = st.StateStore(destination.conf(), link)
    reader = st.StateStore(destination.conf(), link)
    try:
        writer._put_many(_history(link))
        first = reader.snapshot()
        assert len(first.mirrors) == MIRRORS and len(first.progress) == HISTORY - MIRRORS
        assert reader.full_reads == 1 and reader.records_read >= HISTORY
        read = reader.records_read

        writer.put_progress_many({("m000", 0): {"next_offset": 1}, ("m000", 1): {"next_offset": 2}})
        writer.set_state("m001", st.PAUSED, reason="pause")
        second = reader.snapshot()
        assert reader.full_reads == 1
        assert 2 <= reader.records_read - read < 100  # the new records (and a few of other tests' at most)
        assert second.mirrors["m001"].state == st.PAUSED and first.mirrors["m001"].state == st.ACTIVE
        # the per-slot records replaced those partitions' older per-partition ones
        got = {p: v["next_offset"] for (t, p), v in second.progress.items() if t == "m000"}
        assert (got[0], got[1]) == (1, 2) and first.progress[("m000", 0)]["next_offset"] == 0
        assert second.end_offset > first.end_offset

        # conditional state changes in a row, by the store that read: each reads its
        # predecessor's write, never the history
        read = reader.records_read
        for i in range(ONE_BY_ONE):
            current = second.mirrors[f"m{i:03d}"]
            reader.set_state(current.topic, st.PENDING_STOPPED, reason="failover", current=current)
        assert reader.full_reads == 1
        assert reader.records_read - read < 3 * ONE_BY_ONE
        # and one batch of all of them: one more small read
        read = reader.records_read
        pending = reader.snapshot()
        out = reader.set_state_many(list(pending.mirrors.values()), st.STOPPED, reason="failed over")
        assert all(r.state == st.STOPPED for r in out.values()) and len(out) == MIRRORS
        assert reader.records_read - read < 2 * MIRRORS + 100
        # a conditional write on what is now stale is refused, naming the state found
        with pytest.raises(st.ConflictError, match="is STOPPED now"):
            reader.set_state("m000", st.STOPPED, current=pending.mirrors["m000"])

        # a fresh store (another host) still sees everything in one full read
        other = st.StateStore(destination.conf(), link)
        try:
            snap = other.snapshot()
            assert {r.state for r in snap.mirrors.values()} == {st.STOPPED} and other.full_reads == 1
        finally:
            other.close()

        writer.delete_mirror("m000")
        assert "m000" not in reader.snapshot().mirrors
        assert not any(t == "m000" for t, _ in reader.snapshot().progress) and reader.full_reads == 1
    finally:
        writer.close()
        reader.close()


def test_the_state_topic_has_the_compaction_settings(destination):
    from kafka_mirrors.kafka import topics
    store = st.StateStore(destination.conf(), _link())
    try:
        # an earlier version created it with cleanup.policy=compact only: brought up to date
        store.ensure_topic()
        admin = store._admin()
        topics.alter_topic_configs(admin, st.STATE_TOPIC, {"segment.ms": "604800000"})
        again = st.StateStore(destination.conf(), store.link)
        again.ensure_topic()
        entries = topics.describe_topic_configs(admin, st.STATE_TOPIC)
        assert {k: entries[k].value for k in st.STATE_TOPIC_CONFIGS} == st.STATE_TOPIC_CONFIGS
    finally:
        store.close()
