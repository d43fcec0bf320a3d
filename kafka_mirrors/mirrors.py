"""Mirror services: create mirror topics, and build the views `mirror list`, `mirror
describe` and `describe` render, plus the health verdict of `--check`.

The views are plain dicts and lists built by pure functions (`build_mirror_view`,
`health_problems`) from what the clusters and the state store show, so they are unit
tested without a broker. Lag is derived here, never stored:
lag = source last stable offset − destination log end offset.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from kafka_mirrors.errors import (
    ConflictError,
    KafkaMirrorsError,
    KafkaUnavailableError,
    NotFoundError,
    UsageError,
)
from kafka_mirrors.state import ACTIVE, FAILED, STATES, STOPPED, MirrorRecord, StateSnapshot, StateStore

# A worker whose last heartbeat is older than this is reported as "not seen".
WORKER_STALE_AFTER_S = 30.0

# Mirror topics take their timestamps from the source records (docs/architecture.md section 3).
FORCED_CONFIGS = {"message.timestamp.type": "CreateTime"}


def _admins(link, timeout: float):
    from kafka_mirrors.kafka.admin import Admin
    src = link.source.client_config()
    dst = link.destination.client_config()
    return (Admin(src, f"source cluster {src.get('bootstrap.servers', '?')}", timeout),
            Admin(dst, f"destination cluster {dst.get('bootstrap.servers', '?')}", timeout))


def store_for(link, timeout: float) -> StateStore:
    return StateStore(link.destination.client_config(), link.name, timeout)


def parse_configs(pairs: Iterable[str]) -> dict[str, str]:
    """--config KEY=VALUE pairs; a malformed one is a usage error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--config '{pair}' is not KEY=VALUE", "e.g. --config retention.ms=86400000")
        out[key.strip()] = value.strip()
    return out


def resolve_mirror_name(snapshot: StateSnapshot, link, name: str) -> str:
    """The mirror topic a user means by `name`: its destination name, or the name given
    at `mirror create` (without the link's mirror.topic.prefix)."""
    if name in snapshot.mirrors:
        return name
    prefixed = (link.option("mirror.topic.prefix") or "") + name
    if prefixed in snapshot.mirrors:
        return prefixed
    raise NotFoundError(f"mirror '{name}' of link '{link.name}' not found",
                        f"run 'kafka-mirrors mirror list --link {link.name}'")


# ---------------------------------------------------------------- create

@dataclass
class MirrorPlan:
    topic: str                 # mirror topic on the destination
    source_topic: str
    source_topic_id: str
    partitions: int
    configs: dict[str, str]
    adopt: bool                # an empty destination topic exists already


def mirror_configs(source_overrides: dict[str, str], overrides: dict[str, str] | None) -> dict[str, str]:
    """The topic configs a mirror must have: the source topic's own settings, then those
    that must differ on a mirror (CreateTime timestamps), then the operator's --config.
    Used at creation and by the worker's config sync."""
    configs = dict(source_overrides)
    configs.update(FORCED_CONFIGS)
    configs.update(overrides or {})
    return configs


def plan_mirror(link, name: str, source_topic: str | None, overrides: dict[str, str],
                src_admin, dst_admin, snapshot: StateSnapshot) -> MirrorPlan:
    """Everything checked, nothing changed: raises on any reason to refuse."""
    from kafka_mirrors.kafka import topics
    source_topic = source_topic or name
    mirror_topic = (link.option("mirror.topic.prefix") or "") + name
    if mirror_topic in snapshot.mirrors:
        rec = snapshot.mirrors[mirror_topic]
        raise ConflictError(f"mirror '{mirror_topic}' of link '{link.name}' exists already ({rec.state})",
                            f"run 'kafka-mirrors mirror describe {mirror_topic} --link {link.name}'")
    try:
        info = topics.describe_topic(src_admin, source_topic)
    except NotFoundError:
        raise NotFoundError(
            f"source topic '{source_topic}' does not exist on the {src_admin.label} of link '{link.name}'",
            f"list the source's topics with 'kafka-topics --bootstrap-server "
            f"{src_admin.label.rsplit(' ', 1)[-1]} --list'") from None
    configs = mirror_configs(topics.topic_overrides(src_admin, source_topic), overrides)
    adopt = False
    try:
        existing = topics.describe_topic(dst_admin, mirror_topic)
    except NotFoundError:
        existing = None
    if existing is not None:
        if existing.partitions != info.partitions:
            raise ConflictError(
                f"destination topic '{mirror_topic}' exists with {existing.partitions} partitions, "
                f"the source topic '{source_topic}' has {info.partitions}",
                "delete it or choose another name with --source-topic")
        ends = topics.list_offsets(dst_admin, mirror_topic, range(existing.partitions), "latest")
        used = {p: o for p, o in sorted(ends.items()) if o > 0}
        if used:
            raise ConflictError(
                f"destination topic '{mirror_topic}' is not empty (log end offsets {used}); a mirror "
                f"must start empty to keep the source's offsets",
                "delete the topic on the destination or mirror under another name")
        adopt = True
    return MirrorPlan(mirror_topic, source_topic, info.topic_id, info.partitions, configs, adopt)


def create_mirrors(link, names: list[str], source_topic: str | None = None,
                   config_pairs: Iterable[str] = (), timeout: float | None = None,
                   notes: list[str] | None = None, validate_only: bool = False) -> list:
    """Check every requested mirror first (so a refusal changes nothing), then create the
    destination topics and record the mirrors ACTIVE. Where the destination has an
    authorizer, each mirror is made read-only by ACL before its topic is created
    (readonly.py: the bindings made are in each record's `acls`); warnings are appended
    to `notes`. With validate_only, returns the MirrorPlans once everything is checked,
    having changed nothing."""
    from kafka_mirrors.kafka import topics
    from kafka_mirrors.readonly import ReadOnlyAcls, to_json
    if source_topic and len(names) != 1:
        raise UsageError("--source-topic needs exactly one TOPIC")
    if len(set(names)) != len(names):
        raise UsageError("a TOPIC is given twice")
    overrides = parse_configs(config_pairs)
    timeout = timeout or float(link.option("request.timeout.s"))
    src_admin, dst_admin = _admins(link, timeout)
    store = store_for(link, timeout)
    snapshot = store.snapshot()
    plans = [plan_mirror(link, n, source_topic, overrides, src_admin, dst_admin, snapshot) for n in names]
    read_only = ReadOnlyAcls(link, dst_admin)
    for plan in plans:
        read_only.check(plan.topic)
    notes = notes if notes is not None else []
    if read_only.note():
        notes.append(read_only.note())
    if validate_only:
        store.close()
        return plans
    rf = int(link.option("replication.factor"))
    out = []
    for plan in plans:
        # ACLs first: the topic never exists writable by others, and a refusal (e.g. the
        # principal may not alter ACLs) comes before anything else is created
        acls, changes = read_only.make_read_only(plan.topic)
        notes += [f"{plan.topic}: {w}" for w in changes.warnings]
        try:
            if plan.adopt:
                topics.alter_topic_configs(dst_admin, plan.topic, plan.configs)
            else:
                topics.create_topic(dst_admin, plan.topic, plan.partitions, rf, plan.configs)
        except KafkaMirrorsError:
            try:
                read_only.undo(changes.created)
            except KafkaMirrorsError:
                pass  # the topic error is the one to report
            raise
        rec = MirrorRecord(link=link.name, topic=plan.topic, source_topic=plan.source_topic, state=ACTIVE,
                           source_topic_id=plan.source_topic_id, partitions=plan.partitions,
                           config_overrides=overrides or None, acls=to_json(acls))
        store.put_mirror(rec)
        out.append(rec)
    store.close()
    return out


def create_mirror(link, name: str, source_topic: str | None = None, config_pairs: Iterable[str] = (),
                  timeout: float | None = None) -> MirrorRecord:
    return create_mirrors(link, [name], source_topic, config_pairs, timeout)[0]


# ---------------------------------------------------------------- list

def _links(registry, link_name: str | None) -> list:
    if link_name:
        return [registry.get(link_name)]
    links = registry.links()
    return [links[n] for n in sorted(links)]


def list_view(registry, link_name: str | None = None, state: str | None = None) -> dict:
    """{"mirrors": [...], "errors": [{"link", "error"}]}: a link whose destination cannot
    be read is reported in errors, the others still listed."""
    if state is not None:
        state = state.upper()
        if state not in STATES:
            raise UsageError(f"unknown state '{state}'", f"use one of {', '.join(STATES)}")
    mirrors, errors = [], []
    for link in _links(registry, link_name):
        try:
            snap = store_for(link, float(link.option("request.timeout.s"))).snapshot()
        except KafkaMirrorsError as exc:
            if link_name:
                raise
            errors.append({"link": link.name, "error": str(exc)})
            continue
        for topic, rec in sorted(snap.mirrors.items()):
            if state and rec.state != state:
                continue
            mirrors.append({"link": link.name, "topic": topic, "source_topic": rec.source_topic,
                            "state": rec.state, "reason": rec.reason, "partitions": rec.partitions,
                            "created_at": rec.created_at, "updated_at": rec.updated_at})
    return {"mirrors": mirrors, "errors": errors}


# ---------------------------------------------------------------- describe

def _worker_partitions(worker: dict) -> set[tuple[str, int]]:
    from kafka_mirrors.state import worker_partitions
    return worker_partitions(worker)


def worker_view(topic: str, workers: dict[str, dict], now: float,
                stale_after: float = WORKER_STALE_AFTER_S, last_progress_at: float | None = None) -> dict:
    """The freshest heartbeat of the workers serving `topic` (those listing one of its
    partitions, else any worker of the link) and the sentence describe prints. A worker
    that stopped cleanly deletes its heartbeat; its last progress report still dates it."""
    serving = {w: v for w, v in workers.items() if any(t == topic for t, _ in _worker_partitions(v))}
    candidates = serving or workers
    beats = [(float(v.get("heartbeat_at") or 0), w) for w, v in candidates.items()]
    if not beats and last_progress_at is None:
        return {"worker_ids": [], "last_heartbeat_at": None, "seconds_since_heartbeat": None,
                "status": "no worker has run", "workers_not_following_state": [], "workers_not_writing": {}}
    if not beats:
        ago = max(0, int(now - last_progress_at))
        return {"worker_ids": [], "last_heartbeat_at": None, "seconds_since_heartbeat": ago,
                "status": f"no worker seen for {ago} s", "workers_not_following_state": [],
                "workers_not_writing": {}}
    last, _ = max(beats)
    ago = max(0, int(now - last))
    status = f"no worker seen for {ago} s" if now - last > stale_after else f"last heartbeat {ago} s ago"
    blind = sorted(w for w, v in candidates.items() if v.get("state_store_error")
                   and now - float(v.get("heartbeat_at") or 0) <= stale_after)
    if blind:
        status += (f"; worker {blind[0]} cannot follow the state store "
                   f"({candidates[blind[0]]['state_store_error']}): it does not see pauses or failovers")
    # a worker whose view of the state store is not fresh writes nothing (its heartbeat's
    # not_writing says why): the copy of what it owns waits, it is not lost
    paused = {w: str(v["not_writing"]) for w, v in sorted(candidates.items())
              if v.get("not_writing") and now - float(v.get("heartbeat_at") or 0) <= stale_after}
    if paused:
        w = next(iter(paused))
        status += f"; worker {w} is not writing: {paused[w]}"
    return {"worker_ids": sorted(candidates), "last_heartbeat_at": last,
            "seconds_since_heartbeat": ago, "status": status,
            "workers_not_following_state": blind, "workers_not_writing": paused}


def partition_owners(topic: str, partitions: Iterable[int], workers: dict[str, dict],
                     now: float) -> dict[int, tuple[str, float]]:
    """{partition: (worker id, heartbeat_at)}: the worker whose freshest heartbeat names the
    partition's slot among its own (several workers share a link by slots), or, for a
    worker that reports no slots (older versions), names the partition among those it serves."""
    from kafka_mirrors.state import slot_of
    by_slot: dict[int, tuple[float, str]] = {}
    by_part: dict[int, tuple[float, str]] = {}
    for wid, w in workers.items():
        at = float(w.get("heartbeat_at") or 0)
        if isinstance(w.get("slots"), list):
            for k in w["slots"]:
                if isinstance(k, int) and (k not in by_slot or by_slot[k] < (at, wid)):
                    by_slot[k] = (at, wid)
        else:
            for t, p in _worker_partitions(w):
                if t == topic and (p not in by_part or by_part[p] < (at, wid)):
                    by_part[p] = (at, wid)
    out = {}
    for p in partitions:
        hit = by_slot.get(slot_of(topic, p)) or by_part.get(p)
        if hit is not None:
            out[p] = (hit[1], hit[0])
    return out


def build_mirror_view(rec: MirrorRecord, progress: dict[tuple[str, int], dict], workers: dict[str, dict],
                      source_offsets: dict | None, destination_ends: dict[int, int] | None,
                      now: float, source_error: str | None = None, destination_error: str | None = None,
                      stale_after: float = WORKER_STALE_AFTER_S) -> dict:
    """One mirror's describe view. `source_offsets` maps partition -> PartitionOffsets
    (None when the source cannot be reached: status SOURCE_UNAVAILABLE, lag unknown);
    `destination_ends` maps partition -> log end offset."""
    partitions = []
    # partitions the source added since the mirror was created show up too
    known = set(range(rec.partitions)) | set(source_offsets or {}) | set(destination_ends or {})
    owners = partition_owners(rec.topic, known, workers, now)
    for p in sorted(known):
        owner, beat = owners.get(p, (None, None))
        src = (source_offsets or {}).get(p)
        dst = (destination_ends or {}).get(p)
        prog = progress.get((rec.topic, p)) or {}
        lag = None
        if src is not None and dst is not None:
            lag = max(0, src.last_stable_offset - dst)
        partitions.append({
            "partition": p,
            "source_log_start_offset": src.log_start_offset if src else None,
            "source_last_stable_offset": src.last_stable_offset if src else None,
            "source_high_watermark": src.high_watermark if src else None,
            "destination_log_end_offset": dst,
            "lag": lag,
            "records_copied": prog.get("records_copied", 0),
            "fillers_written": prog.get("fillers_written", 0),
            "offsets_lost_to_source_retention": prog.get("offsets_lost_to_source_retention", 0),
            "progress_updated_at": prog.get("updated_at"),
            # the worker that copies it (its slot's owner) and how fresh its heartbeat is
            "owner": owner,
            "owner_seconds_since_heartbeat": None if beat is None else max(0, int(now - beat)),
            "owner_live": beat is not None and now - beat <= stale_after,
        })
    lags = [p["lag"] for p in partitions]
    total_lag = None if (not partitions or any(x is None for x in lags)) else sum(lags)
    status = rec.state
    if source_offsets is None and rec.state != STOPPED:
        # STOPPED mirrors no longer depend on the source, so its loss is no news for them
        status = "SOURCE_UNAVAILABLE"
    return {
        "link": rec.link,
        "topic": rec.topic,
        "source_topic": rec.source_topic,
        "source_topic_id": rec.source_topic_id,
        "state": rec.state,
        "status": status,
        "reason": rec.reason,
        "failed": rec.failed,
        "stopped": rec.stopped,
        "acls": rec.acls,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "source_error": source_error,
        "destination_error": destination_error,
        "lag": total_lag,
        "fillers_written": sum(p["fillers_written"] for p in partitions),
        "offsets_lost_to_source_retention": sum(p["offsets_lost_to_source_retention"] for p in partitions),
        "worker": worker_view(rec.topic, workers, now, stale_after,
                              max((p["progress_updated_at"] for p in partitions
                                   if p["progress_updated_at"] is not None), default=None)),
        # what a live worker is backing this mirror off from (it starts it again later)
        "copy_error": _copy_error(rec.topic, workers, now, stale_after),
        "partitions": partitions,
    }


def _copy_error(topic: str, workers: dict[str, dict], now: float, stale_after: float) -> str | None:
    for wid, w in sorted(workers.items()):
        if now - float(w.get("heartbeat_at") or 0) > stale_after:
            continue
        err = (w.get("mirror_errors") or {}).get(topic)
        if err:
            return f"worker {wid}: {err}"
    return None


class DescribeClients:
    """The admin clients and state store of each link, kept between describes: `describe
    --watch` describes every few seconds, and the store then reads only what is new
    (state.py) instead of the whole state topic with fresh clients each time."""

    def __init__(self):
        self._of: dict[str, tuple] = {}

    def get(self, link) -> tuple:
        if link.name not in self._of:
            timeout = float(link.option("request.timeout.s"))
            self._of[link.name] = (*_admins(link, timeout), store_for(link, timeout))
        return self._of[link.name]

    def close(self) -> None:
        for _, _, store in self._of.values():
            store.close()
        self._of.clear()


def _describe_link(link, topic: str | None, now: float, clients: DescribeClients | None = None) -> dict:
    from kafka_mirrors.kafka import topics
    if clients is not None:
        src_admin, dst_admin, store = clients.get(link)
    else:
        timeout = float(link.option("request.timeout.s"))
        src_admin, dst_admin = _admins(link, timeout)
        store = store_for(link, timeout)
    snap = store.snapshot()
    names = [resolve_mirror_name(snap, link, topic)] if topic else sorted(snap.mirrors)
    # every topic of the link described, and its offsets listed, in one request per kind
    # and cluster (describe of 1,000 mirrors made 5,000 round trips); a mirror whose part
    # of a batch failed is asked again on its own below, which names what went wrong
    dst_ends_of, src_offsets_of = _prefetch_ends(dst_admin, names), {}
    source_error = None
    try:
        src_offsets_of = _prefetch_source(src_admin, {snap.mirrors[n].source_topic for n in names})
    except KafkaUnavailableError as exc:
        source_error = str(exc)
    mirrors = []
    for name in names:
        rec = snap.mirrors[name]
        dst_error = None
        dst_ends = dst_ends_of.get(name)
        if dst_ends is None:
            try:
                info = topics.describe_topic(dst_admin, name)
                dst_ends = topics.list_offsets(dst_admin, name, range(info.partitions), "latest")
            except NotFoundError:
                dst_ends, dst_error = None, f"topic '{name}' does not exist on the {dst_admin.label}"
        src_offsets = None
        if source_error is None:
            src_offsets = src_offsets_of.get(rec.source_topic)
            try:
                if src_offsets is None:
                    src_info = topics.describe_topic(src_admin, rec.source_topic)
                    src_offsets = topics.partition_offsets(src_admin, rec.source_topic, range(src_info.partitions))
            except KafkaUnavailableError as exc:
                # one unreachable answer is enough: don't wait the timeout per mirror
                source_error = str(exc)
            except NotFoundError:
                mirrors.append(build_mirror_view(
                    rec, snap.progress, snap.workers, {}, dst_ends, now,
                    source_error=f"source topic '{rec.source_topic}' does not exist on the {src_admin.label}",
                    destination_error=dst_error))
                continue
        mirrors.append(build_mirror_view(rec, snap.progress, snap.workers, src_offsets, dst_ends, now,
                                         source_error=source_error, destination_error=dst_error))
    return {"link": link.name, "source_available": source_error is None, "source_error": source_error,
            "consumer_offset_sync": latest_offset_sync(snap.workers), "mirrors": mirrors}


def _prefetch_ends(admin, names: list[str]) -> dict[str, dict[int, int]]:
    """Log end offsets of every existing topic in `names`, batched; {} for any it could not
    batch (KafkaMirrorsError: the per-topic path asks again and reports it)."""
    from kafka_mirrors.kafka import topics
    try:
        found = {n: i.partitions for n, i in topics.describe_topics(admin, names).items()
                 if isinstance(i, topics.TopicInfo)}
        return topics.list_offsets_many(admin, {n: range(c) for n, c in found.items()}, "latest")
    except KafkaMirrorsError:
        return {}


def _prefetch_source(admin, names: set[str]) -> dict:
    """partition_offsets of every existing source topic in `names`, batched. An
    unreachable source raises KafkaUnavailableError (once, not once per mirror); any other
    failure leaves the per-topic path to report it."""
    from kafka_mirrors.kafka import topics
    described = topics.describe_topics(admin, names)
    for info in described.values():
        if isinstance(info, KafkaUnavailableError):
            raise info
    found = {n: i.partitions for n, i in described.items() if isinstance(i, topics.TopicInfo)}
    try:
        return topics.partition_offsets_many(admin, {n: range(c) for n, c in found.items()})
    except KafkaUnavailableError:
        raise
    except KafkaMirrorsError:
        return {}


def latest_offset_sync(workers: dict[str, dict]) -> dict | None:
    """The newest consumer-offset sync summary any worker of the link reported in its
    heartbeat (kafka_mirrors.offsetsync), or None when none did."""
    summaries = [w.get("consumer_offset_sync") for w in workers.values()]
    summaries = [x for x in summaries if isinstance(x, dict) and isinstance(x.get("at"), (int, float))]
    return max(summaries, key=lambda x: x["at"], default=None)


def describe_view(registry, link_name: str | None = None, topic: str | None = None,
                  now: float | None = None, clients: DescribeClients | None = None) -> dict:
    """{"links": [{"link", "source_available", "source_error", "mirrors": [...]}]}.
    With `clients`, the links' clients are kept there for the next describe."""
    now = time.time() if now is None else now
    return {"links": [_describe_link(link, topic, now, clients) for link in _links(registry, link_name)]}


# ---------------------------------------------------------------- health

def health_problems(view: dict, max_lag: int | None = None) -> list[str]:
    """What makes `--check` exit 1: a FAILED mirror, or (with max_lag) a mirror that is
    not STOPPED whose lag exceeds max_lag or cannot be measured."""
    problems = []
    for link in view["links"]:
        for m in link["mirrors"]:
            name = f"{m['link']}/{m['topic']}"
            if m["state"] == FAILED:
                where = ""
                if m.get("failed"):
                    f = m["failed"]
                    where = f" at partition {f.get('partition')} offset {f.get('offset')}"
                problems.append(f"mirror '{name}' is FAILED{where}: {m.get('reason') or 'no reason recorded'}")
            elif max_lag is not None and m["state"] != STOPPED:
                if m["lag"] is None:
                    why = m.get("source_error") or m.get("destination_error") or "offsets unavailable"
                    problems.append(f"mirror '{name}' lag unknown: {why}")
                elif m["lag"] > max_lag:
                    problems.append(f"mirror '{name}' lag {m['lag']} exceeds --max-lag {max_lag}")
    return problems
