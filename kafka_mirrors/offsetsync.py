"""Consumer-offset sync (docs/architecture.md section 4): copy the committed offsets of the source's
consumer groups to the destination, for mirrored topics only.

    source: ListConsumerGroups, ListConsumerGroupOffsets --+
                                                           +--> plan (pure) --> AlterConsumerGroupOffsets
    destination: ListConsumerGroups (states), committed    |                    (destination)
                 offsets, log end offsets -----------------+

Offsets are identical on both sides, so nothing is translated: a group's committed offset
for source topic S partition p becomes its committed offset for the mirror of S, partition
p. Rules: groups matching an include regex and no exclude regex (full match); a group
with members on the destination (state not Empty/Dead) is skipped, it is in use there; an
offset is never set beyond the destination partition's log end offset (it is clamped to
it); only offsets that differ from what the destination group has are written.

Used by the worker every consumer.offset.sync.ms and by promote one last time. The
decision part (`select_groups`, `wanted_offsets`, `plan_writes`) takes plain data and is
unit tested without a broker.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kafka_mirrors.errors import KafkaMirrorsError

log = logging.getLogger("kafka_mirrors.offsetsync")

# Destination group states in which nobody consumes there: those may be written.
IDLE_STATES = ("EMPTY", "DEAD")

TopicPartitionKey = tuple[str, int]


# ---------------------------------------------------------------- pure decisions

def matches(name: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Selected when some include regex matches the whole name and no exclude regex does."""
    return (any(re.fullmatch(p, name) for p in include)
            and not any(re.fullmatch(p, name) for p in exclude))


# the groups of kafka-mirrors workers (worker/membership.py): never copied
WORKER_GROUP_PREFIX = "kafka-mirrors-workers."


def select_groups(source_groups: Iterable[str], destination_states: Mapping[str, str],
                  include: Iterable[str], exclude: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """(groups to sync, {group: why skipped}). `destination_states` maps the groups the
    destination knows to their state name (EMPTY, STABLE, ...); a group it does not know
    is free. Groups the patterns do not select are neither synced nor reported."""
    include, exclude = list(include), list(exclude)
    chosen, skipped = [], {}
    for group in sorted(set(source_groups)):
        if group.startswith(WORKER_GROUP_PREFIX) or not matches(group, include, exclude):
            continue  # kafka-mirrors' own worker groups (of a link whose destination is our source)
        state = destination_states.get(group)
        if state is not None and state.upper() not in IDLE_STATES:
            skipped[group] = f"active on the destination ({state.upper()})"
            continue
        chosen.append(group)
    return chosen, skipped


def wanted_offsets(source_committed: Mapping[TopicPartitionKey, int],
                   mirrors: Mapping[str, str]) -> dict[TopicPartitionKey, int]:
    """The source group's committed offsets of mirrored topics, under the mirror topic
    names ({mirror topic: source topic}; one source topic may have several mirrors).
    Offsets that are not real offsets (no commit: -1001) are left out."""
    by_source: dict[str, list[str]] = {}
    for mirror, source in mirrors.items():
        by_source.setdefault(source, []).append(mirror)
    out = {}
    for (topic, partition), offset in source_committed.items():
        if offset is None or offset < 0:
            continue
        for mirror in by_source.get(topic, ()):
            out[(mirror, partition)] = offset
    return out


@dataclass
class GroupWrites:
    writes: dict[TopicPartitionKey, int] = field(default_factory=dict)
    clamped: int = 0      # offsets lowered to the destination's log end offset
    unchanged: int = 0    # already what the destination group has


def plan_writes(wanted: Mapping[TopicPartitionKey, int], destination_committed: Mapping[TopicPartitionKey, int],
                destination_ends: Mapping[TopicPartitionKey, int]) -> GroupWrites:
    """What to write for one group: each wanted offset clamped to the destination
    partition's log end offset (a partition the destination lacks is left out), and only
    where the destination group's committed offset differs."""
    out = GroupWrites()
    for tp, offset in sorted(wanted.items()):
        end = destination_ends.get(tp)
        if end is None:
            continue
        if offset > end:
            offset = end
            out.clamped += 1
        if destination_committed.get(tp) == offset:
            out.unchanged += 1
            continue
        out.writes[tp] = offset
    return out


# ---------------------------------------------------------------- the sync

class SyncFence:
    """Keeps the worker's offset sync from writing a mirror's group offsets after the
    worker acknowledged that mirror's stop (a failover): a sync that began while the
    mirror was ACTIVE would otherwise write when its turn came, however late, over the
    offsets the group's consumers commit on the destination after the failover.

    The control loop closes a mirror as soon as it sees its state leave ACTIVE and PAUSED
    (`set_open`), before it can acknowledge the stop; the sync writes a mirror's offsets
    only while it is open (`begin`, then `end` once the write answered); and the control
    loop holds back the acknowledgement of a mirror whose write is in flight (`writing`)
    to a later turn. The control loop never waits on the write itself. One thread (the
    worker's jobs) syncs, so a mirror has at most one write in flight."""

    def __init__(self):
        self._lock = threading.Lock()
        self._closed: set[str] = set()
        self._writing: set[str] = set()

    def set_open(self, topic: str, is_open: bool) -> None:
        with self._lock:
            if is_open:
                self._closed.discard(topic)
            else:
                self._closed.add(topic)

    def begin(self, topics: Iterable[str]) -> set[str]:
        """The topics whose offsets may be written now (each open), marked as being written."""
        with self._lock:
            allowed = {t for t in topics if t not in self._closed}
            self._writing |= allowed
            return allowed

    def end(self, topics: Iterable[str]) -> None:
        with self._lock:
            self._writing -= set(topics)

    def writing(self) -> set[str]:
        with self._lock:
            return set(self._writing)


@dataclass
class SyncSummary:
    at: float = 0.0
    groups: dict[str, int] = field(default_factory=dict)    # group -> offsets written
    skipped: dict[str, str] = field(default_factory=dict)   # group -> why not touched
    errors: dict[str, str] = field(default_factory=dict)    # group -> what failed
    offsets_written: int = 0
    offsets_clamped: int = 0

    def to_json(self) -> dict:
        return {"at": self.at, "groups": dict(sorted(self.groups.items())),
                "skipped": dict(sorted(self.skipped.items())), "errors": dict(sorted(self.errors.items())),
                "offsets_written": self.offsets_written, "offsets_clamped": self.offsets_clamped}

    def line(self) -> str:
        return (f"{len(self.groups)} group(s) synced, {self.offsets_written} offset(s) written "
                f"({self.offsets_clamped} clamped to the destination log end offset), "
                f"{len(self.skipped)} skipped, {len(self.errors)} failed")


def _state_name(state) -> str:
    name = getattr(state, "name", None)
    return str(name if name is not None else state).upper()


def _group_states(admin) -> dict[str, str]:
    from kafka_mirrors.kafka.admin import await_result
    fut = admin.client.list_consumer_groups(request_timeout=admin.timeout)
    res = await_result(fut, "listing consumer groups", admin.label, admin.timeout)
    return {g.group_id: _state_name(g.state) for g in res.valid}


def _committed(admin, groups: list[str]) -> dict[str, dict[TopicPartitionKey, int]]:
    """Every committed offset of each group (all futures first, then awaited)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    from kafka_mirrors.kafka.admin import await_result
    futures = {g: admin.client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)],
                                                           request_timeout=admin.timeout)[g]
               for g in groups}
    out = {}
    for g, fut in futures.items():
        res = await_result(fut, f"listing the committed offsets of group '{g}'", admin.label, admin.timeout)
        out[g] = {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions or []
                  if tp.error is None}
    return out


def _log_end_offsets(admin, tps: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from kafka_mirrors.errors import NotFoundError
    from kafka_mirrors.kafka.admin import await_result
    tps = sorted(set(tps))
    if not tps:
        return {}
    futures = admin.client.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in tps},
                                        request_timeout=admin.timeout)
    out = {}
    for tp, fut in futures.items():
        try:
            out[(tp.topic, tp.partition)] = await_result(
                fut, f"listing the log end offset of {tp.topic}-{tp.partition}", admin.label, admin.timeout).offset
        except NotFoundError:
            continue  # the mirror lacks the partition (not added yet): nothing to set there
    return out


def _alter(admin, group: str, writes: dict[TopicPartitionKey, int]) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from kafka_mirrors.errors import KafkaOperationError
    from kafka_mirrors.kafka.admin import await_result
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for (t, p), o in sorted(writes.items())])
    fut = admin.client.alter_consumer_group_offsets([request], request_timeout=admin.timeout)[group]
    res = await_result(fut, f"setting the committed offsets of group '{group}'", admin.label, admin.timeout)
    bad = [tp for tp in res.topic_partitions or [] if tp.error is not None]
    if bad:
        raise KafkaOperationError(f"setting the committed offsets of group '{group}' on {admin.label} failed "
                                  f"for {bad[0].topic}-{bad[0].partition}: {bad[0].error.str()}")


def sync_consumer_offsets(src_admin, dst_admin, link, mirrors: Mapping[str, str],
                          clock=time.time, fence: SyncFence | None = None) -> SyncSummary:
    """Copy the committed offsets of the link's selected groups for `mirrors` ({mirror
    topic: source topic}) from the source to the destination. Listing failures raise
    (nothing was written); a group whose write fails is named in `errors`, the others
    are still written. With a `fence`, a mirror stopped since `mirrors` was taken gets
    no write (SyncFence)."""
    summary = SyncSummary(at=clock())
    if not mirrors:
        return summary
    include = link.option("consumer.offset.groups.include")
    exclude = link.option("consumer.offset.groups.exclude")
    source_groups = _group_states(src_admin)
    if not any(matches(g, include, exclude) for g in source_groups):
        return summary
    groups, summary.skipped = select_groups(source_groups, _group_states(dst_admin), include, exclude)
    wanted = {g: wanted_offsets(c, mirrors) for g, c in _committed(src_admin, groups).items()}
    wanted = {g: w for g, w in wanted.items() if w}
    if not wanted:
        return summary
    ends = _log_end_offsets(dst_admin, {tp for w in wanted.values() for tp in w})
    have = _committed(dst_admin, sorted(wanted))
    for group, want in sorted(wanted.items()):
        plan = plan_writes(want, have.get(group, {}), ends)
        summary.offsets_clamped += plan.clamped
        writes = plan.writes
        held: set[str] = set()
        if fence is not None and writes:
            held = fence.begin({t for t, _p in writes})
            writes = {k: o for k, o in writes.items() if k[0] in held}
        try:
            if not writes:
                continue
            _alter(dst_admin, group, writes)
        except KafkaMirrorsError as exc:
            # e.g. a consumer joined the group on the destination a moment ago
            summary.errors[group] = str(exc)
            continue
        finally:
            if fence is not None:
                fence.end(held)
        summary.groups[group] = len(writes)
        summary.offsets_written += len(writes)
    return summary
