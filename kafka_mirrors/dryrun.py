"""What promote or failover would do, with nothing written: the `--dry-run` of the
Confluent-style flags. The same selection as dr.promote/dr.failover (a named mirror in a
state the action does not take is an error row), then what each partition stands at now:

- promote: the source's last stable offset against the destination log end offset (the
  lag promote would wait to reach 0; the source must be reachable, as for promote);
- failover: the destination log end offset against the last source offset a worker
  reported (what would be possibly lost; the source is never contacted).

Rows have the shape of dr's stopped rows plus `"dry_run": true`, and `state` is the
mirror's current state: the state store, the topics and the ACLs are only read.
"""
from __future__ import annotations

import time

from kafka_mirrors import dr
from kafka_mirrors.errors import KafkaMirrorsError
from kafka_mirrors.state import ACTIVE, FAILED, PAUSED, PENDING_STOPPED

# the states dr.promote and dr.failover act on
ALLOWED = {"promote": (ACTIVE, PAUSED), "failover": (ACTIVE, PAUSED, PENDING_STOPPED, FAILED)}
REASON = {"promote": "promoted", "failover": "failed over"}


def _promote_partitions(src_admin, dst_admin, rec) -> dict[str, dict]:
    offs = dr._lags(src_admin, dst_admin, rec.source_topic, rec.topic)
    return {str(p): {"destination_log_end_offset": d, "last_known_source_offset": s,
                     "records_possibly_lost": max(0, s - d)} for p, (s, d) in offs.items()}


def _failover_partitions(snap, topic: str, leos: dict[int, int]) -> dict[str, dict]:
    out = {}
    for p, leo in sorted(leos.items()):
        src = dr.last_known_source_offset(snap.progress.get((topic, p)))
        out[str(p)] = {"destination_log_end_offset": leo, "last_known_source_offset": src,
                       "records_possibly_lost": dr.partition_rpo(leo, src)}
    return out


def stop_plan(link, names: list[str], all_: bool, verb: str) -> list[dict]:
    """One row per mirror promote/failover (`verb`) would stop, or per refusal."""
    store = dr._store(link)
    try:
        snap = store.snapshot()
        chosen, rows = dr.select(snap, link, names, all_, ALLOWED[verb], verb)
        if not chosen:
            return rows
        now = time.time()
        dst_admin = dr._dst_admin(link)
        src_admin = dr._src_admin(link) if verb == "promote" else None
        ends = {} if verb == "promote" else dr._destination_ends_many(dst_admin, chosen)
        for topic in chosen:
            rec = snap.mirrors[topic]
            try:
                if verb == "promote":
                    parts = _promote_partitions(src_admin, dst_admin, rec)
                else:
                    parts = _failover_partitions(snap, topic, ends.get(topic) or dr._destination_ends(dst_admin, topic))
            except KafkaMirrorsError as exc:
                rows.append({"topic": topic, "ok": False, "state": rec.state, "dry_run": True,
                             "error": f"mirror '{topic}' would not be {REASON[verb]}: {exc}"})
                continue
            known = [v["records_possibly_lost"] for v in parts.values()]
            rows.append({"topic": topic, "ok": True, "state": rec.state, "error": None, "dry_run": True,
                         "reason": REASON[verb], "partitions": parts,
                         "workers": dr.live_workers_for(snap, topic, now), "workers_not_acked": [],
                         "records_possibly_lost": None if any(k is None for k in known) else sum(known)})
        return sorted(rows, key=lambda r: r["topic"])
    finally:
        store.close()
