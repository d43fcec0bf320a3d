"""Topic admin helpers for mirrors: describe a topic (partitions and topic ID), read and
write its configs, list per-partition offsets, create the mirror topic.

Module-level functions over `kafka_mirrors.kafka.admin.Admin`: every future is awaited
with the admin's timeout and Kafka errors become typed errors naming the cluster.
"""
from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
)

from kafka_mirrors.errors import ConflictError, KafkaUnavailableError, NotFoundError
from kafka_mirrors.kafka.admin import Admin, await_result, map_kafka_error


@dataclass(frozen=True)
class TopicInfo:
    name: str
    topic_id: str
    partitions: int


@dataclass(frozen=True)
class PartitionOffsets:
    """One source partition's offsets, in Kafka's words."""

    log_start_offset: int
    last_stable_offset: int
    high_watermark: int


def _await(admin: Admin, future, what: str):
    return await_result(future, what, admin.label, admin.timeout)


def describe_topic(admin: Admin, name: str) -> TopicInfo:
    """Partition count and topic ID; NotFoundError naming the topic when it is absent."""
    futures = admin.client.describe_topics(TopicCollection([name]), request_timeout=admin.timeout)
    try:
        desc = _await(admin, futures[name], f"describing topic '{name}'")
    except NotFoundError:
        raise NotFoundError(f"topic '{name}' does not exist on {admin.label}") from None
    return TopicInfo(name=name, topic_id=str(desc.topic_id), partitions=len(desc.partitions))


def topic_exists(admin: Admin, name: str) -> bool:
    try:
        describe_topic(admin, name)
        return True
    except NotFoundError:
        return False


def describe_topic_configs(admin: Admin, name: str) -> dict[str, ConfigEntry]:
    """Every config entry of the topic, with its source and read-only flag."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    futures = admin.client.describe_configs([resource], request_timeout=admin.timeout)
    return dict(_await(admin, futures[resource], f"describing the configs of topic '{name}'"))


def topic_overrides(admin: Admin, name: str) -> dict[str, str]:
    """The configs set on the topic itself: not read-only, not inherited from the broker's
    defaults, and not sensitive (their values are never returned)."""
    out = {}
    for key, entry in describe_topic_configs(admin, name).items():
        if entry.is_read_only or entry.is_sensitive or entry.value is None:
            continue
        if int(entry.source) != ConfigSource.DYNAMIC_TOPIC_CONFIG.value:
            continue
        out[key] = entry.value
    return out


def alter_topic_configs(admin: Admin, name: str, configs: Mapping[str, str],
                        remove: Iterable[str] = ()) -> None:
    """Set the given configs and remove the `remove` ones back to the broker default
    (incrementally: the topic's other settings stay)."""
    remove = list(remove)
    if not configs and not remove:
        return
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()]
    entries += [ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE) for k in remove]
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
    futures = admin.client.incremental_alter_configs([resource], request_timeout=admin.timeout)
    _await(admin, futures[resource], f"altering the configs of topic '{name}'")


def create_topic(admin: Admin, name: str, partitions: int, replication_factor: int = -1,
                 config: Mapping[str, str] | None = None) -> None:
    """Create a topic; replication_factor -1 takes the cluster's default.
    ConflictError when it exists already."""
    new = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                   config=dict(config or {}))
    futures = admin.client.create_topics([new], request_timeout=admin.timeout,
                                         operation_timeout=admin.timeout)
    try:
        futures[name].result(timeout=admin.timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            raise ConflictError(f"topic '{name}' already exists on {admin.label}") from None
        raise map_kafka_error(err, f"creating topic '{name}'", admin.label) from None
    except concurrent.futures.TimeoutError:
        raise KafkaUnavailableError(f"{admin.label} did not answer within {admin.timeout:g} s "
                                    f"(creating topic '{name}')",
                                    "check the bootstrap servers and that the cluster is up") from None


_SPECS = {
    "earliest": (OffsetSpec.earliest, IsolationLevel.READ_UNCOMMITTED),
    "latest": (OffsetSpec.latest, IsolationLevel.READ_UNCOMMITTED),
    # ListOffsets latest under read_committed answers the last stable offset
    "last_stable": (OffsetSpec.latest, IsolationLevel.READ_COMMITTED),
}


_PASSING_CODES = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.OFFSET_NOT_AVAILABLE}


def _passing(err: KafkaError) -> bool:
    return err.code() in _PASSING_CODES or err.retriable()


def list_offsets(admin: Admin, topic: str, partitions: Iterable[int], which: str) -> dict[int, int]:
    """Per-partition offsets: which = 'earliest' (log start offset), 'latest' (high
    watermark / log end offset) or 'last_stable' (last stable offset)."""
    got = _list_offsets(admin, {(topic, p) for p in partitions}, which,
                        f"listing {which} offsets of topic '{topic}'")
    return {p: off for (_, p), off in got.items()}


def list_offsets_many(admin: Admin, partitions: Mapping[str, Iterable[int]], which: str) -> dict[str, dict[int, int]]:
    """list_offsets of many topics in one request (describe of 1,000 mirrors would
    otherwise make 1,000 round trips per kind of offset). Any error raises, typed as
    list_offsets would; callers fall back to list_offsets per topic to tell whose it was."""
    wanted = {(t, p) for t, parts in partitions.items() for p in parts}
    out: dict[str, dict[int, int]] = {t: {} for t in partitions}
    for (t, p), off in _list_offsets(admin, wanted, which, f"listing {which} offsets of {len(out)} topics").items():
        out[t][p] = off
    return out


def _list_offsets(admin: Admin, wanted: set[tuple[str, int]], which: str, what: str) -> dict[tuple[str, int], int]:
    spec, isolation = _SPECS[which]
    pending = set(wanted)
    out: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + admin.timeout
    while pending:
        request = {TopicPartition(t, p): spec() for t, p in sorted(pending)}
        futures = admin.client.list_offsets(request, isolation_level=isolation,
                                            request_timeout=admin.timeout)
        retry = False
        for tp, fut in futures.items():
            try:
                out[(tp.topic, tp.partition)] = fut.result(timeout=max(0.1, deadline - time.monotonic())).offset
                pending.discard((tp.topic, tp.partition))
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                # a topic created a moment ago has no leader yet: that passes, so wait
                if isinstance(err, KafkaError) and _passing(err) and time.monotonic() < deadline:
                    retry = True
                    continue
                raise map_kafka_error(err, what, admin.label) from None
            except concurrent.futures.TimeoutError:
                _await(admin, fut, what)  # raises the common "did not answer" error
        if retry:
            time.sleep(0.2)
    return out


def describe_topics(admin: Admin, names: Iterable[str]) -> dict[str, TopicInfo | Exception]:
    """describe_topic of many topics in one request: each name maps to its TopicInfo or to
    the typed error describe_topic would raise for it (NotFoundError when absent)."""
    names = sorted(set(names))
    if not names:
        return {}
    futures = admin.client.describe_topics(TopicCollection(names), request_timeout=admin.timeout)
    out: dict[str, TopicInfo | Exception] = {}
    for name in names:
        try:
            desc = _await(admin, futures[name], f"describing topic '{name}'")
            out[name] = TopicInfo(name=name, topic_id=str(desc.topic_id), partitions=len(desc.partitions))
        except NotFoundError:
            out[name] = NotFoundError(f"topic '{name}' does not exist on {admin.label}")
        except Exception as exc:  # noqa: BLE001 - handed to the caller, typed by _await
            out[name] = exc
    return out


def partition_offsets(admin: Admin, topic: str, partitions: Iterable[int]) -> dict[int, PartitionOffsets]:
    """Log start offset, last stable offset and high watermark of each partition."""
    parts = list(partitions)
    start = list_offsets(admin, topic, parts, "earliest")
    stable = list_offsets(admin, topic, parts, "last_stable")
    high = list_offsets(admin, topic, parts, "latest")
    return {p: PartitionOffsets(start[p], stable[p], high[p]) for p in parts}


def partition_offsets_many(admin: Admin, partitions: Mapping[str, Iterable[int]]) -> dict[str, dict[int, PartitionOffsets]]:
    """partition_offsets of many topics in three requests; errors as list_offsets_many."""
    parts = {t: list(ps) for t, ps in partitions.items()}
    start = list_offsets_many(admin, parts, "earliest")
    stable = list_offsets_many(admin, parts, "last_stable")
    high = list_offsets_many(admin, parts, "latest")
    return {t: {p: PartitionOffsets(start[t][p], stable[t][p], high[t][p]) for p in ps} for t, ps in parts.items()}
