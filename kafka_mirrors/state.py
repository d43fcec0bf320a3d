"""Mirror state store: the state of every mirror of a link, the workers' heartbeats and
their per-partition progress, kept on the DESTINATION cluster in one compacted topic
(`__kafka_mirrors_state`, 1 partition) so it stays authoritative when the source is lost
and every host with the link definition sees the same states (docs/architecture.md sections 1-2).

Keys (UTF-8) and JSON values:

    mirror/<link>/<topic>                   MirrorRecord (topic = mirror topic on the destination)
    worker/<link>/<worker_id>               {worker_id, host, pid, heartbeat_at, serving:
                                             {topic: "0-99,105"}} (older: a partitions list)
    progress/<link>/<topic>/s<k>            {partitions: {"<p>": {next_offset, records_copied,
                                             fillers_written, offsets_lost_to_source_retention,
                                             updated_at?}}, updated_at}: the partitions of one
                                             mirror in slot k (slot_of), written by the worker
                                             that owns the slot (several workers per link)
    progress/<link>/<topic>                 the same for every partition of a mirror, as
                                             single-worker versions wrote it
    progress/<link>/<topic>/<partition>     one partition's dict, as older workers wrote it
    ack/<link>/<topic>/<worker_id>          {state, at}: a worker saw a stop

A null value (tombstone) deletes a key. Writes use an idempotent acks=all producer and are
flushed before `put_*` returns. Compaction keeps the newest value per key, so a read folds
records in offset order and the last one wins.

Reads are incremental: a store keeps the snapshot it folded and, on the next read, folds
only the records from that snapshot's end offset up to the current high watermark. It
reads from the log start again when it cannot trust the cache (the log start moved past
it, the log is shorter than it, or it was idle for longer than FULL_READ_AFTER_IDLE_S,
well within delete.retention.ms, so no tombstone is missed). The cost of a read is then
the records written since the last one, not the history of the link; the topic settings
(STATE_TOPIC_CONFIGS) make compaction keep a full read small too.
"""
from __future__ import annotations

import copy
import json
import logging
import time
import uuid
import zlib
from dataclasses import dataclass, field
from dataclasses import fields as dc_fields
from typing import Any, Iterable

from kafka_mirrors.errors import (
    ConflictError,
    KafkaMirrorsError,
    KafkaOperationError,
    KafkaUnavailableError,
    NotFoundError,
)

STATE_TOPIC = "__kafka_mirrors_state"
# Compaction that keeps up with a worker's heartbeats and progress: a segment rolls every
# minute and is cleaned within a minute more (plus the broker's log.cleaner.backoff.ms,
# 15 s by default) once a tenth of the log is superseded. All four are topic configs of
# Kafka 4.1 (segment.ms has no 1 MiB floor like segment.bytes).
STATE_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
    "max.compaction.lag.ms": "60000",
}
# A cache idle this long is read again from the start: compaction drops a tombstone only
# delete.retention.ms (24 h by default) after cleaning it, so a reader behind by less than
# that cannot miss a deletion.
FULL_READ_AFTER_IDLE_S = 3600.0

ACTIVE = "ACTIVE"
PAUSED = "PAUSED"
PENDING_STOPPED = "PENDING_STOPPED"
STOPPED = "STOPPED"
FAILED = "FAILED"
STATES = (ACTIVE, PAUSED, PENDING_STOPPED, STOPPED, FAILED)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- records and keys

@dataclass
class MirrorRecord:
    link: str
    topic: str                      # the mirror topic's name on the destination
    source_topic: str
    state: str = ACTIVE
    reason: str | None = None
    failed: dict | None = None      # {partition, offset, message} when FAILED
    source_topic_id: str | None = None
    partitions: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    stopped: dict | None = None     # what promote/failover recorded (e.g. last offsets)
    config_overrides: dict | None = None  # `mirror create --config` values, kept by the config sync
    # ACL bindings kafka-mirrors created for this mirror and has not deleted (readonly.py)
    acls: list | None = None
    # a conditional write: the state-topic offset of the record this one was made from.
    # Folded only if that record is still the mirror's newest at this record's place in
    # the log, else skipped (a compare-and-set in log order; see StateSnapshot.apply)
    based_on: int | None = None

    def to_json(self) -> dict:
        # shallow (asdict deep-copies, a cost at 1,000 records a batch): json.dumps does the rest
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    @classmethod
    def from_json(cls, value: dict) -> "MirrorRecord":
        # unknown keys are ignored so an older reader survives a newer writer's records
        known = {f.name for f in dc_fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


_RECORD_FIELDS = tuple(f.name for f in dc_fields(MirrorRecord))


def mirror_key(link: str, topic: str) -> str:
    return f"mirror/{link}/{topic}"


def worker_key(link: str, worker_id: str) -> str:
    return f"worker/{link}/{worker_id}"


def progress_key(link: str, topic: str, partition: int) -> str:
    """One partition's progress, the key older workers wrote (still read and deleted)."""
    return f"progress/{link}/{topic}/{partition}"


def mirror_progress_key(link: str, topic: str) -> str:
    """Every partition's progress of one mirror in one record (single-worker versions)."""
    return f"progress/{link}/{topic}"


# A link's mirror partitions are shared among its workers in SLOTS slots: the units of
# assignment of the worker group (worker/membership.py) and of the transactional ids
# (kafka.partition.SinkProducers). The mapping never changes.
SLOTS = 16


# Slot i of a topic's run goes to slot _SPREAD[i], so that consecutive partitions land on
# different workers for both shapes of assignment the group's cooperative-sticky assignor
# makes (measured on Kafka 4.1 with librdkafka): members that join together get the slots
# round robin (two workers: even and odd), a member joining a running group takes a block
# of consecutive slots (two workers: 0-7 and 8-15). The table was searched for the lowest
# excess over an even share for runs of 2 to 12 partitions, from every start, over both
# shapes for 2 to 4 workers: never more than one partition over. With slots in plain order
# a 6-partition topic came out 5/1 over two workers of a running group; a bit reversal
# fixed that shape and made the round robin one 5/1 instead.
_SPREAD = (13, 0, 7, 2, 15, 10, 5, 12, 1, 6, 11, 4, 9, 14, 3, 8)


def slot_of(topic: str, partition: int) -> int:
    """Up to 16 partitions of one topic each have a slot of their own, from a start its
    name picks (crc32), and consecutive ones are spread over the slot blocks the group's
    assignor gives the workers, so even a small topic is shared evenly."""
    return _SPREAD[(zlib.crc32(topic.encode()) + partition) % SLOTS]


def slot_progress_key(link: str, topic: str, slot: int) -> str:
    """The progress of one mirror's partitions in one slot (what workers write now)."""
    return f"progress/{link}/{topic}/s{slot}"


def ack_key(link: str, topic: str, worker_id: str) -> str:
    return f"ack/{link}/{topic}/{worker_id}"


def format_partition_ranges(partitions: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8": how a heartbeat names the partitions it serves
    (10,000 partition names every 2 s would make the state topic grow fast)."""
    out: list[str] = []
    ps = sorted(set(int(p) for p in partitions))
    i = 0
    while i < len(ps):
        j = i
        while j + 1 < len(ps) and ps[j + 1] == ps[j] + 1:
            j += 1
        out.append(str(ps[i]) if i == j else f"{ps[i]}-{ps[j]}")
        i = j + 1
    return ",".join(out)


def parse_partition_ranges(text: str) -> list[int]:
    """The inverse of format_partition_ranges; ValueError on anything else."""
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        lo, hi = int(first), int(last) if sep else int(first)
        if lo < 0 or hi < lo:
            raise ValueError(f"bad partition range {part!r}")
        out.extend(range(lo, hi + 1))
    return out


def worker_partitions(worker: dict) -> set[tuple[str, int]]:
    """The (topic, partition)s a heartbeat says its worker serves: the "serving" map of
    ranges per mirror, or the "partitions" list older workers wrote."""
    out = set()
    serving = worker.get("serving")
    if isinstance(serving, dict):
        for topic, ranges in serving.items():
            try:
                out.update((topic, p) for p in parse_partition_ranges(str(ranges)))
            except ValueError:
                log.warning("skipping malformed partition ranges %r in a heartbeat", ranges)
    for p in worker.get("partitions") or []:
        if isinstance(p, dict) and "topic" in p and "partition" in p:
            out.add((p["topic"], int(p["partition"])))
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            out.add((p[0], int(p[1])))
        elif isinstance(p, str) and p.rpartition("-")[2].isdigit():
            topic, _, partition = p.rpartition("-")  # "topic-3", as older workers report
            out.add((topic, int(partition)))
    return out


def encode(value: Any) -> bytes | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


@dataclass
class StateSnapshot:
    """Everything the store holds for one link, as of `end_offset` (the high watermark the
    read went up to; `follow(snapshot.end_offset)` continues without a gap).

    `progress` maps (topic, partition) to that partition's dict whichever key format it
    came in: a per-mirror record replaces every partition of its mirror written before it
    in the per-partition format (its tombstone uncovers them again, as it must: tombstones
    are compacted away in time; delete_mirror deletes both)."""

    link: str
    mirrors: dict[str, MirrorRecord] = field(default_factory=dict)
    workers: dict[str, dict] = field(default_factory=dict)
    progress: dict[tuple[str, int], dict] = field(default_factory=dict)
    acks: dict[tuple[str, str], dict] = field(default_factory=dict)
    end_offset: int = 0
    # the state-topic offset of each mirror's newest record folded in (tombstones too)
    mirror_offsets: dict[str, int] = field(default_factory=dict)
    rejected: set[int] = field(default_factory=set)  # offsets of mirror records that lost
    # the two progress formats, each last-writer-wins per key, and the order of their last
    # writes: a per-mirror record hides the per-partition records written before it. This
    # depends on each key's last record only, so a compacted log folds to the same view.
    _legacy: dict[tuple[str, int], tuple[int, dict]] = field(default_factory=dict, repr=False, compare=False)
    _legacy_parts: dict[str, set[int]] = field(default_factory=dict, repr=False, compare=False)
    _per_mirror: dict[str, tuple[int, dict[int, dict]]] = field(default_factory=dict, repr=False, compare=False)
    _per_slot: dict[tuple[str, int], tuple[int, dict[int, dict]]] = field(default_factory=dict, repr=False,
                                                                           compare=False)
    _seq: int = field(default=0, repr=False, compare=False)

    @property
    def legacy_progress(self) -> set[tuple[str, int]]:
        """The (topic, partition)s whose per-partition key (older workers) is alive."""
        return set(self._legacy)

    def apply(self, key: str, value: Any, offset: int | None = None) -> bool:
        """Fold one record in (value None deletes). Records of other links and keys this
        version does not know are skipped; returns whether the record was used.

        A mirror record with `based_on` is a compare-and-set: it is folded only if the
        mirror's newest record folded so far is the one at offset `based_on` (or none is
        known: compaction took it), and skipped otherwise — another write came first.
        Every reader folds the log in the same order, so all agree on who won, and the
        writer learns it by reading up to its own write (StateStore.set_state_many)."""
        kind, sep, rest = key.partition("/")
        prefix = self.link + "/"
        if not sep or not rest.startswith(prefix):
            return False
        rest = rest[len(prefix):]
        try:
            if kind == "mirror":
                if offset is not None:
                    based_on = value.get("based_on") if isinstance(value, dict) else None
                    have = self.mirror_offsets.get(rest)
                    if based_on is not None and have is not None and have != based_on:
                        self.rejected.add(offset)
                        return False  # lost a compare-and-set
                rec = None if value is None else MirrorRecord.from_json(value)
                _put(self.mirrors, rest, rec)
                if offset is not None:
                    self.mirror_offsets[rest] = offset
            elif kind == "worker":
                _put(self.workers, rest, value)
            elif kind == "progress":
                # topic names cannot hold '/': "<topic>/s<k>" per slot, "<topic>" per
                # mirror, "<topic>/<p>" older
                topic, per_partition, partition = rest.partition("/")
                if per_partition and partition.startswith("s"):
                    self._apply_mirror_progress(topic, value, slot=int(partition[1:]))
                elif per_partition:
                    self._apply_partition_progress(topic, int(partition), value)
                else:
                    self._apply_mirror_progress(topic, value)
            elif kind == "ack":
                # topic names cannot hold '/', worker ids might
                topic, _, worker_id = rest.partition("/")
                _put(self.acks, (topic, worker_id), value)
            else:
                return False
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            log.warning("skipping malformed state record %r: %s", key, exc)
            return False
        return True

    def _apply_partition_progress(self, topic: str, partition: int, value: Any) -> None:
        if value is not None and not isinstance(value, dict):
            raise TypeError("progress is not an object")
        self._seq += 1
        k = (topic, partition)
        if value is None:
            self._legacy.pop(k, None)
            self._legacy_parts.get(topic, set()).discard(partition)
        else:
            self._legacy[k] = (self._seq, value)
            self._legacy_parts.setdefault(topic, set()).add(partition)
        self._progress_of(topic, (partition,))

    def _apply_mirror_progress(self, topic: str, value: Any, slot: int | None = None) -> None:
        """A per-mirror record (slot None) or a per-slot one."""
        new: dict[int, dict] = {}
        if value is not None:
            parts = value["partitions"]
            if not isinstance(parts, dict):
                raise TypeError("partitions is not an object")
            updated = value.get("updated_at")
            for p, v in parts.items():
                if not isinstance(v, dict):
                    raise TypeError(f"progress of partition {p!r} is not an object")
                new[int(p)] = v if updated is None or "updated_at" in v else {**v, "updated_at": updated}
        self._seq += 1
        if slot is None:
            old = self._per_mirror.pop(topic, (0, {}))[1]
            if value is not None:
                self._per_mirror[topic] = (self._seq, new)
            touched = set(old) | set(new) | self._legacy_parts.get(topic, set())
            touched |= {p for (t, _), (_, ps) in self._per_slot.items() if t == topic for p in ps}
        else:
            old = self._per_slot.pop((topic, slot), (0, {}))[1]
            if value is not None:
                self._per_slot[(topic, slot)] = (self._seq, new)
            touched = set(old) | set(new) | self._legacy_parts.get(topic, set())
            per_mirror = self._per_mirror.get(topic)
            if per_mirror is not None:
                touched |= set(per_mirror[1])
            touched = {p for p in touched if slot_of(topic, p) == slot}
        self._progress_of(topic, touched)

    def _progress_of(self, topic: str, partitions: Iterable[int]) -> None:
        """Bring progress[(topic, p)] up to date: the newest record that covers p, of
        three formats: the per-partition record of p, the per-mirror record (covers every
        partition), the per-slot record of p's slot. The newest covering record wins even
        when it does not list p (a worker's report leaves out partitions it no longer has)."""
        per_mirror = self._per_mirror.get(topic)
        for p in partitions:
            best = self._legacy.get((topic, p))
            value = best[1] if best else None
            if per_mirror is not None and (best is None or per_mirror[0] > best[0]):
                best, value = per_mirror, per_mirror[1].get(p)
            per_slot = self._per_slot.get((topic, slot_of(topic, p)))
            if per_slot is not None and (best is None or per_slot[0] > best[0]):
                value = per_slot[1].get(p)
            _put(self.progress, (topic, p), value)

    def copy(self) -> "StateSnapshot":
        """A copy whose containers and mirror records the caller may change (the dicts
        inside a record or a progress value are still shared: replace them, do not edit)."""
        out = StateSnapshot(self.link, {t: copy.copy(r) for t, r in self.mirrors.items()},
                            {w: _copy1(v) for w, v in self.workers.items()},
                            {k: _copy1(v) for k, v in self.progress.items()},
                            {k: _copy1(v) for k, v in self.acks.items()}, self.end_offset,
                            dict(self.mirror_offsets), set(self.rejected))
        out._legacy = dict(self._legacy)
        out._legacy_parts = {t: set(ps) for t, ps in self._legacy_parts.items()}
        out._per_mirror = dict(self._per_mirror)
        out._per_slot = dict(self._per_slot)
        out._seq = self._seq
        return out


def _copy1(v):
    return dict(v) if isinstance(v, dict) else v


def _put(d: dict, k, v) -> None:
    if v is None:
        d.pop(k, None)
    else:
        d[k] = v


# ---------------------------------------------------------------- the store

class StateStore:
    """The state of one link's mirrors on its destination cluster. Builds its clients
    lazily: the constructor opens no connection. Keeps the last snapshot it read (see the
    module docstring); `records_read` and `full_reads` count what its reads cost."""

    def __init__(self, destination_config: dict, link_name: str, timeout: float = 15.0):
        self.config = dict(destination_config)
        self.link = link_name
        self.timeout = timeout
        self.label = f"destination cluster {self.config.get('bootstrap.servers', '?')}"
        self._producer = None
        self.last_write_offsets: dict[str, int] = {}  # key -> offset of the last _put_many
        self._reader = None
        self._topic_ready = False
        self._cache: StateSnapshot | None = None
        self._cache_read_at = 0.0
        self._legacy_tombstoned: set[tuple[str, int]] = set()
        self.records_read = 0   # state records this store consumed, all reads together
        self.full_reads = 0     # reads that started at the log start

    # ---- clients
    def _client_conf(self) -> dict:
        conf = dict(self.config)
        conf.setdefault("socket.timeout.ms", int(self.timeout * 1000))
        conf.setdefault("log_level", 0)
        return conf

    def _admin(self):
        from kafka_mirrors.kafka.admin import Admin
        return Admin(self.config, self.label, self.timeout)

    def _producer_(self):
        if self._producer is None:
            from confluent_kafka import Producer
            conf = self._client_conf()
            conf.update({"acks": "all", "enable.idempotence": True, "linger.ms": 0,
                         "message.timeout.ms": int(self.timeout * 1000)})
            self._producer = Producer(conf)
        return self._producer

    def _consumer(self):
        from confluent_kafka import Consumer
        conf = self._client_conf()
        # assign() only: the group is never joined and nothing is ever committed
        conf.update({"group.id": f"kafka-mirrors-state-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.auto.offset.store": False,
                     "auto.offset.reset": "earliest", "allow.auto.create.topics": False})
        return Consumer(conf)

    def _reader_(self):
        if self._reader is None:
            self._reader = self._consumer()
        return self._reader

    # ---- topic
    def ensure_topic(self) -> None:
        """Create the compacted state topic if it does not exist yet, or bring an existing
        one's settings to STATE_TOPIC_CONFIGS (incrementally; a refusal, e.g. no
        AlterConfigs permission, is logged and the store works on)."""
        if self._topic_ready:
            return
        from kafka_mirrors.kafka import topics
        admin = self._admin()
        if not topics.topic_exists(admin, STATE_TOPIC):
            try:
                topics.create_topic(admin, STATE_TOPIC, 1, -1, STATE_TOPIC_CONFIGS)
                self._topic_ready = True
                return
            except ConflictError:
                pass  # another host created it a moment ago
        try:
            entries = topics.describe_topic_configs(admin, STATE_TOPIC)
            differ = {k: v for k, v in STATE_TOPIC_CONFIGS.items()
                      if k not in entries or str(entries[k].value) != v}
            if differ:
                topics.alter_topic_configs(admin, STATE_TOPIC, differ)
                log.info("state topic %s on %s: set %s", STATE_TOPIC, self.label,
                         ", ".join(f"{k}={v}" for k, v in sorted(differ.items())))
        except KafkaMirrorsError as exc:
            log.warning("state topic %s on %s keeps its settings (%s): compaction may lag behind "
                        "and full reads grow; set %s on it", STATE_TOPIC, self.label, exc,
                        ", ".join(f"{k}={v}" for k, v in STATE_TOPIC_CONFIGS.items()))
        self._topic_ready = True

    # ---- reads
    def _read(self, consumer, start: int | None, end: int, into: StateSnapshot) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
        consumer.assign([TopicPartition(STATE_TOPIC, 0, OFFSET_BEGINNING if start is None else start)])
        # only the last record of each key is decoded and folded, in the order of those last
        # records: what compaction would leave, and the fold is correct on a compacted log.
        # Mirror records are the exception: each is folded, in log order, since a later one
        # may lose a compare-and-set to an earlier one (StateSnapshot.apply)
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        ordered: list[tuple[int, bytes, bytes | None]] = []
        try:
            deadline = time.monotonic() + self.timeout
            position = start or 0
            while position < end:
                if time.monotonic() > deadline:
                    raise KafkaUnavailableError(
                        f"{self.label} did not deliver the state topic up to offset {end} "
                        f"within {self.timeout:g} s", "check that the destination cluster is up")
                # no more than is due: consume() waits its whole timeout for a batch to fill
                for msg in consumer.consume(max(1, min(500, end - position)), 0.2):
                    if msg.error():
                        if msg.error().code() == -191:  # _PARTITION_EOF
                            continue
                        raise KafkaOperationError(
                            f"reading {STATE_TOPIC} on {self.label} failed: {msg.error().str()}")
                    if msg.offset() < position or msg.offset() >= end:
                        continue  # left over from an earlier assignment, or past this read
                    self.records_read += 1
                    key = msg.key()
                    if key is not None:
                        if key.startswith(b"mirror/"):
                            ordered.append((msg.offset(), key, msg.value()))
                        else:
                            latest.pop(key, None)
                            latest[key] = (msg.offset(), msg.value())
                    position = msg.offset() + 1
                if position < end:
                    # compaction can leave the tail offsets without records: ask where we are
                    try:
                        pos = consumer.position([TopicPartition(STATE_TOPIC, 0)])[0].offset
                    except KafkaException:
                        pos = -1
                    position = max(position, pos)
            for key, (offset, raw) in latest.items():
                into.apply(key.decode(errors="replace"), _decode_or_skip(offset, raw))
            for offset, key, raw in ordered:
                into.apply(key.decode(errors="replace"), _decode_or_skip(offset, raw), offset)
        finally:
            try:
                consumer.unassign()  # no fetching in the background between reads
            except Exception:  # noqa: BLE001 - the consumer may be unusable after an error
                pass

    def _unreachable(self, exc) -> KafkaUnavailableError:
        return KafkaUnavailableError(f"{self.label} is unreachable (reading the mirror states): "
                                     f"{exc.args[0].str() if exc.args else exc}",
                                     "check the bootstrap servers and that the cluster is up")

    def _refresh(self) -> StateSnapshot:
        """The cached snapshot brought up to the current high watermark (read in full
        when it cannot be trusted). An absent state topic reads as empty and is not
        created: reading must not change a cluster."""
        from confluent_kafka import KafkaException, TopicPartition
        consumer = self._reader_()
        watermarks = None
        if self._cache is not None:
            # the topic was there a moment ago: skip the metadata request (if it is gone,
            # the offsets request fails and the slow path below tells)
            try:
                watermarks = consumer.get_watermark_offsets(TopicPartition(STATE_TOPIC, 0), timeout=self.timeout)
            except KafkaException:
                self._cache = None
        if watermarks is None:
            try:
                md = consumer.list_topics(STATE_TOPIC, timeout=self.timeout)
            except KafkaException as exc:
                raise self._unreachable(exc) from None
            t = md.topics.get(STATE_TOPIC)
            if t is None or t.error is not None:
                self._cache = None
                return StateSnapshot(self.link)
            try:
                watermarks = consumer.get_watermark_offsets(TopicPartition(STATE_TOPIC, 0), timeout=self.timeout)
            except KafkaException as exc:
                raise self._unreachable(exc) from None
        low, high = watermarks
        snap, start = self._cache, None
        if snap is not None and low <= snap.end_offset <= high and \
                time.monotonic() - self._cache_read_at <= FULL_READ_AFTER_IDLE_S:
            start = snap.end_offset
        else:
            # log start past what we read (retention or DeleteRecords took records we never
            # saw), a shorter log (the topic re-created) or a cache too old: from the start
            snap = StateSnapshot(self.link)
            self.full_reads += 1
        self._cache = None  # a read that fails half way leaves no half-folded cache
        if high > (low if start is None else start):
            self._read(consumer, start, high, snap)
        snap.end_offset = high
        self._cache, self._cache_read_at = snap, time.monotonic()
        return snap

    def snapshot(self, copy: bool = True) -> StateSnapshot:
        """Everything stored for this link, as of now: one incremental read. The result
        is the caller's to change; with copy=False it is the store's own cached snapshot,
        which the next read of this store updates in place: read it, never change it."""
        snap = self._refresh()
        return snap.copy() if copy else snap

    def get_mirror(self, topic: str) -> MirrorRecord:
        """The newest record of one mirror (a copy: the caller may change its fields)."""
        rec = self._refresh().mirrors.get(topic)
        if rec is None:
            raise self._not_found(topic)
        return copy.copy(rec)

    def _not_found(self, topic: str) -> NotFoundError:
        return NotFoundError(f"mirror '{topic}' of link '{self.link}' not found",
                             f"run 'kafka-mirrors mirror list --link {self.link}'")

    # ---- writes
    def _put(self, key: str, value: Any) -> None:
        self._put_many([(key, value)])

    def _put_many(self, items: list[tuple[str, Any]]) -> None:
        """Produce every item, then one flush: durable (acks=all) when this returns."""
        if not items:
            return
        self.ensure_topic()
        producer = self._producer_()
        errors: list[str] = []
        offsets: dict[str, int] = {}

        def delivered(err, msg):
            if err is not None:
                errors.append(err.str())
            else:
                offsets[msg.key().decode()] = msg.offset()

        for key, value in items:
            while True:
                try:
                    producer.produce(STATE_TOPIC, key=key.encode(), value=encode(value), partition=0,
                                     on_delivery=delivered)
                    break
                except BufferError:  # a very large batch: let the queue drain
                    producer.poll(0.1)
        left = producer.flush(self.timeout)
        what = items[0][0] + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")
        if left:
            raise KafkaUnavailableError(f"{self.label} did not acknowledge the state write '{what}' "
                                        f"within {self.timeout:g} s", "check that the destination cluster is up")
        if errors:
            raise KafkaOperationError(f"writing state '{what}' to {self.label} failed: {errors[0]}")
        # where each key landed in the state topic: a stop's acknowledgement is matched to
        # it by offset, never by comparing two hosts' clocks
        self.last_write_offsets = offsets

    def put_mirror(self, rec: MirrorRecord) -> None:
        now = time.time()
        if not rec.created_at:
            rec.created_at = now
        rec.updated_at = now
        rec.based_on = None  # unconditional: the last writer wins
        self._put(mirror_key(self.link, rec.topic), rec.to_json())

    def delete_mirror(self, topic: str) -> None:
        """Tombstone the mirror and its progress (both key formats) and acks (for `link
        delete` and the like)."""
        snap = self._refresh()
        legacy = {k for k in snap.legacy_progress if k[0] == topic} | {k for k in snap.progress if k[0] == topic}
        self._put_many([(progress_key(self.link, t, p), None) for (t, p) in sorted(legacy)]
                       + [(mirror_progress_key(self.link, topic), None)]
                       + [(slot_progress_key(self.link, topic, k), None) for k in range(SLOTS)]
                       + [(ack_key(self.link, t, w), None) for (t, w) in sorted(snap.acks) if t == topic]
                       + [(mirror_key(self.link, topic), None)])

    def set_state(self, topic: str, state: str, reason: str | None = None, *,
                  current: MirrorRecord | None = None, **fields) -> MirrorRecord:
        """Write one mirror's new state (and `fields` of its record) over its newest record.
        With `current` (the record the caller read and decided on), ConflictError when the
        store's newest view of that mirror is in another state by now. Without it the last
        writer wins, which is what compaction keeps anyway. Costs one incremental read."""
        out = self.set_state_many([current if current is not None else topic], state, reason, **fields)
        result = out[topic]
        if isinstance(result, KafkaMirrorsError):
            raise result
        return result

    def set_state_many(self, mirrors: Iterable[MirrorRecord | str], state: str, reason: str | None = None,
                       per_mirror: dict[str, dict] | None = None, **fields) -> dict[str, MirrorRecord | KafkaMirrorsError]:
        """set_state for several mirrors in one incremental read and one flush. Each item
        is a topic (last writer wins) or the MirrorRecord the caller read (compared with the
        newest view: a mirror whose state changed meanwhile is not written). `per_mirror`
        {topic: {field: value}} adds fields of one mirror's record over `fields`. Returns
        {topic: the record written, or the NotFoundError/ConflictError that kept it}."""
        if state not in STATES:
            raise ValueError(f"unknown mirror state {state!r}")
        known = {f.name for f in dc_fields(MirrorRecord)}
        for k in [*fields, *(k for extra in (per_mirror or {}).values() for k in extra)]:
            if k not in known:
                raise TypeError(f"MirrorRecord has no field {k!r}")
        items = list(mirrors)
        snap = self._refresh()
        newest = snap.mirrors
        out: dict[str, MirrorRecord | KafkaMirrorsError] = {}
        writes = []
        conditional: dict[str, str] = {}  # topic -> key of a compare-and-set written
        now = time.time()
        for item in items:
            topic = item if isinstance(item, str) else item.topic
            found = newest.get(topic)
            if found is None:
                out[topic] = self._not_found(topic)
                continue
            if not isinstance(item, str) and found.state != item.state:
                out[topic] = self._conflict(topic, found, item.state, state)
                continue
            rec = copy.copy(found)
            rec.state, rec.reason = state, reason
            if state != FAILED:
                rec.failed = None
            for k, v in {**fields, **(per_mirror or {}).get(topic, {})}.items():
                setattr(rec, k, v)
            if not rec.created_at:
                rec.created_at = now
            rec.updated_at = now
            # with the record the caller read: a compare-and-set on the newest one, which
            # every reader folds only if no other write to the mirror landed before it
            rec.based_on = None if isinstance(item, str) else snap.mirror_offsets.get(topic)
            if rec.based_on is not None:
                conditional[topic] = mirror_key(self.link, topic)
            out[topic] = rec
            writes.append((mirror_key(self.link, topic), rec.to_json()))
        self._put_many(writes)
        if conditional:
            written = dict(self.last_write_offsets)
            after = self._refresh()
            for topic, key in conditional.items():
                mine = written.get(key)
                if mine is None or mine in after.rejected or mine >= after.end_offset:
                    # another write to the mirror landed between our read and our write
                    won = after.mirrors.get(topic)
                    out[topic] = (self._conflict(topic, won, out[topic].state, state, lost=True)
                                  if won is not None else self._not_found(topic))
                    self._restate(topic)
        return out

    def _conflict(self, topic: str, found: MirrorRecord, read_state: str, state: str,
                  lost: bool = False) -> ConflictError:
        return ConflictError(
            f"mirror '{topic}' of link '{self.link}' is {found.state} now"
            + (f" ({found.reason})" if found.reason else "")
            + (f": another command changed it at the same moment; not set to {state}" if lost
               else f", not {read_state} as read: it changed meanwhile; not set to {state}"),
            f"run 'kafka-mirrors mirror describe {topic} --link {self.link}' and decide again")

    def _restate(self, topic: str, tries: int = 5) -> None:
        """After losing a compare-and-set: write the winner's record again, so the newest
        record of the mirror's key, the one compaction keeps, is not the losing one (a
        reader of the compacted log would fold it: nothing before it is left to lose to)."""
        for _ in range(tries):
            snap = self._refresh()
            won, at = snap.mirrors.get(topic), snap.mirror_offsets.get(topic)
            if won is None or at is None:
                return  # deleted meanwhile: the tombstone is the newest record
            again = copy.copy(won)
            again.based_on = at
            key = mirror_key(self.link, topic)
            self._put_many([(key, again.to_json())])
            mine = self.last_write_offsets.get(key)
            after = self._refresh()
            if mine is not None and mine not in after.rejected and mine < after.end_offset:
                return
        log.warning("mirror '%s' of link '%s': could not restate its newest record after a lost "
                    "compare-and-set (%d tries)", topic, self.link, tries)

    def heartbeat(self, worker_id: str, info: dict) -> None:
        value = dict(info)
        value.setdefault("worker_id", worker_id)
        value.setdefault("heartbeat_at", time.time())
        self._put(worker_key(self.link, worker_id), value)

    def remove_worker(self, worker_id: str) -> None:
        self._put(worker_key(self.link, worker_id), None)

    def put_progress_many(self, progress: dict[tuple[str, int], dict]) -> None:
        """A worker's progress report in one flush: one record per mirror and slot
        (`progress/<link>/<topic>/s<k>`), which replaces that slot's earlier one, so pass
        every partition of each (mirror, slot) reported. Per-partition keys of older
        workers that the store's last read saw for these mirrors are tombstoned once, first."""
        now = time.time()
        by_topic: dict[tuple[str, int], dict[int, dict]] = {}
        for (t, p), v in progress.items():
            by_topic.setdefault((t, slot_of(t, int(p))), {})[int(p)] = v
        topics = {t for t, _ in by_topic}
        items: list[tuple[str, Any]] = []
        if self._cache is not None:
            stale = sorted(k for k in self._cache.legacy_progress
                           if k[0] in topics and k not in self._legacy_tombstoned)
            items += [(progress_key(self.link, t, p), None) for t, p in stale]
            self._legacy_tombstoned.update(stale)
        for (t, k), parts in sorted(by_topic.items()):
            stamps = [v.get("updated_at") for v in parts.values() if isinstance(v.get("updated_at"), (int, float))]
            updated = max(stamps, default=now)
            # a partition stamped like the record needs no stamp of its own (readers fill it in)
            value = {"partitions": {str(p): {k: x for k, x in v.items() if not (k == "updated_at" and x == updated)}
                                    for p, v in sorted(parts.items())},
                     "updated_at": updated}
            items.append((slot_progress_key(self.link, t, k), value))
        self._put_many(items)

    def ack(self, topic: str, worker_id: str, state: str) -> None:
        self._put(ack_key(self.link, topic, worker_id), {"state": state, "at": time.time()})

    def ack_many(self, topics, worker_id: str, state: str, seen_offset: int | None = None) -> None:
        """A worker's acknowledgement of several stops in one flush (a failover --all).
        `seen_offset`: the worker had applied every state record below this offset of the
        state topic when it acknowledged; a stop written at offset N is acknowledged by
        seen_offset > N (dr.missing_acks)."""
        now = time.time()
        value = {"state": state, "at": now}
        if seen_offset is not None:
            value["seen_offset"] = seen_offset
        self._put_many([(ack_key(self.link, t, worker_id), value) for t in topics])

    def follow(self, start_offset: int | None = None,
               mirror_offsets: dict[str, int] | None = None) -> "StateFollower":
        """Tail the store from `start_offset` (e.g. a snapshot's end_offset, with that
        snapshot's mirror_offsets), else from the current end: only changes written after
        this call."""
        return StateFollower(self, start_offset, mirror_offsets)

    def close(self) -> None:
        """Close the clients (the cached snapshot stays: a later read continues from it)."""
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None
        if self._reader is not None:
            reader, self._reader = self._reader, None
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing must not mask the caller's error
                log.debug("closing the state reader failed", exc_info=True)


def _decode_or_skip(offset: int, raw: bytes | None) -> Any:
    try:
        return decode(raw)
    except ValueError:
        log.warning("skipping undecodable state record at offset %d", offset)
        return None


class StateFollower:
    """A tailing reader of one link's changes: poll() returns the (key, value|None) pairs
    written since the last poll, in order, for this link only."""

    def __init__(self, store: StateStore, start_offset: int | None,
                 mirror_offsets: dict[str, int] | None = None):
        from confluent_kafka import TopicPartition
        self.store = store
        # compare-and-set records are folded as StateSnapshot.apply does: a losing one is
        # never returned (the worker must not obey a pause that lost to a failover)
        self.mirror_offsets = dict(mirror_offsets or {})
        self._mirror_prefix = f"mirror/{store.link}/"
        store.ensure_topic()
        self._consumer = store._consumer()
        self._prefixes = tuple(f"{k}/{store.link}/" for k in ("mirror", "worker", "progress", "ack"))
        if start_offset is None:
            # resolve "the end" now, not at the first fetch: a write made between this
            # call and the first poll must not be skipped
            _, start_offset = self._consumer.get_watermark_offsets(
                TopicPartition(STATE_TOPIC, 0), timeout=store.timeout)
        self._consumer.assign([TopicPartition(STATE_TOPIC, 0, start_offset)])
        # what keeps the state topic from being read (not authorized, deleted, ...), until
        # a record or the end of it is read again; a worker says so, it does not hide it
        self.error: str | None = None
        self.position = start_offset  # every record below it has been returned by poll()

    def poll(self, timeout: float = 1.0) -> list[tuple[str, Any]]:
        from confluent_kafka import KafkaError
        out = []
        for msg in self._consumer.consume(500, timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.error = None
                elif msg.topic() == STATE_TOPIC:
                    # an error of the state topic itself (not a passing client-level one,
                    # such as an idle connection closed)
                    self.error = f"reading {STATE_TOPIC} failed: {err.str()}"
                continue  # the next poll tries again
            self.error = None
            self.position = msg.offset() + 1
            key = msg.key().decode() if msg.key() is not None else ""
            if key.startswith(self._prefixes):
                value = _decode_or_skip(msg.offset(), msg.value())
                if key.startswith(self._mirror_prefix) and not self._folds(key, value, msg.offset()):
                    continue
                out.append((key, value))
        return out

    def _folds(self, key: str, value: Any, offset: int) -> bool:
        topic = key[len(self._mirror_prefix):]
        based_on = value.get("based_on") if isinstance(value, dict) else None
        have = self.mirror_offsets.get(topic)
        if based_on is not None and have is not None and have != based_on:
            return False
        self.mirror_offsets[topic] = offset
        return True

    def close(self) -> None:
        self._consumer.close()


class StateTopicEnds:
    """A thread that asks the end (high watermark) of the state topic every `interval`
    seconds with a consumer of its own (QueryWatermarkOffsets), and puts (monotonic time
    it asked, end offset) in `answers`. Its own thread: a destination that is down costs
    this thread its timeout, never the control loop. (The AdminClient's ListOffsets was
    tried first: after a destination broker restart it answered FENCED_LEADER_EPOCH for
    minutes, from a leader epoch it kept.)"""

    def __init__(self, store: StateStore, interval: float):
        import queue
        import threading
        self.interval = interval
        self.timeout = store.timeout
        self.answers: queue.SimpleQueue[tuple[float, int]] = queue.SimpleQueue()
        self._consumer = store._consumer()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"state-ends-{store.link}", daemon=True)

    def start(self) -> "StateTopicEnds":
        self._thread.start()
        return self

    def _run(self) -> None:
        from confluent_kafka import TopicPartition
        tp = TopicPartition(STATE_TOPIC, 0)
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=self.timeout, cached=False)
            except Exception as exc:  # noqa: BLE001 - asked again; the copy waits meanwhile
                log.debug("the end of %s not known: %s", STATE_TOPIC, exc)
            else:
                if high is not None and high >= 0:  # -1001: no answer, not an offset
                    self.answers.put((asked, high))
                took = time.monotonic() - asked
                if took > 1.0:
                    log.debug("the end of %s took %.1f s to answer", STATE_TOPIC, took)
            self._stop.wait(max(0.0, asked + self.interval - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(min(self.timeout + 1.0, 5.0))
        if not self._thread.is_alive():  # else still in a call: left to the process exit
            self._consumer.close()


# ---------------------------------------------------------------- registry-facing helpers

def store_for(link, timeout: float = 15.0) -> StateStore:
    """The state store of a registry Link (its destination cluster)."""
    return StateStore(link.destination.client_config(), link.name, timeout)


def list_mirrors(link, timeout: float = 15.0) -> list[dict]:
    """[{'topic': ..., 'state': ..., 'since': updated_at}, ...] for `link` (a registry.Link),
    sorted by topic."""
    snap = store_for(link, timeout).snapshot()
    return [{"topic": t, "state": r.state, "since": r.updated_at} for t, r in sorted(snap.mirrors.items())]
