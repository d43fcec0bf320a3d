"""Read-only mirrors and fencing by ACL on the SASL cluster (StandardAuthorizer,
super.users=User:admin, allow.everyone.if.no.acl.found=false), issue 5 must-show 4:
an ordinary principal's write to a mirror topic is refused while mirroring and accepted
after promote; after failover the link's principal can no longer write.

The link's destination uses linker's credentials, with exactly the ACLs the README lists
under "Running on a cluster with an authorizer", granted here as admin. The source is the
plain `source` cluster."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from kafka_mirrors.kafka.admin import Admin
from kafka_mirrors.readonly import refresh_read_only
from kafka_mirrors.registry import Registry
from kafka_mirrors.state import STATE_TOPIC, STOPPED, StateStore
from kafka_mirrors.worker.membership import SLOTS_TOPIC
from tests import mirrortools as mt

pytestmark = pytest.mark.integration

PREFIX = "acl-"  # every mirror topic of this test starts with it


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _grant(cluster, specs) -> None:
    """specs: (resource type, name, pattern, principal, operation, permission)."""
    admin = cluster.admin()
    bindings = [AclBinding(rt, name, pt, principal, "*", op, perm) for rt, name, pt, principal, op, perm in specs]
    for f in admin.create_acls(bindings, request_timeout=15).values():
        f.result(20)


def link_principal_acls(principal: str) -> list:
    """What the README asks for the link's principal on the destination."""
    topic_ops = [AclOperation.CREATE, AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
                 AclOperation.ALTER_CONFIGS, AclOperation.ALTER, AclOperation.DELETE]
    allow, lit, pre = AclPermissionType.ALLOW, ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    specs = [(ResourceType.TOPIC, PREFIX, pre, principal, op, allow) for op in topic_ops]
    specs += [(ResourceType.TOPIC, STATE_TOPIC, lit, principal, op, allow)
              for op in (AclOperation.CREATE, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE,
                         AclOperation.DESCRIBE_CONFIGS)]
    specs += [(ResourceType.TOPIC, SLOTS_TOPIC, lit, principal, op, allow)
              for op in (AclOperation.CREATE, AclOperation.READ, AclOperation.DESCRIBE)]
    specs += [(ResourceType.GROUP, "kafka-mirrors-", pre, principal, AclOperation.READ, allow)]
    specs += [(ResourceType.TRANSACTIONAL_ID, "kafka-mirrors/", pre, principal, op, allow)
              for op in (AclOperation.WRITE, AclOperation.DESCRIBE)]
    specs += [(ResourceType.BROKER, "kafka-cluster", lit, principal, op, allow)
              for op in (AclOperation.DESCRIBE, AclOperation.ALTER)]
    return specs


def produce_as(cluster, user: str, topic: str, n: int = 3) -> int | None:
    """Produce n records as `user`; None if all were written, else the first error code."""
    p = cluster.producer(user, **{"enable.idempotence": False, "acks": "all", "message.timeout.ms": 20000,
                                  "retries": 0})
    errors: list[int] = []

    def delivered(err, _msg):
        if err is not None:
            errors.append(err.code())

    for i in range(n):
        p.produce(topic, value=f"{user}-{i}".encode(), partition=0, on_delivery=delivered)
    assert p.flush(40) == 0, f"{user}'s records to {topic} neither delivered nor failed"
    return errors[0] if errors else None


def topic_acls(cluster, topic: str) -> set[str]:
    """Every literal ACL on `topic`, as 'PERMISSION OPERATION principal'."""
    flt = AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, None, None,
                           AclOperation.ANY, AclPermissionType.ANY)
    admin = cluster.admin()  # keep the handle alive until the future resolves
    return {f"{b.permission_type.name} {b.operation.name} {b.principal}"
            for b in admin.describe_acls(flt, request_timeout=15).result(20)}


@pytest.fixture
def sasl_link(cli, source, sasl_cluster, registry_path, tmp_path):
    """A link from the plain source to the SASL cluster as linker (principal derived from
    sasl.username), linker granted the README's ACLs; yields (name, start_worker)."""
    _grant(sasl_cluster, link_principal_acls("User:linker"))
    name = _unique("acl-link-")
    r = cli("link", "create", name, "--source", source.bootstrap, "--destination", sasl_cluster.bootstrap,
            "--destination-config", str(sasl_cluster.client_config["linker"]),
            "--config", "topic.config.sync.ms=1000")  # the worker's read-only re-check: every second
    assert r.exit_code == 0, r.stderr
    procs: list[subprocess.Popen] = []

    def start_worker() -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", "--registry", str(registry_path),
                              "run", "--link", name], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        yield name, start_worker
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def _link_admin(link) -> Admin:
    conf = link.destination.client_config()
    return Admin(conf, f"destination cluster {conf['bootstrap.servers']}")


def _worker_log(tmp_path) -> str:
    return "\n".join(f.read_text(errors="replace")[-3000:] for f in sorted(tmp_path.glob("worker-*.log")))


def _caught_up(source, dst, topic: str, tmp_path) -> None:
    def done():
        src = mt.log_end_offsets(source, topic)
        return src == mt.log_end_offsets(dst, topic, sorted(src))
    try:
        mt.wait_until(done, 120, f"mirror {topic} to catch up", interval=0.5)
    except AssertionError:
        raise AssertionError(f"not caught up; worker log tail:\n{_worker_log(tmp_path)}") from None


def test_mirror_read_only_until_promote_and_link_fenced_after_failover(cli, source, sasl_cluster, sasl_link,
                                                                       registry_path, tmp_path):
    link, start_worker = sasl_link
    promoted, failed_over = _unique(PREFIX), _unique(PREFIX)
    for t in (promoted, failed_over):
        source.create_topic(t, partitions=2)
        mt.produce_records(source, t, mt.make_records(300, seed=5), partitions=2)
    _grant(sasl_cluster, [(ResourceType.TOPIC, t, ResourcePatternType.LITERAL, "User:alice", AclOperation.WRITE,
                           AclPermissionType.ALLOW) for t in (promoted, failed_over)])

    r = cli("mirror", "create", promoted, failed_over, "--link", link)
    assert r.exit_code == 0, r.stderr
    for t in (promoted, failed_over):
        assert f"  read-only: created ACL ALLOW WRITE User:linker on topic {t}\n" in r.stdout
        assert f"  read-only: created ACL DENY WRITE User:alice on topic {t}\n" in r.stdout
        assert topic_acls(sasl_cluster, t) == {"ALLOW WRITE User:alice", "ALLOW WRITE User:linker",
                                               "DENY WRITE User:alice"}

    # a principal granted WRITE later is denied by the worker's periodic re-check (called
    # here directly, as the worker's config-sync tick does); what exists is never re-made
    _grant(sasl_cluster, [(ResourceType.TOPIC, PREFIX, ResourcePatternType.PREFIXED, "User:bob",
                           AclOperation.WRITE, AclPermissionType.ALLOW)])
    lk = Registry(registry_path).get(link)
    store, admin = StateStore(lk.destination.client_config(), link), _link_admin(lk)
    try:
        lines = refresh_read_only(lk, store, admin, [promoted, failed_over])
        assert lines == [f"'{t}' read-only: created ACL DENY WRITE User:bob on topic {t}"
                         for t in (promoted, failed_over)]
        assert refresh_read_only(lk, store, admin, [promoted, failed_over]) == []
    finally:
        store.close()
    assert "DENY WRITE User:bob" in topic_acls(sasl_cluster, promoted)

    # while mirroring: alice is refused, the worker (as linker) copies
    start_worker()
    assert produce_as(sasl_cluster, "alice", promoted) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    for t in (promoted, failed_over):
        _caught_up(source, sasl_cluster, t, tmp_path)
        mt.assert_identical(source, sasl_cluster, t, t)
    # the running worker denies a principal granted WRITE now, on its config-sync tick
    _grant(sasl_cluster, [(ResourceType.TOPIC, PREFIX, ResourcePatternType.PREFIXED, "User:carol",
                           AclOperation.WRITE, AclPermissionType.ALLOW)])
    try:
        mt.wait_until(lambda: all("DENY WRITE User:carol" in topic_acls(sasl_cluster, t)
                                  for t in (promoted, failed_over)), 60, "the worker to deny User:carol")
    except AssertionError:
        raise AssertionError(f"carol not denied; worker log tail:\n{_worker_log(tmp_path)}") from None

    # promote: alice may write now, the link's principal is fenced
    r = cli("promote", promoted, "--link", link, "--yes", "--output", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["topics"][0]
    assert row["state"] == STOPPED and row["reason"] == "promoted"
    assert row["acls"] == {"created": [f"DENY WRITE User:linker on topic {promoted}"],
                           "deleted": [f"ALLOW WRITE User:linker on topic {promoted}",
                                       f"DENY WRITE User:alice on topic {promoted}",
                                       f"DENY WRITE User:bob on topic {promoted}",
                                       f"DENY WRITE User:carol on topic {promoted}"],
                           "warnings": []}
    assert topic_acls(sasl_cluster, promoted) == {"ALLOW WRITE User:alice", "DENY WRITE User:linker"}
    ends = mt.log_end_offsets(sasl_cluster, promoted, [0])[0]
    assert produce_as(sasl_cluster, "alice", promoted) is None
    assert mt.log_end_offsets(sasl_cluster, promoted, [0])[0] == ends + 3

    # failover of the second mirror: the link's principal can no longer write
    # until now the linker could write (a write would be another writer: the worker would fail
    # the mirror, rightly, so the grant is read rather than used)
    assert "ALLOW WRITE User:linker" in topic_acls(sasl_cluster, failed_over)
    assert "DENY WRITE User:linker" not in topic_acls(sasl_cluster, failed_over)
    r = cli("failover", failed_over, "--link", link, "--yes")
    assert r.exit_code == 0, r.stderr
    assert f"  ACL created: DENY WRITE User:linker on topic {failed_over}\n" in r.stdout
    assert f"  ACL deleted: DENY WRITE User:alice on topic {failed_over}\n" in r.stdout
    assert produce_as(sasl_cluster, "linker", failed_over) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert produce_as(sasl_cluster, "alice", failed_over) is None

    # what kafka-mirrors still owns is recorded, so any host can lift it
    store = StateStore(sasl_cluster.conf(), link)
    try:
        mirrors = store.snapshot().mirrors
    finally:
        store.close()
    for t in (promoted, failed_over):
        assert mirrors[t].state == STOPPED
        assert mirrors[t].acls == [{"host": "*", "name": t, "operation": "WRITE", "pattern": "LITERAL",
                                    "permission": "DENY", "principal": "User:linker", "resource": "TOPIC"}]


def test_mirror_create_refused_when_the_link_cannot_manage_acls(cli, source, sasl_cluster):
    """alice may not alter ACLs: nothing is created, the error names what to grant."""
    topic = _unique(PREFIX)
    source.create_topic(topic)
    _grant(sasl_cluster, [(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:alice", op,
                           AclPermissionType.ALLOW) for op in (AclOperation.CREATE, AclOperation.WRITE)])
    name = _unique("acl-alice-")
    r = cli("link", "create", name, "--source", source.bootstrap, "--destination", sasl_cluster.bootstrap,
            "--destination-config", str(sasl_cluster.client_config["alice"]))
    assert r.exit_code == 0, r.stderr
    r = cli("mirror", "create", topic, "--link", name)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: creating ACL 'ALLOW WRITE User:alice on topic "), r.stderr
    assert "grant the link's principal DESCRIBE and ALTER on the cluster" in r.stderr
    md = sasl_cluster.admin().list_topics(timeout=15)
    assert topic not in md.topics
    assert topic_acls(sasl_cluster, topic) == {"ALLOW CREATE User:alice", "ALLOW WRITE User:alice"}
