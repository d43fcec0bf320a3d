"""ACL calls on one cluster (DescribeAcls, CreateAcls, DeleteAcls) and the plain `Acl`
value the rest of kafka-mirrors plans with and stores.

`Acl` is a frozen dataclass, JSON-friendly (`to_json` / `from_json`), so the bindings
kafka-mirrors created can be kept in the state store and lifted later from any host.
Deletes always use an exact filter built from one `Acl`: a binding kafka-mirrors did not
create is never matched by a delete.

Kafka's own words: a binding is (resource type, name, pattern type, principal, host,
operation, permission). `ResourceType.BROKER` is what librdkafka calls Kafka's CLUSTER.

Whether a cluster has an authorizer is read from the broker config `authorizer.class.name`
(DescribeConfigs): Kafka 4.x answers DescribeAcls on a cluster without one with an empty
list, not SECURITY_DISABLED, so an answer to DescribeAcls proves nothing.
"""
from __future__ import annotations

import concurrent.futures
from dataclasses import asdict, dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)

from kafka_mirrors.errors import KafkaAuthError, KafkaMirrorsError, KafkaOperationError, KafkaUnavailableError
from kafka_mirrors.kafka.admin import Admin

WILDCARD = "*"


@dataclass(frozen=True)
class Acl:
    principal: str          # e.g. "User:alice"
    operation: str          # AclOperation name: WRITE, ALL, ...
    permission: str         # ALLOW or DENY
    name: str               # resource name (topic), "*" for the wildcard
    pattern: str = "LITERAL"  # LITERAL or PREFIXED
    resource: str = "TOPIC"
    host: str = WILDCARD

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> "Acl":
        return cls(**{k: str(v) for k, v in value.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_binding(cls, b: AclBinding) -> "Acl":
        return cls(principal=b.principal, operation=b.operation.name, permission=b.permission_type.name,
                   name=b.name, pattern=b.resource_pattern_type.name, resource=b.restype.name, host=b.host)

    def binding(self) -> AclBinding:
        return AclBinding(ResourceType[self.resource], self.name, ResourcePatternType[self.pattern],
                          self.principal, self.host, AclOperation[self.operation],
                          AclPermissionType[self.permission])

    def exact_filter(self) -> AclBindingFilter:
        return AclBindingFilter(ResourceType[self.resource], self.name, ResourcePatternType[self.pattern],
                                self.principal, self.host, AclOperation[self.operation],
                                AclPermissionType[self.permission])

    def matches_topic(self, topic: str) -> bool:
        """Does this binding's resource pattern cover `topic` (literal, wildcard or prefix)?"""
        if self.resource != "TOPIC":
            return False
        if self.pattern == "LITERAL":
            return self.name in (topic, WILDCARD)
        if self.pattern == "PREFIXED":
            return topic.startswith(self.name)
        return False

    def __str__(self) -> str:
        where = self.name if self.pattern == "LITERAL" else f"{self.name}* (prefixed)"
        return f"{self.permission} {self.operation} {self.principal} on {self.resource.lower()} {where}"


AUTHORIZER_CONFIG = "authorizer.class.name"


class NoAuthorizer(KafkaOperationError):
    """The cluster answers an ACL request with SECURITY_DISABLED: it has no authorizer."""


def _acl_error(exc: KafkaException, what: str, admin: Admin) -> KafkaMirrorsError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() == KafkaError.SECURITY_DISABLED:
        return NoAuthorizer(f"{what} on {admin.label}: the cluster has no authorizer")
    name = err.name() if isinstance(err, KafkaError) else str(exc)
    if isinstance(err, KafkaError) and err.code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        # the broker's own text for this error is a dump of the request: keep it out
        return KafkaAuthError(f"{what} on {admin.label} was refused ({name})",
                              "grant the link's principal DESCRIBE and ALTER on the cluster "
                              "(README: 'Running on a cluster with an authorizer')")
    text = err.str() if isinstance(err, KafkaError) else str(exc)
    return KafkaOperationError(f"{what} on {admin.label} failed: {name}: {text[:200]}")


def _await(admin: Admin, future, what: str):
    try:
        return future.result(timeout=admin.timeout)
    except KafkaException as exc:
        raise _acl_error(exc, what, admin) from None
    except concurrent.futures.TimeoutError:
        raise KafkaUnavailableError(f"{admin.label} did not answer within {admin.timeout:g} s ({what})",
                                    "check the bootstrap servers and that the cluster is up") from None


def topic_acls(admin: Admin) -> list[Acl]:
    """Every topic ACL the caller may see. Raises NoAuthorizer on a cluster without an
    authorizer. Beware: Kafka answers a principal without DESCRIBE on the cluster with an
    empty list, not an error; callers check that a binding they made is visible."""
    flt = AclBindingFilter(ResourceType.TOPIC, None, ResourcePatternType.ANY, None, None,
                           AclOperation.ANY, AclPermissionType.ANY)
    future = admin.client.describe_acls(flt, request_timeout=admin.timeout)
    return sorted((Acl.from_binding(b) for b in _await(admin, future, "describing ACLs")), key=str)


def has_authorizer(admin: Admin) -> bool:
    """True when the cluster's brokers have an authorizer: the broker config
    `authorizer.class.name` of one broker (the one describe cluster names first) is set.
    It is a static config, so every broker of a cluster normally agrees. A principal
    refused DescribeConfigs on the cluster is itself proof of an authorizer."""
    nodes = sorted(admin.describe_cluster().nodes, key=lambda n: n.id)
    if not nodes:
        raise KafkaOperationError(f"describe cluster on {admin.label} named no broker")
    resource = ConfigResource(ResourceType.BROKER, str(nodes[0].id))
    future = admin.client.describe_configs([resource], request_timeout=admin.timeout)[resource]
    what = f"reading the broker config {AUTHORIZER_CONFIG}"
    try:
        configs = _await(admin, future, what)
    except KafkaAuthError:
        return True  # without an authorizer nothing is ever refused
    entry = configs.get(AUTHORIZER_CONFIG)
    return bool(entry is not None and (entry.value or "").strip())


def create(admin: Admin, acls: list[Acl]) -> None:
    """Create bindings (creating one that exists already is a no-op in Kafka). Raises on
    the first failure, after every future has been awaited."""
    if not acls:
        return
    futures = admin.client.create_acls([a.binding() for a in acls], request_timeout=admin.timeout)
    first = None
    for acl, binding in zip(acls, [a.binding() for a in acls]):
        try:
            _await(admin, futures[binding], f"creating ACL '{acl}'")
        except KafkaMirrorsError as exc:
            first = first or exc
    if first is not None:
        raise first


def delete(admin: Admin, acls: list[Acl]) -> list[Acl]:
    """Delete exactly these bindings; returns those that existed and were deleted."""
    if not acls:
        return []
    filters = [a.exact_filter() for a in acls]
    futures = admin.client.delete_acls(filters, request_timeout=admin.timeout)
    out, first = [], None
    for acl, flt in zip(acls, filters):
        try:
            if _await(admin, futures[flt], f"deleting ACL '{acl}'"):
                out.append(acl)
        except KafkaMirrorsError as exc:
            first = first or exc
    if first is not None:
        raise first
    return out
