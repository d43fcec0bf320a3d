"""Fail back (docs/architecture.md section 2): after a promote or a failover the old source topic
becomes a mirror of the new primary, over the REVERSE link (source and destination
swapped).

    reverse-and-start / reverse-and-pause   (after promote; both clusters up)
        old source topic is exactly a prefix of the new primary's topic
        -> record it as a mirror on the reverse link (ACTIVE / PAUSED), nothing re-copied:
           the worker continues from its log end offset (the destination is the checkpoint)

    truncate-and-restore                    (after failover; both clusters up again)
        records of the old topic at offsets >= the failover point (the divergent tail)
        -> copied to a side topic '<topic>.diverged-<UTC time>' on the old source cluster,
           count verified
        -> no tail: adopted as above; a tail: Kafka cannot cut a log's tail, so the old
           topic is deleted and re-created empty as a mirror, and the worker re-copies it
           from the new primary's log start offset

The reverse link is `--reverse-link`, default '<link>-reverse'. When the registry has no
link of that name it is made from the forward link with the two clusters swapped (client
settings, config files and cluster IDs), without mirror.topic.prefix (the reverse mirror
keeps the old source topic's name and names its source topic explicitly), without the
auto-create patterns (they would mirror the forward link's own mirrors back) and without
link.principal (a principal of the other cluster). An existing one must join the same
two clusters the other way round (cluster IDs, checked live).

Services return plain views (dicts) and never print. The pure parts (the reverse link,
the prefix check, the tails, the side topic's name and headers) are unit tested.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Mapping

from kafka_mirrors.errors import (
    ConflictError,
    KafkaMirrorsError,
    KafkaOperationError,
    KafkaUnavailableError,
    NotFoundError,
    UsageError,
)
from kafka_mirrors.mirrors import FORCED_CONFIGS
from kafka_mirrors.registry import LINK_NAME, Link, Registry, now_iso
from kafka_mirrors.state import ACTIVE, PAUSED, STOPPED, MirrorRecord, StateStore

REVERSE_SUFFIX = "-reverse"
# link options that make no sense the other way round (see the module doc)
NOT_REVERSED_OPTIONS = ("mirror.topic.prefix", "auto.create.mirror.topics.enable",
                        "auto.create.mirror.topics.include", "auto.create.mirror.topics.exclude",
                        "link.principal")
# headers added to each record saved in the side topic (after the record's own headers)
DIVERGED_TOPIC_HEADER = "kafka-mirrors.diverged.topic"
DIVERGED_PARTITION_HEADER = "kafka-mirrors.diverged.partition"
DIVERGED_OFFSET_HEADER = "kafka-mirrors.diverged.offset"
# the side topic keeps everything until an operator deletes it
SIDE_TOPIC_CONFIGS = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1",
                      "message.timestamp.type": "CreateTime"}
DELETE_WAIT_S = 60.0
POLL_S = 0.3


# ---------------------------------------------------------------- pure helpers

def default_reverse_name(link_name: str) -> str:
    return link_name + REVERSE_SUFFIX


def reverse_link_for(forward: Link, name: str) -> Link:
    """The reverse of `forward`: clusters (settings, config files, recorded IDs) swapped,
    options kept except those in NOT_REVERSED_OPTIONS."""
    from copy import deepcopy
    if not LINK_NAME.match(name):
        raise UsageError(f"bad reverse link name '{name}': use letters, digits, '.', '_' and '-' (at most 100)",
                         "pass --reverse-link NAME")
    options = {k: v for k, v in forward.options.items() if k not in NOT_REVERSED_OPTIONS}
    return Link(name, deepcopy(forward.destination), deepcopy(forward.source), options,
                source_cluster_id=forward.destination_cluster_id,
                destination_cluster_id=forward.source_cluster_id, created_at=now_iso())


def reverse_link_problem(forward: Link, reverse: Link, live: Mapping[str, str | None]) -> str | None:
    """Why `reverse` does not join forward's clusters the other way round, or None.
    `live` holds the cluster IDs answering now: forward_source, forward_destination,
    reverse_source, reverse_destination."""
    want = {"source": live.get("forward_destination"), "destination": live.get("forward_source")}
    for side in ("source", "destination"):
        got = live.get(f"reverse_{side}")
        if want[side] and got and want[side] != got:
            other = "destination" if side == "source" else "source"
            return (f"link '{reverse.name}' is not the reverse of '{forward.name}': its {side} is cluster {got}, "
                    f"the {other} of '{forward.name}' is cluster {want[side]}")
    for link, side, recorded in ((forward, "source", forward.source_cluster_id),
                                 (forward, "destination", forward.destination_cluster_id),
                                 (reverse, "source", reverse.source_cluster_id),
                                 (reverse, "destination", reverse.destination_cluster_id)):
        now = live.get(f"{'forward' if link is forward else 'reverse'}_{side}")
        if recorded and now and recorded != now:
            return (f"the {side} of link '{link.name}' now answers as cluster {now}, "
                    f"but the link was made with cluster {recorded}")
    return None


def stop_points(rec: MirrorRecord) -> dict[int, int]:
    """Per partition, the destination log end offset recorded when the mirror was
    promoted or failed over: the offset where the two topics' histories part."""
    parts = ((rec.stopped or {}).get("partitions") or {})
    return {int(p): int(v["destination_log_end_offset"]) for p, v in parts.items()
            if isinstance(v, dict) and isinstance(v.get("destination_log_end_offset"), int)}


def prefix_problems(stop: Mapping[int, int], old_ends: Mapping[int, int],
                    new_ends: Mapping[int, int]) -> list[str]:
    """Why the old source topic (log end offsets `old_ends`) is not exactly a prefix of
    the new primary's topic (`new_ends`), given the promote points `stop`. Empty if it is."""
    out = []
    if len(old_ends) > len(new_ends):
        out.append(f"the old topic has {len(old_ends)} partitions, the new primary's {len(new_ends)}")
    for p in sorted(old_ends):
        old = old_ends[p]
        if p not in stop:
            out.append(f"partition {p}: no stop offset was recorded")
            continue
        if old > stop[p]:
            out.append(f"partition {p}: log end offset {old} is past the stop offset {stop[p]} "
                       f"({old - stop[p]} record(s) or markers written after the stop)")
        elif old < stop[p]:
            out.append(f"partition {p}: log end offset {old} is behind the stop offset {stop[p]} "
                       f"(the old topic lost records since)")
        elif p in new_ends and old > new_ends[p]:
            out.append(f"partition {p}: log end offset {old} is past the new primary's {new_ends[p]}")
    return out


def divergent_tails(stop: Mapping[int, int], old_ends: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """{partition: (first offset, log end offset)} of the records the old topic holds at
    or after the stop offset; partitions without a tail are left out."""
    return {p: (stop[p], end) for p, end in sorted(old_ends.items()) if p in stop and end > stop[p]}


def side_topic_name(topic: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{topic}.diverged-{stamp}"[:249]


def diverged_headers(headers, topic: str, partition: int, offset: int) -> list[tuple[str, bytes | None]]:
    """The record's own headers (order and duplicates kept) plus where it came from."""
    return list(headers or ()) + [(DIVERGED_TOPIC_HEADER, topic.encode()),
                                  (DIVERGED_PARTITION_HEADER, str(partition).encode()),
                                  (DIVERGED_OFFSET_HEADER, str(offset).encode())]


def selectable(rec: MirrorRecord, verb: str) -> str | None:
    """Why the forward mirror `rec` cannot be failed back with `verb`, or None."""
    stopped = rec.stopped or {}
    if rec.state != STOPPED:
        return f"mirror '{rec.topic}' is {rec.state}; {verb} needs STOPPED (promote or fail over first)"
    if stopped.get("reversed"):
        r = stopped["reversed"]
        return (f"mirror '{rec.topic}' was failed back already ({r.get('command')}): '{r.get('topic')}' "
                f"is a mirror on link '{r.get('link')}'")
    if verb != "truncate-and-restore" and stopped.get("reason") != "promoted":
        return (f"mirror '{rec.topic}' was {stopped.get('reason') or rec.reason}, not promoted; the old source may "
                f"hold records the new primary never got; run 'kafka-mirrors truncate-and-restore {rec.topic} "
                f"--link {rec.link}'")
    if not stop_points(rec):
        return f"mirror '{rec.topic}' has no recorded stop offsets"
    return None


# ---------------------------------------------------------------- clusters

def _admin(spec, side: str, timeout: float):
    from kafka_mirrors.kafka.admin import Admin
    return Admin(spec.client_config(), f"{side} cluster {spec.bootstrap}", timeout)


def _timeout(link: Link) -> float:
    return float(link.option("request.timeout.s"))


def _live_ids(forward: Link, reverse: Link, timeout: float) -> dict[str, str]:
    """Cluster IDs answering now on both sides of both links; fail back needs both up."""
    from kafka_mirrors.links import probe_both
    out = {}
    for which, link in (("forward", forward), ("reverse", reverse)):
        for side, seen in probe_both((link.source, link.destination), timeout).items():
            if not seen["reachable"]:
                exc = seen["exc"]
                raise type(exc)(f"fail back needs both clusters: {exc.message}", exc.hint)
            out[f"{which}_{side}"] = seen["cluster_id"]
    return out


def check_reverse_link(registry: Registry, forward: Link, name: str | None,
                       timeout: float | None = None) -> tuple[Link, dict[str, str], bool]:
    """(the reverse link, the live cluster IDs, whether the registry has it already).
    Checks it joins the forward link's clusters the other way round; records nothing."""
    name = name or default_reverse_name(forward.name)
    if name == forward.name:
        raise UsageError(f"the reverse link cannot be '{forward.name}' itself", "pass another --reverse-link")
    timeout = timeout if timeout is not None else _timeout(forward)
    existing = registry.links().get(name)
    reverse = existing or reverse_link_for(forward, name)
    live = _live_ids(forward, reverse, timeout)
    problem = reverse_link_problem(forward, reverse, live)
    if problem:
        raise ConflictError(problem, "pass --reverse-link NAME of a link from the new primary to the old source, "
                                     "or a new name to create one")
    if not existing:
        reverse.source_cluster_id = live["reverse_source"]
        reverse.destination_cluster_id = live["reverse_destination"]
    return reverse, live, existing is not None


def save_reverse_link(registry: Registry, forward: Link, reverse: Link, live: dict[str, str]) -> tuple[Link, bool]:
    """Record a reverse link made by check_reverse_link; (the link, whether it was created)."""
    with registry.update() as links:
        if reverse.name in links:  # made by another process a moment ago: use it if it fits
            if reverse_link_problem(forward, links[reverse.name], live):
                raise ConflictError(f"link '{reverse.name}' was just created by someone else and is not the "
                                    f"reverse of '{forward.name}'", "pass another --reverse-link")
            return links[reverse.name], False
        links[reverse.name] = reverse
    return reverse, True


def resolve_reverse_link(registry: Registry, forward: Link, name: str | None,
                         timeout: float | None = None) -> tuple[Link, bool]:
    """(the reverse link, whether it was created now): checked, and recorded if missing."""
    reverse, live, exists = check_reverse_link(registry, forward, name, timeout)
    if exists:
        return reverse, False
    return save_reverse_link(registry, forward, reverse, live)


def _ends(admin, topic: str, partitions: int, which: str = "latest") -> dict[int, int]:
    from kafka_mirrors.kafka import topics as kt
    return kt.list_offsets(admin, topic, range(partitions), which)


def _describe(admin, topic: str):
    from kafka_mirrors.kafka import topics as kt
    try:
        return kt.describe_topic(admin, topic)
    except NotFoundError:
        return None


def _ensure_create_time(admin, topic: str) -> bool:
    """Mirror topics keep the source's timestamps (docs/architecture.md section 3)."""
    from kafka_mirrors.kafka import topics as kt
    entries = kt.describe_topic_configs(admin, topic)
    wrong = {k: v for k, v in FORCED_CONFIGS.items() if k not in entries or entries[k].value != v}
    if wrong:
        kt.alter_topic_configs(admin, topic, wrong)
    return bool(wrong)


def _delete_topic(admin, topic: str, wait: float = DELETE_WAIT_S) -> None:
    from kafka_mirrors.kafka.admin import await_result
    futures = admin.client.delete_topics([topic], request_timeout=admin.timeout, operation_timeout=admin.timeout)
    try:
        await_result(futures[topic], f"deleting topic '{topic}'", admin.label, admin.timeout)
    except NotFoundError:
        return
    deadline = time.monotonic() + wait
    while _describe(admin, topic) is not None:
        if time.monotonic() > deadline:
            raise KafkaOperationError(f"topic '{topic}' still exists on {admin.label} {wait:g} s after its deletion")
        time.sleep(POLL_S)


def _create_topic(admin, topic: str, partitions: int, rf: int, configs: dict, wait: float = DELETE_WAIT_S,
                  retry_existing: bool = True, fresh_admin=None) -> str:
    """Create the topic, retrying while the broker still finishes an earlier deletion of
    that name; wait until every partition has a leader. Returns its topic ID.
    `fresh_admin()` gives a client without cached metadata of a deleted topic of that name."""
    from kafka_mirrors.kafka import topics as kt
    deadline = time.monotonic() + wait
    while True:
        try:
            kt.create_topic(admin, topic, partitions, rf, configs)
            break
        except (ConflictError, KafkaOperationError):
            if not retry_existing or time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)
    if fresh_admin is not None:
        admin = fresh_admin()
    while True:  # a new topic's partitions have no leader for a moment
        try:
            kt.list_offsets(admin, topic, range(partitions), "latest")
            return kt.describe_topic(admin, topic).topic_id
        except KafkaMirrorsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)


def copy_tails(conf: dict, topic: str, side_topic: str, tails: Mapping[int, tuple[int, int]],
               timeout: float) -> dict[int, int]:
    """Copy each partition's records in [first, end) (read_committed) to the same
    partition of `side_topic`, with the record's key, value, headers and timestamp plus
    headers naming where it came from. Returns the records saved per partition, each
    confirmed by its delivery report."""
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
    import uuid
    saved = {p: 0 for p in tails}
    if not tails:
        return saved
    errors: list[str] = []
    producer = Producer({**conf, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                         "compression.type": "lz4", "log_level": 0, "message.timeout.ms": int(timeout * 1000)})

    def delivered(err, msg):
        if err is not None:
            errors.append(err.str())
        else:
            saved[msg.partition()] += 1

    consumer = Consumer({**conf, "group.id": f"kafka-mirrors-tail-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest", "log_level": 0})
    read = {p: 0 for p in tails}
    try:
        consumer.assign([TopicPartition(topic, p, first) for p, (first, _) in tails.items()])
        pending = set(tails)
        last_progress = time.monotonic()
        while pending:
            msgs = consumer.consume(1000, 0.5)
            if not msgs and time.monotonic() - last_progress > timeout:
                raise KafkaUnavailableError(f"reading the tail of '{topic}' stalled for {timeout:g} s "
                                            f"(partitions {sorted(pending)} unfinished)",
                                            "check the old source cluster and run the command again")
            for m in msgs:
                p = m.partition()
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(p)
                        continue
                    raise KafkaOperationError(f"reading the tail of '{topic}' partition {p} failed: "
                                              f"{m.error().str()}")
                last_progress = time.monotonic()
                if p not in pending or m.offset() >= tails[p][1]:
                    pending.discard(p)
                    continue
                read[p] += 1
                while True:
                    try:
                        producer.produce(side_topic, key=m.key(), value=m.value(), partition=p,
                                         headers=diverged_headers(m.headers(), topic, p, m.offset()),
                                         timestamp=m.timestamp()[1], on_delivery=delivered)
                        break
                    except BufferError:  # local queue full: serve delivery reports, then retry
                        producer.poll(0.1)
                producer.poll(0)
                if m.offset() >= tails[p][1] - 1:
                    pending.discard(p)
        left = producer.flush(timeout)
    finally:
        consumer.close()
    if left or errors:
        raise KafkaOperationError(f"saving the tail of '{topic}' to '{side_topic}' failed: "
                                  + (errors[0] if errors else f"{left} record(s) not acknowledged"),
                                  "nothing was deleted; run the command again (a new side topic is made)")
    if read != saved:
        raise KafkaOperationError(f"saving the tail of '{topic}' to '{side_topic}': read {read}, saved {saved}",
                                  "nothing was deleted; run the command again")
    return saved


# ---------------------------------------------------------------- the commands

class _Context:
    """The two links, their state stores and admins for one fail-back command. A reverse
    link new to the registry is recorded just before the first change (`ensure_link`):
    a command that changes nothing leaves the registry alone too."""

    def __init__(self, registry: Registry, forward: Link, reverse: Link, live: dict[str, str], exists: bool):
        self._live = live
        self.registry = registry
        self.created = False
        self._saved = exists
        t = _timeout(forward)
        self.forward, self.reverse = forward, reverse
        self.fwd_store = StateStore(forward.destination.client_config(), forward.name, t)
        self.rev_store = StateStore(reverse.destination.client_config(), reverse.name, t)
        self.old = _admin(forward.source, "old source", t)       # the forward link's source
        self.new = _admin(forward.destination, "new primary", t)  # the forward link's destination
        self.timeout = t
        from kafka_mirrors.readonly import ReadOnlyAcls
        # where the old source has an authorizer, the reverse mirror is read-only by ACL
        # like any mirror (readonly.py); the reverse link's principal writes to it
        self.read_only = ReadOnlyAcls(reverse, self.old)
        self.notes: list[str] = []

    @classmethod
    def open(cls, registry: Registry, forward: Link, reverse_name: str | None) -> "_Context":
        """Check the reverse link (both clusters must answer), then build the clients."""
        return cls(registry, forward, *check_reverse_link(registry, forward, reverse_name))

    def ensure_link(self) -> None:
        if not self._saved:
            self.reverse, self.created = save_reverse_link(self.registry, self.forward, self.reverse, self._live)
            self._saved = True

    def close(self) -> None:
        self.fwd_store.close()
        self.rev_store.close()


def _select(snap, forward: Link, names: list[str], all_: bool, verb: str) -> tuple[list[MirrorRecord], list[dict]]:
    """The forward mirrors to act on and error rows (TOPIC... or --all, checked by _each)."""
    from kafka_mirrors.mirrors import resolve_mirror_name
    if all_:
        return [r for _, r in sorted(snap.mirrors.items()) if selectable(r, verb) is None], []
    chosen, errors = [], []
    for name in names:
        try:
            rec = snap.mirrors[resolve_mirror_name(snap, forward, name)]
        except KafkaMirrorsError as exc:
            errors.append({"topic": name, "ok": False, "error": str(exc)})
            continue
        why = selectable(rec, verb)
        if why:
            errors.append({"topic": rec.topic, "ok": False, "error": why})
        elif all(c.topic != rec.topic for c in chosen):
            chosen.append(rec)
    return chosen, errors


def _make_read_only(ctx: _Context, topic: str, recorded: list | None = None) -> list | None:
    from kafka_mirrors.readonly import from_json, to_json
    acls, changes = ctx.read_only.make_read_only(topic, from_json(recorded))
    ctx.notes += [f"{topic}: {w}" for w in changes.warnings if f"{topic}: {w}" not in ctx.notes]
    return to_json(acls)


def _fence_writers(ctx: _Context, topic: str) -> list | None:
    """Before the last check that the old topic took no writes: make it writable by the
    reverse link's principal only, so a producer still writing there is refused from now
    on instead of having its records deleted unsaved. Without an authorizer (or a link
    principal) nothing can refuse them: the output says writers must be stopped."""
    acls = _make_read_only(ctx, topic)
    if not ctx.read_only.managed():
        note = (f"{topic}: writers to it cannot be fenced on the {ctx.old.label} (no authorizer, or "
                f"no link.principal on '{ctx.reverse.name}'); stop them before running this command: a "
                f"record written between the last check and the deletion is lost")
        if note not in ctx.notes:
            ctx.notes.append(note)
    return acls


def _record_reverse(ctx: _Context, rec: MirrorRecord, new_info, state: str, verb: str,
                    extra: dict | None = None, acls: list | None = None) -> MirrorRecord:
    """The old source topic becomes a mirror on the reverse link; the forward mirror
    notes it. Reverse first: a crash in between leaves a mirror that works and a forward
    record that a re-run completes."""
    if acls is None:
        acls = _make_read_only(ctx, rec.source_topic)
    rev = MirrorRecord(link=ctx.reverse.name, topic=rec.source_topic, source_topic=rec.topic, state=state,
                       reason=verb, source_topic_id=new_info.topic_id, partitions=new_info.partitions, acls=acls)
    ctx.rev_store.put_mirror(rev)
    stopped = dict(rec.stopped or {})
    stopped["reversed"] = {"command": verb, "link": ctx.reverse.name, "topic": rec.source_topic, "at": time.time(),
                           **(extra or {})}
    ctx.fwd_store.set_state(rec.topic, STOPPED, reason=rec.reason, stopped=stopped)
    return rev


def _row(rec: MirrorRecord, ctx: _Context, **kw) -> dict:
    row = {"topic": rec.topic, "ok": True, "error": None, "mirror_topic": rec.source_topic,
           "source_topic": rec.topic, "reverse_link": ctx.reverse.name}
    row.update(kw)
    return row


def _start_points(ctx: _Context, rec: MirrorRecord, verb: str):
    """(new primary topic info, old topic info, old log end offsets, new log end offsets)."""
    new_info = _describe(ctx.new, rec.topic)
    if new_info is None:
        raise NotFoundError(f"topic '{rec.topic}' does not exist on the {ctx.new.label}")
    old_info = _describe(ctx.old, rec.source_topic)
    if old_info is None:
        raise NotFoundError(f"topic '{rec.source_topic}' does not exist on the {ctx.old.label}",
                            f"re-create it as a mirror with 'kafka-mirrors truncate-and-restore {rec.topic} "
                            f"--link {ctx.forward.name}'")
    if rec.source_topic_id and old_info.topic_id != rec.source_topic_id:
        raise ConflictError(f"topic '{rec.source_topic}' on the {ctx.old.label} was re-created since it was "
                            f"mirrored (topic ID {old_info.topic_id}, mirrored {rec.source_topic_id})",
                            f"save what you need from it, delete it, then run 'kafka-mirrors truncate-and-restore "
                            f"{rec.topic} --link {ctx.forward.name}' to re-create it as a mirror")
    return (new_info, old_info, _ends(ctx.old, rec.source_topic, old_info.partitions),
            _ends(ctx.new, rec.topic, new_info.partitions))


def _check_not_mirrored(ctx: _Context, rev_snap, rec: MirrorRecord) -> None:
    if rec.source_topic in rev_snap.mirrors:
        other = rev_snap.mirrors[rec.source_topic]
        raise ConflictError(f"'{rec.source_topic}' is a mirror on link '{ctx.reverse.name}' already ({other.state})",
                            f"run 'kafka-mirrors mirror describe {rec.source_topic} --link {ctx.reverse.name}'")


def _partitions_view(stop, old_ends, new_ends, saved=None) -> dict[str, dict]:
    out = {}
    for p in sorted(set(old_ends) | set(new_ends)):
        out[str(p)] = {"stop_offset": stop.get(p), "old_log_end_offset": old_ends.get(p),
                       "new_primary_log_end_offset": new_ends.get(p)}
        if saved is not None:
            out[str(p)]["records_saved"] = saved.get(p, 0)
    return out


def _reverse_one(ctx: _Context, rev_snap, rec: MirrorRecord, start: bool) -> dict:
    verb = "reverse-and-start" if start else "reverse-and-pause"
    _check_not_mirrored(ctx, rev_snap, rec)
    ctx.read_only.check(rec.source_topic)
    stop = stop_points(rec)
    new_info, _, old_ends, new_ends = _start_points(ctx, rec, verb)
    problems = prefix_problems(stop, old_ends, new_ends)
    if problems:
        raise ConflictError(f"'{rec.source_topic}' on the {ctx.old.label} is not a prefix of '{rec.topic}' "
                            f"on the {ctx.new.label}: " + "; ".join(problems),
                            f"save its tail and re-seed it with 'kafka-mirrors truncate-and-restore {rec.topic} "
                            f"--link {ctx.forward.name}'")
    ctx.ensure_link()
    changed = _ensure_create_time(ctx.old, rec.source_topic)
    state = ACTIVE if start else PAUSED
    _record_reverse(ctx, rec, new_info, state, verb)
    return _row(rec, ctx, state=state, action="adopted", timestamp_type_set=changed,
                partitions=_partitions_view(stop, old_ends, new_ends))


def _notes(ctx: _Context, rows: list[dict]) -> list[str]:
    notes = list(ctx.notes)
    if any(r["ok"] for r in rows):
        try:
            note = ctx.read_only.note()
        except KafkaMirrorsError as exc:
            note = f"could not check the old source cluster for an authorizer: {exc}"
        if note:
            notes.append(note)
    return notes


def _result(rev: Link, created: bool, rows: list[dict], verb: str, notes: list[str] = ()) -> dict:
    done = [r for r in rows if r["ok"]]
    nxt = []
    if done:
        if any(r.get("state") == PAUSED for r in done):
            topics = " ".join(r["mirror_topic"] for r in done)
            nxt.append(f"kafka-mirrors mirror resume {topics} --link {rev.name}")
        nxt.append(f"kafka-mirrors run --link {rev.name}")
    return {"command": verb,
            "reverse_link": {"name": rev.name, "created": created, "source": rev.source.bootstrap,
                             "destination": rev.destination.bootstrap},
            "topics": sorted(rows, key=lambda r: r["topic"]), "next": nxt, "notes": list(notes)}


def reverse(registry: Registry, link_name: str, names: list[str], all_: bool = False,
            reverse_name: str | None = None, start: bool = True) -> dict:
    """reverse-and-start (start=True) / reverse-and-pause: after a promote, make each old
    source topic a mirror of the new primary on the reverse link, continuing at its log
    end offset. Refuses a topic that is not exactly a prefix of the new primary's."""
    verb = "reverse-and-start" if start else "reverse-and-pause"
    return _each(registry, link_name, names, all_, reverse_name, verb, "not reversed",
                 lambda ctx, rev_snap, rec: _reverse_one(ctx, rev_snap, rec, start))


def _each(registry: Registry, link_name: str, names: list[str], all_: bool, reverse_name: str | None,
          verb: str, not_done: str, one) -> dict:
    """Select the forward mirrors, run `one(ctx, reverse snapshot, record)` for each and
    collect one row per topic (a failure is that topic's row, not the whole command's)."""
    forward = registry.get(link_name)
    if all_ and names:
        raise UsageError("give TOPIC... or --all, not both")
    if not all_ and not names:
        raise UsageError(f"nothing to {verb}: give TOPIC... or --all")
    ctx = _Context.open(registry, forward, reverse_name)
    try:
        chosen, rows = _select(ctx.fwd_store.snapshot(), forward, names, all_, verb)
        rev_snap = ctx.rev_store.snapshot()
        for rec in chosen:
            try:
                rows.append(one(ctx, rev_snap, rec))
            except KafkaMirrorsError as exc:
                rows.append({"topic": rec.topic, "ok": False, "error": f"{rec.topic} {not_done}: {exc}"})
        return _result(ctx.reverse, ctx.created, rows, verb, _notes(ctx, rows))
    finally:
        ctx.close()


def _restore_one(ctx: _Context, rev_snap, rec: MirrorRecord) -> dict:
    from kafka_mirrors.kafka import topics as kt
    verb = "truncate-and-restore"
    fenced = None  # read-only bindings made on the old topic before its deletion
    _check_not_mirrored(ctx, rev_snap, rec)
    ctx.read_only.check(rec.source_topic)  # before anything is deleted
    stop = stop_points(rec)
    restore = (rec.stopped or {}).get("restore")
    new_info = _describe(ctx.new, rec.topic)
    if new_info is None:
        raise NotFoundError(f"topic '{rec.topic}' does not exist on the {ctx.new.label}")
    old_info = _describe(ctx.old, rec.source_topic)
    original = old_info is not None and (not rec.source_topic_id or old_info.topic_id == rec.source_topic_id)
    if restore is None and old_info is None:
        # the old topic is gone (deleted by hand, or a rebuilt cluster): nothing to save
        ctx.ensure_link()
        restore = {"side_topic": None, "saved": {}, "at": time.time(), "old_log_end_offsets": {},
                   "configs": kt.topic_overrides(ctx.new, rec.topic), "partitions": new_info.partitions}
        new_ends = _ends(ctx.new, rec.topic, new_info.partitions)
        old_ends = {}
    elif restore is None:
        # first run: nothing has been changed yet
        new_info, old_info, old_ends, new_ends = _start_points(ctx, rec, verb)
        lso = _ends(ctx.old, rec.source_topic, old_info.partitions, "last_stable")
        open_txn = {p: (lso[p], old_ends[p]) for p in old_ends if lso[p] < old_ends[p] and lso[p] >= stop.get(p, 0)}
        if open_txn:
            raise ConflictError(f"'{rec.source_topic}' has open transactions past the stop offset (partition: "
                                f"(last stable offset, log end offset) {open_txn})",
                                "wait until they end (transaction.timeout.ms) and run the command again")
        behind = {p: (o, stop[p]) for p, o in old_ends.items() if p in stop and o < stop[p]}
        missing = [p for p in old_ends if p not in stop]
        if behind or missing:
            raise ConflictError(f"'{rec.source_topic}' does not line up with the stop offsets (partitions behind: "
                                f"{behind}, without a stop offset: {missing}); its history may differ below the "
                                f"stop offsets, which this command does not save",
                                f"save what you need from it, delete it on the {ctx.old.label}, then run "
                                f"'kafka-mirrors truncate-and-restore {rec.topic} --link {ctx.forward.name}' "
                                f"to re-create it as a mirror")
        tails = divergent_tails(stop, old_ends)
        ctx.ensure_link()
        if not tails and not prefix_problems(stop, old_ends, new_ends):
            changed = _ensure_create_time(ctx.old, rec.source_topic)
            _record_reverse(ctx, rec, new_info, ACTIVE, verb, {"side_topic": None, "saved": {}})
            return _row(rec, ctx, state=ACTIVE, action="adopted", side_topic=None, records_saved=0,
                        timestamp_type_set=changed, partitions=_partitions_view(stop, old_ends, new_ends, {}))
        side = side_topic_name(rec.source_topic, time.time())
        configs = kt.topic_overrides(ctx.old, rec.source_topic)
        # the side topic first; if it exists (same second, a re-run) its data is never mixed in
        _create_topic(ctx.old, side, old_info.partitions, int(ctx.reverse.option("replication.factor")),
                      {**{k: v for k, v in configs.items() if k == "max.message.bytes"}, **SIDE_TOPIC_CONFIGS},
                      retry_existing=False)
        saved = copy_tails(ctx.forward.source.client_config(), rec.source_topic, side, tails, ctx.timeout)
        side_ends = _ends(ctx.old, side, old_info.partitions)
        if any(side_ends.get(p, 0) != n for p, n in saved.items()):
            raise KafkaOperationError(f"side topic '{side}' holds {side_ends}, expected {saved}",
                                      f"nothing was deleted; check '{side}' and run the command again")
        # the old topic must hold nothing more than what was measured and saved: a producer
        # still writing to the old source would otherwise lose records to the deletion.
        # Fenced first, so nothing can land between this check and the deletion.
        fenced = _fence_writers(ctx, rec.source_topic)
        _refuse_if_grown(ctx, rec, old_ends, side)
        restore = {"side_topic": side, "saved": {str(p): n for p, n in saved.items()}, "at": time.time(),
                   "old_log_end_offsets": {str(p): o for p, o in old_ends.items()},
                   "configs": configs, "partitions": new_info.partitions}
        # recorded before the deletion: a re-run after a crash knows the tail is safe
        stopped = dict(rec.stopped or {})
        stopped["restore"] = restore
        rec = ctx.fwd_store.set_state(rec.topic, STOPPED, reason=rec.reason, stopped=stopped)
    else:
        ctx.ensure_link()
        old_ends = {int(p): o for p, o in (restore.get("old_log_end_offsets") or {}).items()}
        new_ends = _ends(ctx.new, rec.topic, new_info.partitions)
        if original:
            fenced = _fence_writers(ctx, rec.source_topic)
            try:
                _refuse_if_grown(ctx, rec, old_ends, restore.get("side_topic"))
            except ConflictError:
                # the recorded save no longer covers the tail: the next run saves it anew
                stopped = dict(rec.stopped or {})
                stopped.pop("restore", None)
                ctx.fwd_store.set_state(rec.topic, STOPPED, reason=rec.reason, stopped=stopped)
                raise
    # delete the original topic (never a topic someone re-created since), then re-create it
    if original:
        _delete_topic(ctx.old, rec.source_topic)
        old_info = None
    acls = None
    if old_info is None:
        configs = dict(restore.get("configs") or {})
        configs.update(FORCED_CONFIGS)
        # the topic never exists writable by others (the fence's bindings, if any, stay recorded)
        acls = _make_read_only(ctx, rec.source_topic, fenced)
        _create_topic(ctx.old, rec.source_topic, new_info.partitions, int(ctx.reverse.option("replication.factor")),
                      configs, fresh_admin=lambda: _admin(ctx.forward.source, "old source", ctx.timeout))
    else:
        ends = _ends(ctx.old, rec.source_topic, old_info.partitions)
        if any(ends.values()):
            saved_in = f"the saved tail is in '{restore['side_topic']}'; " if restore.get("side_topic") else ""
            raise ConflictError(f"topic '{rec.source_topic}' on the {ctx.old.label} was re-created and holds "
                                f"records {ends}", f"{saved_in}save what you need from it, delete it and run the "
                                f"command again")
        _ensure_create_time(ctx.old, rec.source_topic)
    saved = {int(p): n for p, n in (restore.get("saved") or {}).items()}
    _record_reverse(ctx, rec, new_info, ACTIVE, verb, {"side_topic": restore["side_topic"], "saved": restore["saved"]},
                    acls=acls)
    return _row(rec, ctx, state=ACTIVE, action="re-created", side_topic=restore["side_topic"],
                records_saved=sum(saved.values()), partitions=_partitions_view(stop, old_ends, new_ends, saved))


def _refuse_if_grown(ctx: _Context, rec: MirrorRecord, measured: Mapping[int, int], side: str | None) -> None:
    """ConflictError (nothing deleted) when the old topic's log end offsets moved since
    `measured`: records written there meanwhile are not in the side topic."""
    now = _ends(ctx.old, rec.source_topic, len(measured))
    grown = {p: (measured.get(p), o) for p, o in now.items() if o != measured.get(p)}
    if grown:
        where = f"what was saved so far is in '{side}'; " if side else ""
        raise ConflictError(f"'{rec.source_topic}' on the {ctx.old.label} took writes while its tail was being "
                            f"saved (partition: (measured, now) log end offset {grown}); nothing was deleted",
                            f"{where}stop the producers on the old source, then run 'kafka-mirrors "
                            f"truncate-and-restore {rec.topic} --link {ctx.forward.name}' again")


def truncate_and_restore(registry: Registry, link_name: str, names: list[str], all_: bool = False,
                         reverse_name: str | None = None) -> dict:
    """After a failover (or a promote the old source kept taking writes after): save each
    old source topic's divergent tail to a side topic, then make the topic a mirror of the
    new primary on the reverse link (adopted when there was no tail, else re-created)."""
    return _each(registry, link_name, names, all_, reverse_name, "truncate-and-restore", "not restored",
                 _restore_one)

