"""Prometheus metrics of a running worker (`kafka-mirrors run --metrics-port N`).

    copy plane ──publishes──► plane.view (replaced whole, every 2 s)
                                  │ read
    Sampler (own thread, 0.5 s) ──┴─► Sample (replaced whole) ◄── read ── WorkerCollector
        └── every 5 s: ListOffsets for mirrors not being copied        (HTTP thread, at scrape)

Nothing here takes a lock the worker holds or puts anything on its queues: the collector
and the sampler only read what the worker already keeps (the copy plane's progress view,
the mirror records, the errors it is backing off from, the last offset sync) from their
own threads. The one thing the worker does not know is where the source of a mirror it
is not copying (PAUSED, FAILED, backing off) has got to: for those the sampler asks the
source itself (one ListOffsets per cluster, bounded by the link's timeouts), so their lag
keeps rising while they wait. docs/metrics.md says what every series means and how it is
approximated.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from kafka_mirrors import state as st
from kafka_mirrors.errors import KafkaMirrorsError, UsageError

log = logging.getLogger("kafka_mirrors.metrics")

SAMPLE_S = 0.5    # how often the sampler looks for a new progress view
LOOKUP_S = 5.0    # how often mirrors not being copied have their offsets listed
MAX_MARKS = 64    # (time, source end offset) marks kept per partition for lag in seconds
DEFAULT_HOST = "127.0.0.1"


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise UsageError(f"metrics port {port} is out of range: expected 1-65535",
                         "give e.g. --metrics-port 9405, or leave it out to serve no metrics")
    return port


# ---------------------------------------------------------------- what the sampler keeps

@dataclass
class PartitionSample:
    source_end: int | None = None        # source offset the lag is measured from
    destination_end: int | None = None   # destination log end offset (== next source offset to copy)
    # (time, source end offset) marks not yet reached by the copy, oldest first: the
    # oldest one's time is when the oldest uncopied record was first seen to exist
    marks: deque = field(default_factory=lambda: deque(maxlen=None))
    # monotonic totals: the copy plane's counters start at 0 again when a partition's copy
    # restarts (a pause, a back-off); the sampler folds each restart into a base
    seen: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)

    def total(self, key: str) -> int:
        return self.base.get(key, 0) + self.seen.get(key, 0)

    def note_offsets(self, now: float, source_end: int | None, destination_end: int | None) -> None:
        """Offsets seen at `now` (None: not known this time). Also used by `describe --watch`."""
        if destination_end is not None:
            self.destination_end = destination_end
        if source_end is not None:
            self.source_end = source_end
            if not self.marks or source_end > self.marks[-1][1]:
                if len(self.marks) >= MAX_MARKS:
                    self.marks.pop()  # keeps the oldest mark exact; only resolution is lost
                self.marks.append((now, source_end))
        while self.marks and self.destination_end is not None and self.marks[0][1] <= self.destination_end:
            self.marks.popleft()

    def lag_seconds(self, now: float) -> float | None:
        """Age of the oldest source record not yet copied (docs/metrics.md), None unknown."""
        if self.source_end is None or self.destination_end is None:
            return None
        since = self.lagging_since()
        return max(0.0, now - since) if since is not None and self.source_end > self.destination_end else 0.0

    def lagging_since(self) -> float | None:
        for t, end in self.marks:
            if self.destination_end is None or end > self.destination_end:
                return t
        return None


COUNTERS = ("records_copied", "records_fetched", "bytes_fetched", "bytes_copied", "fillers_written",
            "offsets_lost_to_source_retention")


class Sampler:
    """Folds the copy plane's view into per-partition samples, in a thread of its own."""

    def __init__(self, worker):
        self.w = worker
        self.parts: dict[tuple[str, int], PartitionSample] = {}
        self.lock = threading.Lock()   # between this thread and the scrape only
        self._serial = None
        self._next_lookup = 0.0
        self.lookup_error: str | None = None
        self.offset_sync_failures = 0   # groups that failed, summed over the syncs seen
        self._sync_at = None
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"metrics-{self.w.link.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick(time.time())
            except Exception as exc:  # noqa: BLE001 - metrics must never end the worker
                log.warning("[%s] metrics sampler: %s: %s", self.w.link.name, type(exc).__name__, exc)
            self.stop.wait(SAMPLE_S)

    def tick(self, now: float) -> None:
        serial, view = self.w.plane.view_serial, self.w.plane.view
        copying = self._copying()
        if serial != self._serial:
            self._serial = serial
            for topic, parts in view.items():
                fresh = topic in copying
                for p, prog in parts.items():
                    self._observe(topic, p, now, prog, prog.get("source_high_watermark") if fresh else None,
                                  prog.get("next_offset"))
        if now >= self._next_lookup:
            self._next_lookup = now + LOOKUP_S
            self._look_up(now, copying)
        sync = self.w.jobs.offset_sync
        if sync and sync.get("at") != self._sync_at:
            self._sync_at = sync.get("at")
            self.offset_sync_failures += len(sync.get("errors") or {})

    def _copying(self) -> set[str]:
        return {t for t, s in self.w.plane.status().items() if s.get("state") == "copying"}

    def _observe(self, topic: str, p: int, now: float, prog: dict | None, source_end: int | None,
                 destination_end: int | None) -> None:
        with self.lock:
            s = self.parts.get((topic, p))
            if s is None:
                s = self.parts[(topic, p)] = PartitionSample()
            if prog is not None:
                for key in COUNTERS:
                    raw = int(prog.get(key) or 0)
                    if raw < s.seen.get(key, 0):
                        s.base[key] = s.base.get(key, 0) + s.seen[key]
                    s.seen[key] = raw
            s.note_offsets(now, source_end, destination_end)

    def _look_up(self, now: float, copying: set[str]) -> None:
        """Offsets of the mirrors the worker holds but is not copying: the source's last
        stable offset and the destination's log end offset, one request per cluster."""
        from kafka_mirrors.kafka import topics as kt
        known = dict(self.w.known)
        waiting = {t: r for t, r in known.items() if t not in copying and r.state != st.STOPPED}
        if not waiting or not self.w.source.ok:
            return
        view = self.w.plane.view
        src_parts = {r.source_topic: sorted(set(range(max(r.partitions, 0))) | set(view.get(t, {})))
                     for t, r in waiting.items()}
        dst_parts = {t: src_parts[r.source_topic] for t, r in waiting.items()}
        try:
            src = kt.list_offsets_many(self.w.src_admin, src_parts, "last_stable")
            dst = kt.list_offsets_many(self.w.dst_admin, dst_parts, "latest")
        except KafkaMirrorsError as exc:
            self.lookup_error = str(exc)
            return
        self.lookup_error = None
        for t, r in waiting.items():
            for p, end in dst.get(t, {}).items():
                self._observe(t, p, now, None, src.get(r.source_topic, {}).get(p), end)

    def snapshot(self) -> dict[tuple[str, int], tuple[int | None, int | None, float | None, dict]]:
        with self.lock:
            return {k: (s.source_end, s.destination_end, s.lagging_since(), {c: s.total(c) for c in COUNTERS})
                    for k, s in self.parts.items()}


# ---------------------------------------------------------------- the collector

_ERROR_NAME = re.compile(r"\b(_?[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")


def error_kind(message: str) -> str:
    """A low-cardinality kind for a mirror's error: the Kafka error name in it when there
    is one (UNKNOWN_TOPIC_OR_PART, _MSG_TIMED_OUT), else a word for what happened."""
    if message.startswith("FAILED"):
        return "failed_not_recorded"
    m = _ERROR_NAME.search(message)
    if m:
        return m.group(1)
    low = message.lower()
    for words, kind in ((("did not answer", "timed out", "timeout"), "timeout"),
                        (("unreachable",), "unreachable"), (("refused", "authoriz"), "refused"),
                        (("does not exist", "not found"), "not_found"), (("unexpected",), "unexpected")):
        if any(w in low for w in words):
            return kind
    return "other"


class WorkerCollector:
    """Every series, built at scrape time from the worker's state and the sampler's."""

    def __init__(self, worker, sampler: Sampler, clock=time.time):
        self.w = worker
        self.sampler = sampler
        self.clock = clock

    def describe(self):
        return []  # series come and go with mirrors: nothing fixed to declare

    def collect(self):
        for _ in range(3):
            try:
                return self._collect()
            except RuntimeError:  # a dict of the worker's changed size while copied: read again
                continue
        return self._collect()

    def _collect(self):
        w, link, now = self.w, self.w.link.name, self.clock()
        known = dict(w.known)
        running = set(w.running)
        errors = dict(w.errors)
        status = w.plane.status()
        samples = self.sampler.snapshot()
        P = ["link", "mirror", "partition"]

        def g(name, doc, labels):
            return GaugeMetricFamily(f"kafka_mirrors_{name}", doc, labels=labels)

        def c(name, doc, labels):
            return CounterMetricFamily(f"kafka_mirrors_{name}", doc, labels=labels)

        lag = g("partition_lag_records", "Source last stable offset minus destination log end offset", P)
        lag_s = g("partition_lag_seconds", "Age of the oldest source record not yet copied (lower bound, "
                  "resolution of the progress view)", P)
        last = g("partition_last_copied_offset", "Last source offset written to the destination "
                 "(destination log end offset - 1)", P)
        src_end = g("partition_source_end_offset", "Source offset the lag is measured from", P)
        copied = c("partition_records_copied", "Source records written to the destination", P)
        fetched = c("partition_records_fetched", "Source records fetched (read_committed)", P)
        b_fetched = c("partition_bytes_fetched", "Bytes of keys and values fetched and handed to the "
                      "producer (ahead of bytes copied by the writes in flight)", P)
        b_copied = c("partition_bytes_copied", "Bytes of keys and values written to the destination "
                     "(counted as they are written)", P)
        fillers = c("partition_fillers_written", "Filler records written over source gaps", P)
        lost = c("partition_offsets_lost_to_source_retention",
                 "Source offsets deleted by retention before they were copied", P)
        max_lag = {}
        max_lag_s = {}
        for (topic, p), (source_end, dest_end, since, totals) in sorted(samples.items()):
            rec = known.get(topic)
            if rec is None or rec.state == st.STOPPED:
                continue
            labels = [link, topic, str(p)]
            if source_end is not None and dest_end is not None:
                n = max(0, source_end - dest_end)
                lag.add_metric(labels, n)
                secs = max(0.0, now - since) if (since is not None and n > 0) else 0.0
                lag_s.add_metric(labels, secs)
                max_lag[topic] = max(max_lag.get(topic, 0), n)
                max_lag_s[topic] = max(max_lag_s.get(topic, 0.0), secs)
            if source_end is not None:
                src_end.add_metric(labels, source_end)
            if dest_end is not None:
                last.add_metric(labels, dest_end - 1)
            copied.add_metric(labels, totals["records_copied"])
            fetched.add_metric(labels, totals["records_fetched"])
            b_fetched.add_metric(labels, totals["bytes_fetched"])
            b_copied.add_metric(labels, totals["bytes_copied"])
            fillers.add_metric(labels, totals["fillers_written"])
            lost.add_metric(labels, totals["offsets_lost_to_source_retention"])
        yield from (lag, lag_s, last, src_end, copied, fetched, b_fetched, b_copied, fillers, lost)

        state = g("mirror_state", "1 for the mirror's current state in the state store", ["link", "mirror", "state"])
        copy = g("mirror_copy_status", "1 for what this worker is doing with the mirror",
                 ["link", "mirror", "status"])
        m_lag = g("mirror_max_lag_records", "Largest partition lag of the mirror", ["link", "mirror"])
        err = g("mirror_error", "1 while the mirror backs off from an error, by kind", ["link", "mirror", "kind"])
        for topic, rec in sorted(known.items()):
            for s in st.STATES:
                state.add_metric([link, topic, s], 1.0 if rec.state == s else 0.0)
            doing = status.get(topic, {}).get("state") or "idle"
            for s in ("copying", "starting", "backoff", "stopping", "idle"):
                copy.add_metric([link, topic, s], 1.0 if doing == s else 0.0)
            if topic in max_lag:
                m_lag.add_metric([link, topic], max_lag[topic])
        by_kind: dict[str, int] = {}
        for topic, message in sorted(errors.items()):
            kind = error_kind(message)
            err.add_metric([link, topic, kind], 1.0)
            by_kind[kind] = by_kind.get(kind, 0) + 1
        yield from (state, copy, m_lag, err)

        L = ["link"]
        errs = g("link_client_errors", "Mirrors of the link backing off from an error now, by kind", L + ["kind"])
        for kind, n in sorted(by_kind.items()):
            errs.add_metric([link, kind], n)
        yield errs
        one = [
            ("link_max_lag_records", "Largest partition lag of the link", max(max_lag.values(), default=0)),
            ("link_max_lag_seconds", "Largest partition lag in seconds of the link",
             max(max_lag_s.values(), default=0.0)),
            ("source_reachable", "1 while the source cluster answers", 1.0 if w.source.ok else 0.0),
        ]
        beat = getattr(w, "last_heartbeat_at", None)
        if beat is not None:
            one.append(("heartbeat_age_seconds", "Seconds since this worker's heartbeat was last written",
                        max(0.0, now - beat)))
        sync = w.jobs.offset_sync
        if sync and sync.get("at"):
            one.append(("consumer_offset_sync_age_seconds", "Seconds since the last consumer offset sync finished",
                        max(0.0, now - float(sync["at"]))))
            one.append(("consumer_offset_sync_groups_failed", "Groups whose offsets the last sync could not copy",
                        len(sync.get("errors") or {})))
            one.append(("consumer_offset_sync_offsets_written", "Offsets the last sync wrote",
                        int(sync.get("offsets_written") or 0)))
        for name, doc, value in one:
            m = g(name, doc, L)
            m.add_metric([link], value)
            yield m
        f = c("consumer_offset_sync_group_failures", "Group failures summed over the syncs this worker ran", L)
        f.add_metric([link], self.sampler.offset_sync_failures)
        yield f

        serving = set(running) | {t for t, r in known.items() if r.state == st.ACTIVE}
        parts = 0
        for t in serving:
            rec = known.get(t)
            parts += len(set(status.get(t, {}).get("partitions") or ()) | set(range(rec.partitions if rec else 0)))
        W = ["link", "worker_id"]
        for name, doc, value in (
                ("worker_partitions_served", "Mirror partitions this worker answers for (the heartbeat's "
                 "serving)", parts),
                ("worker_mirrors_served", "Mirrors this worker answers for", len(serving)),
                ("worker_mirrors_copying", "Mirrors this worker is copying now",
                 sum(1 for s in status.values() if s.get("state") == "copying"))):
            m = g(name, doc, W)
            m.add_metric([link, w.worker_id], value)
            yield m


# ---------------------------------------------------------------- the server

class MetricsServer:
    def __init__(self, worker, host: str, port: int):
        self.w = worker
        self.host = host
        self.port = check_port(port)
        self.sampler = Sampler(worker)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkerCollector(worker, self.sampler))
        self._server = None

    def start(self) -> "MetricsServer":
        from prometheus_client import start_http_server
        try:
            self._server, _ = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise KafkaMirrorsError(f"metrics cannot be served on {self.host}:{self.port}: "
                                    f"{exc.strerror or exc}",
                                    "pick a free port with --metrics-port, or stop what holds it") from None
        self.sampler.start()
        log.info("[%s] metrics on http://%s:%d/metrics", self.w.link.name, self.host, self.port)
        return self

    def close(self) -> None:
        self.sampler.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
