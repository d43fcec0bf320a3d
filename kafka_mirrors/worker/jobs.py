"""The worker's periodic jobs around the copy, in a thread of their own: following the
source's metadata (new partitions, a deleted or re-created source topic), topic config
sync, the read-only ACL re-check, consumer-offset sync and auto-created mirrors. Every
worker of a link follows the metadata (each starts the new partitions of its own slots);
the rest is done by one, the owner of slot 0 (worker/membership.py).

Each can take seconds (a slow cluster, many groups), so none runs in the control loop
(which must acknowledge stops within about 1 s) nor in the copy thread. They talk to the
others only through messages: a command to the copy plane (new partitions, fail a
mirror), a note to the control loop (the source looks unreachable).
"""
from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaException

from kafka_mirrors import state as st
from kafka_mirrors.errors import KafkaMirrorsError, KafkaUnavailableError
from kafka_mirrors.kafka import topics as kt
from kafka_mirrors.mirrors import mirror_configs
from kafka_mirrors.offsetsync import sync_consumer_offsets
from kafka_mirrors.worker.tasks import Command, SourceTopicChanged, add_destination_partitions, source_topic

log = logging.getLogger("kafka_mirrors.worker")

METADATA_S = 5.0  # partitions, topic identity; topic configs every topic.config.sync.ms
AUTO_CREATE_S = 5.0


class Jobs:
    def __init__(self, worker):
        self.w = worker
        link = worker.link
        self.name = link.name
        self.config_sync_s = int(link.option("topic.config.sync.ms")) / 1000.0
        self.offset_sync_enabled = bool(link.option("consumer.offset.sync.enable"))
        self.offset_sync_s = int(link.option("consumer.offset.sync.ms")) / 1000.0
        self.offset_sync: dict | None = None  # the last sync's summary, for the heartbeat
        # the offset sync's own admin clients, made again after a failed sync: a kept
        # librdkafka admin client can stay stuck once its broker restarted or its connections
        # were reset (ListOffsets answered FENCED_LEADER_EPOCH for a minute and more, group
        # offsets listings never answered again), while a new client is served at once
        self._sync_admins = None
        # a state store of this thread's own: a StateStore's reader, producer and cached
        # snapshot are used by one thread at a time, and the control loop writes through its
        # store all the while (two threads' reads interleaving on one consumer mixed up the
        # records each folded)
        self.store = st.StateStore(worker.dst_conf, link.name, worker.store.timeout)
        self.partitions_seen: dict[str, int] = {}
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"jobs-{self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            try:
                self.store.close()
            except KafkaMirrorsError as exc:
                log.debug("closing the jobs' state store: %s", exc)

    def _run(self) -> None:
        now = time.monotonic()
        due = {"metadata": now + METADATA_S, "configs": now + METADATA_S,
               "offsets": now + min(self.offset_sync_s, METADATA_S), "auto": now}
        while not self.stop.wait(0.2):
            if not self.w.source.ok:
                continue
            now = time.monotonic()
            if now >= due["metadata"]:
                self._guard("following source metadata", self.follow_source_metadata)
                due["metadata"] = time.monotonic() + METADATA_S
            if not self.w.leads():
                continue  # one worker of the link syncs configs, ACLs and offsets, and auto-creates
            if now >= due["configs"]:
                self._guard("topic config sync", self.sync_configs)
                due["configs"] = time.monotonic() + self.config_sync_s
            if self.offset_sync_enabled and now >= due["offsets"]:
                self._guard("consumer offset sync", self.sync_offsets)
                due["offsets"] = time.monotonic() + self.offset_sync_s
            if self.w.auto_create is not None and now >= due["auto"]:
                self._guard("auto-creating mirrors", self.auto_create)
                due["auto"] = time.monotonic() + AUTO_CREATE_S

    def _guard(self, what: str, fn) -> None:
        try:
            fn()
        except (KafkaMirrorsError, KafkaException) as exc:
            log.warning("[%s] %s: %s", self.name, what, exc)
            if isinstance(exc, KafkaUnavailableError) and self.w.src_admin.label in str(exc):
                # only the source's silence pauses copying: an unanswered call to the
                # destination (offset sync, auto-create, the ACL re-check) is not the source
                # being down, and the copy's own writes say soon enough if it is
                self.w.notes.put(("suspect", str(exc)))
        except Exception as exc:  # noqa: BLE001 - a job's bug must not end the worker
            log.error("[%s] %s failed unexpectedly: %s: %s", self.name, what, type(exc).__name__, exc)

    def _copied(self) -> dict[str, st.MirrorRecord]:
        known = dict(self.w.known)
        return {t: known[t] for t in list(self.w.running) if t in known}

    def follow_source_metadata(self) -> None:
        for topic, rec in sorted(self._copied().items()):
            if self.stop.is_set():
                return
            try:
                info = source_topic(self.w.src_admin, rec)
            except SourceTopicChanged as exc:
                self.w.plane.inbox.put(Command("fail", topic, error=str(exc)))
                continue
            except KafkaUnavailableError as exc:
                # one unanswered call is enough: don't wait the timeout once per mirror
                self.w.notes.put(("suspect", str(exc)))
                return
            except KafkaMirrorsError as exc:
                log.warning("[%s/%s] source metadata: %s", self.name, topic, exc)
                continue
            seen = self.partitions_seen.setdefault(topic, max(rec.partitions, 0))
            if info.partitions <= seen:
                continue
            try:
                if kt.describe_topic(self.w.dst_admin, topic).partitions < info.partitions:
                    add_destination_partitions(self.w.dst_admin, topic, info.partitions, self.w.timeout)
                    log.info("[%s/%s] destination now has %d partitions", self.name, topic, info.partitions)
            except KafkaMirrorsError as exc:
                # e.g. the new partitions have no leader yet: the next tick tries again
                log.info("[%s/%s] new partitions not ready yet: %s", self.name, topic, exc)
                continue
            self.partitions_seen[topic] = info.partitions
            self.w.plane.inbox.put(Command("partitions", topic, count=info.partitions))

    def sync_configs(self) -> None:
        copied = self._copied()
        for topic, rec in sorted(copied.items()):
            if self.stop.is_set():
                return
            try:
                self._sync_configs(rec)
            except KafkaMirrorsError as exc:
                log.warning("[%s/%s] topic config sync: %s", self.name, topic, exc)
        if copied:
            self._refresh_read_only(sorted(t for t, r in copied.items() if r.state == st.ACTIVE))

    def _sync_configs(self, rec: st.MirrorRecord) -> None:
        """Keep the mirror's topic configs in step with the source's (docs/architecture.md):
        set what the source set or changed, remove what it removed, keep what must differ
        (CreateTime) and what the operator gave to `mirror create --config`."""
        want = mirror_configs(kt.topic_overrides(self.w.src_admin, rec.source_topic), rec.config_overrides)
        have = kt.topic_overrides(self.w.dst_admin, rec.topic)
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        removed = [k for k in have if k not in want]
        if changed or removed:
            kt.alter_topic_configs(self.w.dst_admin, rec.topic, changed, removed)
            log.info("[%s/%s] topic configs follow the source: set %s, removed %s", self.name,
                     rec.topic, sorted(changed), sorted(removed))

    def _refresh_read_only(self, active: list[str]) -> None:
        """Where the destination has an authorizer: deny WRITE on the mirrors to principals
        granted it since the mirror was made read-only (kafka_mirrors.readonly)."""
        from kafka_mirrors.readonly import refresh_read_only
        try:
            for line in refresh_read_only(self.w.link, self.store, self.w.dst_admin, active, dict(self.w.known)):
                log.info("[%s] %s", self.name, line)
        except KafkaMirrorsError as exc:
            log.warning("[%s] read-only ACLs not refreshed: %s", self.name, exc)

    def sync_offsets(self) -> None:
        known = dict(self.w.known)
        mirrors = {t: r.source_topic for t, r in known.items() if r.state in (st.ACTIVE, st.PAUSED)}
        if not mirrors:
            return
        if self._sync_admins is None:
            from kafka_mirrors.kafka.admin import Admin
            self._sync_admins = tuple(Admin(conf, a.label, a.timeout) for conf, a in
                                      ((self.w.src_conf, self.w.src_admin), (self.w.dst_conf, self.w.dst_admin)))
        src_admin, dst_admin = self._sync_admins
        try:
            summary = sync_consumer_offsets(src_admin, dst_admin, self.w.link, mirrors, fence=self.w.offset_fence)
        except Exception:
            self._sync_admins = None  # new clients for the next sync
            raise
        self.offset_sync = summary.to_json()
        level = logging.INFO if (summary.offsets_written or summary.errors) else logging.DEBUG
        log.log(level, "[%s] consumer offsets: %s", self.name, summary.line())
        for group, err in sorted(summary.errors.items()):
            log.warning("[%s] consumer offsets of group '%s' not copied: %s", self.name, group, err)

    def auto_create(self) -> None:
        md = self.w.src_admin.client.list_topics(timeout=self.w.source_timeout)
        self.w.auto_create.tick(md.topics, dict(self.w.known))
