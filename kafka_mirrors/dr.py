"""DR operations on mirrors (docs/architecture.md section 2): pause and resume, promote (planned:
the source is reachable and the mirror reaches lag 0 first) and failover (disaster: the
source is never contacted; stop now and report what may be lost).

Promote and failover fence the workers through the state store: the mirror goes to
PENDING_STOPPED, every live worker copying it stops its copiers (flushing in-flight
writes) and acknowledges, and only then is the mirror marked STOPPED with the offsets it
stopped at. A worker that does not acknowledge within the bound is named in the result.

Services return plain rows (dicts) and never print; the CLI renders them. The pure parts
(which workers are live, who still owes an ack, the per-partition RPO) are unit tested.

State reads stay cheap however long workers have run: one snapshot per command, then the
store's incremental reads (state.py); every write is conditional on the record the command
read (set_state(..., current=rec)): a mirror whose state changed meanwhile is an error row,
never overwritten. The PENDING_STOPPED records of a command go out in one flush.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from kafka_mirrors.errors import KafkaMirrorsError, UsageError
from kafka_mirrors.mirrors import _worker_partitions, resolve_mirror_name
from kafka_mirrors.readonly import AclStepError
from kafka_mirrors.state import (
    ACTIVE,
    FAILED,
    PAUSED,
    PENDING_STOPPED,
    STOPPED,
    MirrorRecord,
    StateSnapshot,
    StateStore,
    mirror_key,
)

# A worker whose heartbeat (every 2 s) is older than this is presumed dead: nobody waits
# for its acknowledgement.
WORKER_ALIVE_S = 10.0
# How long promote/failover wait for the live workers to acknowledge the stop. Failover
# must return within 5 s even with the source gone: a worker acknowledges within about
# 1 s then (it never waits long on the source), and one that does not is named.
ACK_WAIT_S = 10.0
FAILOVER_ACK_WAIT_S = 4.0
POLL_S = 0.3


# ---------------------------------------------------------------- pure helpers

def live_workers_for(snap: StateSnapshot, topic: str, now: float, alive_s: float = WORKER_ALIVE_S) -> list[str]:
    """Workers with a fresh heartbeat that list a partition of `topic`, or that are one
    of the link's group of workers (every one of those): those must ack."""
    return live_workers_by_topic(snap, [topic], now, alive_s)[topic]


def live_workers_by_topic(snap: StateSnapshot, topics: Iterable[str], now: float,
                          alive_s: float = WORKER_ALIVE_S) -> dict[str, list[str]]:
    """live_workers_for of many topics, reading each heartbeat once (1,000 mirrors of a
    --all would otherwise parse every heartbeat 1,000 times)."""
    served: dict[str, set[str] | None] = {}
    for wid, w in snap.workers.items():
        if now - float(w.get("heartbeat_at") or 0) > alive_s:
            continue
        # a worker of a group (it reports its slots) answers for every mirror of the link:
        # a slot may move to it at any moment, and it acknowledges every stop it sees
        served[wid] = None if "slots" in w else {t for t, _ in _worker_partitions(w)}
    return {t: sorted(wid for wid, ts in served.items() if ts is None or t in ts) for t in topics}


def missing_acks(snap: StateSnapshot, topic: str, workers: Iterable[str], since: float,
                 since_offset: int | None = None) -> list[str]:
    """The workers that have not acknowledged a stop of `topic` written at `since` (this
    host's clock), at offset `since_offset` of the state topic. An acknowledgement counts
    when the worker had applied that record: its seen_offset lies beyond it. The clocks of
    two hosts are compared only for a worker that does not report seen_offset (older
    versions), or when the offset of the stop is unknown."""
    out = []
    for wid in workers:
        ack = snap.acks.get((topic, wid)) or {}
        if ack.get("state") != "stopped":
            out.append(wid)
        elif since_offset is not None and isinstance(ack.get("seen_offset"), int):
            if ack["seen_offset"] <= since_offset:
                out.append(wid)
        elif float(ack.get("at") or 0) < since:
            out.append(wid)
    return sorted(out)


def last_known_source_offset(progress: dict | None) -> int | None:
    """The newest source offset a worker reported for a partition, if it reports one."""
    progress = progress or {}
    for key in ("source_last_stable_offset", "source_high_watermark", "source_log_end_offset"):
        if isinstance(progress.get(key), int):
            return progress[key]
    return None


def partition_rpo(destination_log_end_offset: int, last_source_offset: int | None) -> int | None:
    """Records possibly lost: what the source was known to hold beyond what was copied."""
    if last_source_offset is None:
        return None
    return max(0, last_source_offset - destination_log_end_offset)


# ---------------------------------------------------------------- selection

def _timeout(link) -> float:
    return float(link.option("request.timeout.s"))


def _store(link) -> StateStore:
    return StateStore(link.destination.client_config(), link.name, _timeout(link))


def _dst_admin(link):
    from kafka_mirrors.kafka.admin import Admin
    dst = link.destination.client_config()
    return Admin(dst, f"destination cluster {dst.get('bootstrap.servers', '?')}", _timeout(link))


def _src_admin(link):
    from kafka_mirrors.kafka.admin import Admin
    src = link.source.client_config()
    return Admin(src, f"source cluster {src.get('bootstrap.servers', '?')}", _timeout(link))


def select(snap: StateSnapshot, link, names: list[str], all_: bool, allowed: tuple[str, ...],
           verb: str) -> tuple[list[str], list[dict]]:
    """(mirror topics to act on, error rows) for TOPIC... or --all. --all takes the
    mirrors in an allowed state; a named mirror in another state is an error row."""
    if all_ and names:
        raise UsageError("give TOPIC... or --all, not both")
    if not all_ and not names:
        raise UsageError(f"nothing to {verb}: give TOPIC... or --all")
    if all_:
        return sorted(t for t, r in snap.mirrors.items() if r.state in allowed), []
    chosen, errors = [], []
    for name in names:
        try:
            topic = resolve_mirror_name(snap, link, name)
        except KafkaMirrorsError as exc:
            errors.append({"topic": name, "ok": False, "error": str(exc)})
            continue
        state = snap.mirrors[topic].state
        if state not in allowed:
            errors.append({"topic": topic, "ok": False, "state": state,
                           "error": f"mirror '{topic}' is {state}; {verb} needs {' or '.join(allowed)}"})
        elif topic not in chosen:
            chosen.append(topic)
    return chosen, errors


# ---------------------------------------------------------------- pause / resume

def _transition(link, names, all_, allowed, to_state, verb) -> list[dict]:
    store = _store(link)
    try:
        snap = store.snapshot()
        chosen, rows = select(snap, link, names, all_, allowed, verb)
        try:
            written = store.set_state_many([snap.mirrors[t] for t in chosen], to_state, reason=verb)
        except KafkaMirrorsError as exc:
            written = {t: exc for t in chosen}
        for topic in chosen:
            rec = written[topic]
            if isinstance(rec, KafkaMirrorsError):
                rows.append({"topic": topic, "ok": False, "error": str(rec)})
            else:
                rows.append({"topic": topic, "ok": True, "state": rec.state, "error": None})
        return sorted(rows, key=lambda r: r["topic"])
    finally:
        store.close()


def pause(link, names: list[str], all_: bool = False) -> list[dict]:
    """ACTIVE -> PAUSED; the worker stops copying those mirrors."""
    return _transition(link, names, all_, (ACTIVE,), PAUSED, "pause")


def resume(link, names: list[str], all_: bool = False) -> list[dict]:
    """PAUSED -> ACTIVE; the worker resumes from the destination log end offset."""
    return _transition(link, names, all_, (PAUSED,), ACTIVE, "resume")


# ---------------------------------------------------------------- fencing

def _fence(store: StateStore, records: list[MirrorRecord], reason: str, ack_wait: float,
           clock: Callable[[], float] = time.time,
           sleep: Callable[[float], None] = time.sleep) -> tuple[dict[str, dict], dict[str, KafkaMirrorsError]]:
    """PENDING_STOPPED for every mirror in `records` (as the caller read them) in one
    flush, then wait (bounded) until each live worker copying it acknowledged. Returns
    ({topic: {"workers": [...], "not_acked": [...], "record": the PENDING_STOPPED record}},
    {topic: why it was not fenced}: gone, or its state changed since the caller read it)."""
    before = store.snapshot(copy=False)
    now = clock()
    owed = live_workers_by_topic(before, [r.topic for r in records], now)
    try:
        written = store.set_state_many(records, PENDING_STOPPED, reason=reason)
    except KafkaMirrorsError as exc:
        return {}, {r.topic: exc for r in records}
    errors = {t: r for t, r in written.items() if isinstance(r, KafkaMirrorsError)}
    done = {t: r for t, r in written.items() if not isinstance(r, KafkaMirrorsError)}
    at = {t: store.last_write_offsets.get(mirror_key(store.link, t)) for t in done}
    pending = {t: list(owed[t]) for t in done}
    deadline = clock() + ack_wait
    while any(pending.values()) and clock() < deadline:
        sleep(POLL_S)
        snap = store.snapshot(copy=False)
        pending = {t: missing_acks(snap, t, w, done[t].updated_at, at[t]) if w else []
                   for t, w in pending.items()}
    return {t: {"workers": owed[t], "not_acked": pending[t], "record": done[t]} for t in done}, errors


def _unfenced_row(topic: str, exc: KafkaMirrorsError, verb: str) -> dict:
    return {"topic": topic, "ok": False, "state": None, "error": f"mirror '{topic}' not {verb}: {exc}"}


def _lift_and_fence(link, store: StateStore, admin, topic: str, recorded_json: list | None,
                    verb: str, current: MirrorRecord | None = None) -> tuple[list | None, dict | None]:
    """Where the destination has an authorizer: lift the read-only ACLs recorded for the
    mirror (others may write now) and deny the link's principal WRITE (fencing). Returns
    (bindings to record, the row's "acls" view, None when no ACLs are managed). On a
    failure, records what was created and raises: the mirror stays PENDING_STOPPED."""
    from kafka_mirrors.readonly import ReadOnlyAcls, from_json, to_json
    read_only = ReadOnlyAcls(link, admin)
    recorded = from_json(recorded_json)
    try:
        kept, changes = read_only.release_and_fence(topic, recorded)
    except AclStepError as exc:
        store.set_state(topic, PENDING_STOPPED, reason=verb, acls=to_json(exc.recorded), current=current)
        raise AclStepError(f"mirror '{topic}' left PENDING_STOPPED: {exc.message}" +
                           (f" ({exc.hint})" if exc.hint else ""),
                           f"run 'kafka-mirrors failover {topic} --link {link.name}' to finish",
                           exc.recorded, exc.changes) from None
    managed = bool(recorded or kept or changes)
    return to_json(kept), (changes.view() if managed else None)


def _destination_ends(admin, topic: str) -> dict[int, int]:
    from kafka_mirrors.kafka import topics as kt
    info = kt.describe_topic(admin, topic)
    return kt.list_offsets(admin, topic, range(info.partitions), "latest")


def _destination_ends_many(admin, topics: list[str]) -> dict[str, dict[int, int]]:
    """_destination_ends of many topics in two requests (describe, list offsets), not two
    per topic (2,000 round trips would not fit failover's 5 s at 1,000 mirrors). A topic
    missing from the answer (its part failed) is left to _destination_ends, whose typed
    error names what went wrong."""
    from confluent_kafka import TopicCollection, TopicPartition
    from confluent_kafka.admin import OffsetSpec
    if not topics:
        return {}
    counts: dict[str, int] = {}
    ends: dict[str, dict[int, int]] = {}
    bad: set[str] = set()
    try:
        described = admin.client.describe_topics(TopicCollection(list(topics)), request_timeout=admin.timeout)
        for topic, fut in described.items():
            try:
                counts[topic] = len(fut.result(timeout=admin.timeout).partitions)
            except Exception:  # noqa: BLE001 - asked again on its own, which types the error
                pass
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, n in counts.items() for p in range(n)}
        if request:
            for tp, fut in admin.client.list_offsets(request, request_timeout=admin.timeout).items():
                try:
                    ends.setdefault(tp.topic, {})[tp.partition] = fut.result(timeout=admin.timeout).offset
                except Exception:  # noqa: BLE001 - as above
                    bad.add(tp.topic)
    except Exception:  # noqa: BLE001 - the per-topic path reports it
        return {}
    return {t: ends[t] for t in counts if t in ends and t not in bad and len(ends[t]) == counts[t]}


# ---------------------------------------------------------------- failover

def failover(link, names: list[str], all_: bool = False, ack_wait: float = FAILOVER_ACK_WAIT_S) -> list[dict]:
    """Stop the mirrors now, whatever their lag, using the destination only. One row per
    topic: partitions with destination log end offset, last known source offset and
    records possibly lost (null when the source offset was never reported)."""
    store = _store(link)
    try:
        snap = store.snapshot()
        chosen, rows = select(snap, link, names, all_, (ACTIVE, PAUSED, PENDING_STOPPED, FAILED), "failover")
        if not chosen:
            return rows
        fenced, unfenced = _fence(store, [snap.mirrors[t] for t in chosen], "failover", ack_wait)
        rows += [_unfenced_row(t, exc, "failed over") for t, exc in unfenced.items()]
        after = store.snapshot(copy=False)
        admin = _dst_admin(link)
        stops: dict[str, dict] = {}  # written together at the end: one flush, not one per mirror
        all_ends = _destination_ends_many(admin, sorted(fenced))
        for topic in sorted(fenced):
            pending = fenced[topic]["record"]
            try:
                ends = all_ends.get(topic) or _destination_ends(admin, topic)
                parts = {}
                for p, leo in sorted(ends.items()):
                    src = last_known_source_offset(after.progress.get((topic, p)))
                    parts[str(p)] = {"destination_log_end_offset": leo, "last_known_source_offset": src,
                                     "records_possibly_lost": partition_rpo(leo, src)}
                stopped = {"reason": "failed over", "at": time.time(), "partitions": parts,
                           "workers_not_acked": fenced[topic]["not_acked"]}
                acls, acl_view = _lift_and_fence(link, store, admin, topic, pending.acls, "failover", pending)
                if acl_view is not None:
                    # ACLs changed: recorded at once, so a crash cannot lose what was changed
                    store.set_state(topic, STOPPED, reason="failed over", stopped=stopped, acls=acls,
                                    current=pending)
                    rows.append(_stopped_row(topic, stopped, fenced[topic]) | {"acls": acl_view})
                else:
                    stops[topic] = {"stopped": stopped, "acls": acls}
            except AclStepError as exc:
                rows.append({"topic": topic, "ok": False, "state": PENDING_STOPPED, "error": str(exc),
                             "acls": exc.changes.view()})
            except KafkaMirrorsError as exc:
                rows.append({"topic": topic, "ok": False, "state": PENDING_STOPPED, "error": str(exc)})
        if stops:
            try:
                written = store.set_state_many([fenced[t]["record"] for t in stops], STOPPED,
                                               reason="failed over", per_mirror=stops)
            except KafkaMirrorsError as exc:
                written = {t: exc for t in stops}
            for topic, rec in written.items():
                if isinstance(rec, KafkaMirrorsError):
                    rows.append({"topic": topic, "ok": False, "state": PENDING_STOPPED,
                                 "error": f"mirror '{topic}' left PENDING_STOPPED: {rec}; "
                                          f"run 'kafka-mirrors failover {topic} --link {link.name}' to finish"})
                else:
                    rows.append(_stopped_row(topic, stops[topic]["stopped"], fenced[topic]) | {"acls": None})
        return sorted(rows, key=lambda r: r["topic"])
    finally:
        store.close()


def _stopped_row(topic: str, stopped: dict, fence: dict) -> dict:
    known = [v["records_possibly_lost"] for v in stopped["partitions"].values()]
    return {"topic": topic, "ok": True, "state": STOPPED, "error": None, "reason": stopped["reason"],
            "partitions": stopped["partitions"], "workers": fence["workers"],
            "workers_not_acked": fence["not_acked"],
            "records_possibly_lost": None if any(k is None for k in known) else sum(known)}


# ---------------------------------------------------------------- promote

def _lags(src_admin, dst_admin, source_topic: str, topic: str) -> dict[int, tuple[int, int]]:
    """{partition: (source last stable offset, destination log end offset)}."""
    from kafka_mirrors.kafka import topics as kt
    info = kt.describe_topic(src_admin, source_topic)
    lso = kt.list_offsets(src_admin, source_topic, range(info.partitions), "last_stable")
    dst = _destination_ends(dst_admin, topic)
    return {p: (lso[p], dst.get(p, 0)) for p in sorted(lso)}


def _final_offset_sync(link, src_admin, dst_admin, topic: str, source_topic: str) -> dict | None:
    """Promote's last consumer-offset copy for one mirror (None when the link does not
    sync offsets). Raises when it failed, for any group: promote must not pretend."""
    from kafka_mirrors.errors import KafkaOperationError
    from kafka_mirrors.offsetsync import sync_consumer_offsets
    if not link.option("consumer.offset.sync.enable"):
        return None
    summary = sync_consumer_offsets(src_admin, dst_admin, link, {topic: source_topic})
    if summary.errors:
        group, err = sorted(summary.errors.items())[0]
        raise KafkaOperationError(f"consumer offsets of group '{group}' not copied: {err}")
    return summary.to_json()


def _offset_sync_failed(link, store: StateStore, topic: str, state: str, exc: KafkaMirrorsError,
                        pending: MirrorRecord | None = None) -> dict:
    """The mirror goes back to the state it had: nothing was promoted."""
    try:
        store.set_state(topic, state, reason="promote failed: consumer offsets not copied", current=pending)
    except KafkaMirrorsError as again:
        return {"topic": topic, "ok": False, "state": PENDING_STOPPED,
                "error": f"mirror '{topic}' not promoted: {exc}; and it was left PENDING_STOPPED: {again}; "
                         f"run 'kafka-mirrors failover {topic} --link {link.name}' to stop it anyway"}
    return {"topic": topic, "ok": False, "state": state,
            "error": f"mirror '{topic}' not promoted: the last consumer offset copy failed: {exc}; state "
                     f"unchanged ({state}); fix the cause, then run 'kafka-mirrors promote {topic} "
                     f"--link {link.name}' again"}


def promote(link, names: list[str], all_: bool = False, timeout: float = 60.0,
            ack_wait: float = ACK_WAIT_S) -> list[dict]:
    """Wait until every partition's destination log end offset reaches the source's last
    stable offset (at most `timeout` s), then fence the workers and mark STOPPED
    ("promoted"). A mirror that cannot reach lag 0 is left as it was."""
    store = _store(link)
    try:
        snap = store.snapshot()
        chosen, rows = select(snap, link, names, all_, (ACTIVE, PAUSED), "promote")
        if not chosen:
            return rows
        src_admin, dst_admin = _src_admin(link), _dst_admin(link)
        deadline = time.monotonic() + timeout
        ready: dict[str, dict] = {}
        waiting = {t: None for t in chosen}
        while waiting:
            for topic in list(waiting):
                try:
                    offs = _lags(src_admin, dst_admin, snap.mirrors[topic].source_topic, topic)
                except KafkaMirrorsError as exc:
                    rows.append({"topic": topic, "ok": False, "state": snap.mirrors[topic].state,
                                 "error": f"mirror '{topic}' not promoted: {exc}"})
                    del waiting[topic]
                    continue
                if all(dst >= src for src, dst in offs.values()):
                    ready[topic] = offs
                    del waiting[topic]
                else:
                    waiting[topic] = offs
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        now = time.time()
        for topic, offs in waiting.items():
            lag = sum(max(0, s - d) for s, d in (offs or {}).values())
            state = snap.mirrors[topic].state
            if state == PAUSED:
                hint = f"run 'kafka-mirrors mirror resume {topic} --link {link.name}' and a worker first"
            elif not live_workers_for(store.snapshot(copy=False), topic, now):
                hint = f"no worker is copying it; run 'kafka-mirrors run --link {link.name}', then promote again"
            else:
                hint = "wait for the producers on the source to stop, or pass a longer --timeout"
            rows.append({"topic": topic, "ok": False, "state": state,
                         "error": f"mirror '{topic}' not promoted: still {lag} record(s) behind the source's "
                                  f"last stable offset after {timeout:g} s; state unchanged ({state}); {hint}"})
        if ready:
            fenced, unfenced = _fence(store, [snap.mirrors[t] for t in sorted(ready)], "promote", ack_wait)
            rows += [_unfenced_row(t, exc, "promoted") for t, exc in unfenced.items()]
            for topic in sorted(fenced):
                pending = fenced[topic]["record"]
                # the workers are fenced and lag is 0: copy consumer offsets one last time
                try:
                    synced = _final_offset_sync(link, src_admin, dst_admin, topic, snap.mirrors[topic].source_topic)
                except KafkaMirrorsError as exc:
                    rows.append(_offset_sync_failed(link, store, topic, snap.mirrors[topic].state, exc, pending))
                    continue
                try:
                    offs = _lags(src_admin, dst_admin, snap.mirrors[topic].source_topic, topic)
                    parts = {str(p): {"destination_log_end_offset": d, "last_known_source_offset": s,
                                      "records_possibly_lost": max(0, s - d)} for p, (s, d) in offs.items()}
                    stopped = {"reason": "promoted", "at": time.time(), "partitions": parts,
                               "workers_not_acked": fenced[topic]["not_acked"]}
                    acls, acl_view = _lift_and_fence(link, store, dst_admin, topic, pending.acls, "promote", pending)
                    store.set_state(topic, STOPPED, reason="promoted", stopped=stopped, acls=acls, current=pending)
                    rows.append(_stopped_row(topic, stopped, fenced[topic]) | {"acls": acl_view,
                                                                                "consumer_offsets": synced})
                except AclStepError as exc:
                    rows.append({"topic": topic, "ok": False, "state": PENDING_STOPPED, "error": str(exc),
                                 "acls": exc.changes.view()})
                except KafkaMirrorsError as exc:
                    rows.append({"topic": topic, "ok": False, "state": PENDING_STOPPED,
                                 "error": f"mirror '{topic}' left PENDING_STOPPED: {exc}; "
                                          f"run 'kafka-mirrors failover {topic} --link {link.name}' to finish"})
        return sorted(rows, key=lambda r: r["topic"])
    finally:
        store.close()

