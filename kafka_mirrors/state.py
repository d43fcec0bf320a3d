"""Mirror state store: the state of every mirror of a link, the workers' heartbeats and
their per-partition progress, kept on the DESTINATION cluster in one compacted topic
(`__kafka_mirrors_state`, 1 partition) so it stays authoritative when the source is lost
and every host with the link definition sees the same states (DESIGN.md sections 2-3).

Keys (UTF-8) and JSON values:

    mirror/<link>/<topic>                   MirrorRecord (topic = mirror topic on the destination)
    worker/<link>/<worker_id>               {worker_id, host, pid, heartbeat_at, partitions}
    progress/<link>/<topic>/<partition>     {next_offset, records_copied, fillers_written,
                                             offsets_lost_to_source_retention, updated_at}
    ack/<link>/<topic>/<worker_id>          {state, at}: a worker saw a stop

A null value (tombstone) deletes a key. Writes use an idempotent acks=all producer and are
flushed before `put_*` returns; a read assigns the partition and reads from the log start
offset up to the high watermark. Compaction keeps the newest value per key, so a read folds
records in offset order and the last one wins.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dc_fields
from typing import Any

from kafka_mirrors.errors import KafkaOperationError, KafkaUnavailableError, NotFoundError

STATE_TOPIC = "__kafka_mirrors_state"

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

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> "MirrorRecord":
        # unknown keys are ignored so an older reader survives a newer writer's records
        known = {f.name for f in dc_fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


def mirror_key(link: str, topic: str) -> str:
    return f"mirror/{link}/{topic}"


def worker_key(link: str, worker_id: str) -> str:
    return f"worker/{link}/{worker_id}"


def progress_key(link: str, topic: str, partition: int) -> str:
    return f"progress/{link}/{topic}/{partition}"


def ack_key(link: str, topic: str, worker_id: str) -> str:
    return f"ack/{link}/{topic}/{worker_id}"


def format_partition_ranges(partitions) -> str:
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
    read went up to; `follow(snapshot.end_offset)` continues without a gap)."""

    link: str
    mirrors: dict[str, MirrorRecord] = field(default_factory=dict)
    workers: dict[str, dict] = field(default_factory=dict)
    progress: dict[tuple[str, int], dict] = field(default_factory=dict)
    acks: dict[tuple[str, str], dict] = field(default_factory=dict)
    end_offset: int = 0

    def apply(self, key: str, value: Any) -> bool:
        """Fold one record in (value None deletes). Records of other links and keys this
        version does not know are skipped; returns whether the record was used."""
        kind, sep, rest = key.partition("/")
        prefix = self.link + "/"
        if not sep or not rest.startswith(prefix):
            return False
        rest = rest[len(prefix):]
        try:
            if kind == "mirror":
                _put(self.mirrors, rest, None if value is None else MirrorRecord.from_json(value))
            elif kind == "worker":
                _put(self.workers, rest, value)
            elif kind == "progress":
                topic, _, partition = rest.rpartition("/")
                _put(self.progress, (topic, int(partition)), value)
            elif kind == "ack":
                # topic names cannot hold '/', worker ids might
                topic, _, worker_id = rest.partition("/")
                _put(self.acks, (topic, worker_id), value)
            else:
                return False
        except (TypeError, ValueError) as exc:
            log.warning("skipping malformed state record %r: %s", key, exc)
            return False
        return True


def _put(d: dict, k, v) -> None:
    if v is None:
        d.pop(k, None)
    else:
        d[k] = v


# ---------------------------------------------------------------- the store

class StateStore:
    """The state of one link's mirrors on its destination cluster. Builds its clients
    lazily: the constructor opens no connection."""

    def __init__(self, destination_config: dict, link_name: str, timeout: float = 15.0):
        self.config = dict(destination_config)
        self.link = link_name
        self.timeout = timeout
        self.label = f"destination cluster {self.config.get('bootstrap.servers', '?')}"
        self._producer = None
        self._topic_ready = False

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

    # ---- topic
    def ensure_topic(self) -> None:
        """Create the compacted state topic if it does not exist yet."""
        if self._topic_ready:
            return
        from kafka_mirrors.errors import ConflictError
        from kafka_mirrors.kafka import topics
        admin = self._admin()
        if not topics.topic_exists(admin, STATE_TOPIC):
            try:
                topics.create_topic(admin, STATE_TOPIC, 1, -1, {"cleanup.policy": "compact"})
            except ConflictError:
                pass  # another host created it a moment ago
        self._topic_ready = True

    # ---- reads
    def _read(self, consumer, start: int | None, end: int, into: StateSnapshot) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
        consumer.assign([TopicPartition(STATE_TOPIC, 0, OFFSET_BEGINNING if start is None else start)])
        deadline = time.monotonic() + self.timeout
        position = start or 0
        while position < end:
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(
                    f"{self.label} did not deliver the state topic up to offset {end} "
                    f"within {self.timeout:g} s", "check that the destination cluster is up")
            for msg in consumer.consume(500, 0.2):
                if msg.error():
                    if msg.error().code() == -191:  # _PARTITION_EOF
                        continue
                    raise KafkaOperationError(f"reading {STATE_TOPIC} on {self.label} failed: {msg.error().str()}")
                if msg.key() is not None:
                    into.apply(msg.key().decode(), _decode_or_skip(msg))
                position = msg.offset() + 1
            if position < end:
                # compaction can leave the tail offsets without records: ask where we are
                try:
                    pos = consumer.position([TopicPartition(STATE_TOPIC, 0)])[0].offset
                except KafkaException:
                    pos = -1
                position = max(position, pos)

    def snapshot(self) -> StateSnapshot:
        """Everything stored for this link. An absent state topic reads as empty (and is
        not created: reading must not change a cluster)."""
        from confluent_kafka import KafkaException, TopicPartition
        snap = StateSnapshot(self.link)
        consumer = self._consumer()
        try:
            try:
                md = consumer.list_topics(STATE_TOPIC, timeout=self.timeout)
            except KafkaException as exc:
                raise KafkaUnavailableError(f"{self.label} is unreachable (reading the mirror states): "
                                            f"{exc.args[0].str() if exc.args else exc}",
                                            "check the bootstrap servers and that the cluster is up") from None
            t = md.topics.get(STATE_TOPIC)
            if t is None or t.error is not None:
                return snap
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(STATE_TOPIC, 0), timeout=self.timeout)
            except KafkaException as exc:
                raise KafkaUnavailableError(f"{self.label} is unreachable (reading the mirror states): "
                                            f"{exc.args[0].str() if exc.args else exc}",
                                            "check the bootstrap servers and that the cluster is up") from None
            snap.end_offset = high
            if high > low:
                self._read(consumer, None, high, snap)
            return snap
        finally:
            consumer.close()

    def get_mirror(self, topic: str) -> MirrorRecord:
        snap = self.snapshot()
        if topic not in snap.mirrors:
            raise NotFoundError(f"mirror '{topic}' of link '{self.link}' not found",
                                f"run 'kafka-mirrors mirror list --link {self.link}'")
        return snap.mirrors[topic]

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

        def delivered(err, _msg):
            if err is not None:
                errors.append(err.str())

        for key, value in items:
            producer.produce(STATE_TOPIC, key=key.encode(), value=encode(value), partition=0,
                             on_delivery=delivered)
        left = producer.flush(self.timeout)
        what = items[0][0] + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")
        if left:
            raise KafkaUnavailableError(f"{self.label} did not acknowledge the state write '{what}' "
                                        f"within {self.timeout:g} s", "check that the destination cluster is up")
        if errors:
            raise KafkaOperationError(f"writing state '{what}' to {self.label} failed: {errors[0]}")

    def put_mirror(self, rec: MirrorRecord) -> None:
        now = time.time()
        if not rec.created_at:
            rec.created_at = now
        rec.updated_at = now
        self._put(mirror_key(self.link, rec.topic), rec.to_json())

    def delete_mirror(self, topic: str) -> None:
        """Tombstone the mirror and its progress and acks (for `link delete` and the like)."""
        snap = self.snapshot()
        self._put_many([(progress_key(self.link, t, p), None) for (t, p) in sorted(snap.progress) if t == topic]
                       + [(ack_key(self.link, t, w), None) for (t, w) in sorted(snap.acks) if t == topic]
                       + [(mirror_key(self.link, topic), None)])

    def set_state(self, topic: str, state: str, reason: str | None = None, **fields) -> MirrorRecord:
        """Read-modify-write of one mirror record. Not atomic across hosts: the last
        writer wins, which is what compaction keeps anyway."""
        if state not in STATES:
            raise ValueError(f"unknown mirror state {state!r}")
        rec = self.get_mirror(topic)
        rec.state = state
        rec.reason = reason
        if state != FAILED:
            rec.failed = None
        known = {f.name for f in dc_fields(MirrorRecord)}
        for k, v in fields.items():
            if k not in known:
                raise TypeError(f"MirrorRecord has no field {k!r}")
            setattr(rec, k, v)
        self.put_mirror(rec)
        return rec

    def heartbeat(self, worker_id: str, info: dict) -> None:
        value = dict(info)
        value.setdefault("worker_id", worker_id)
        value.setdefault("heartbeat_at", time.time())
        self._put(worker_key(self.link, worker_id), value)

    def remove_worker(self, worker_id: str) -> None:
        self._put(worker_key(self.link, worker_id), None)

    def put_progress(self, topic: str, partition: int, progress: dict) -> None:
        value = dict(progress)
        value.setdefault("updated_at", time.time())
        self._put(progress_key(self.link, topic, partition), value)

    def put_progress_many(self, progress: dict[tuple[str, int], dict]) -> None:
        """Several partitions' progress in one flush (a worker's periodic report)."""
        now = time.time()
        self._put_many([(progress_key(self.link, t, p), {"updated_at": now} | dict(v))
                        for (t, p), v in sorted(progress.items())])

    def ack(self, topic: str, worker_id: str, state: str) -> None:
        self._put(ack_key(self.link, topic, worker_id), {"state": state, "at": time.time()})

    def ack_many(self, topics, worker_id: str, state: str) -> None:
        """A worker's acknowledgement of several stops in one flush (a failover --all)."""
        now = time.time()
        self._put_many([(ack_key(self.link, t, worker_id), {"state": state, "at": now}) for t in topics])

    def follow(self, start_offset: int | None = None) -> "StateFollower":
        """Tail the store from `start_offset` (e.g. a snapshot's end_offset), else from
        the current end: only changes written after this call."""
        return StateFollower(self, start_offset)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None


def _decode_or_skip(msg) -> Any:
    try:
        return decode(msg.value())
    except ValueError:
        log.warning("skipping undecodable state record at offset %d", msg.offset())
        return None


class StateFollower:
    """A tailing reader of one link's changes: poll() returns the (key, value|None) pairs
    written since the last poll, in order, for this link only."""

    def __init__(self, store: StateStore, start_offset: int | None):
        from confluent_kafka import TopicPartition
        self.store = store
        store.ensure_topic()
        self._consumer = store._consumer()
        self._prefixes = tuple(f"{k}/{store.link}/" for k in ("mirror", "worker", "progress", "ack"))
        if start_offset is None:
            # resolve "the end" now, not at the first fetch: a write made between this
            # call and the first poll must not be skipped
            _, start_offset = self._consumer.get_watermark_offsets(
                TopicPartition(STATE_TOPIC, 0), timeout=store.timeout)
        self._consumer.assign([TopicPartition(STATE_TOPIC, 0, start_offset)])

    def poll(self, timeout: float = 1.0) -> list[tuple[str, Any]]:
        out = []
        for msg in self._consumer.consume(500, timeout):
            if msg.error():
                continue  # EOF and transient errors: the next poll retries
            key = msg.key().decode() if msg.key() is not None else ""
            if key.startswith(self._prefixes):
                out.append((key, _decode_or_skip(msg)))
        return out

    def close(self) -> None:
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
