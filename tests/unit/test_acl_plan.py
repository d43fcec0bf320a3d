"""Read-only mirrors and fencing by ACL (kafka_mirrors/readonly.py): the pure plans, and
ReadOnlyAcls against an in-memory ACL table standing in for the destination's authorizer
(the three ACL calls of kafka_mirrors/kafka/acls.py are replaced)."""
from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigEntry, ResourceType

from kafka_mirrors import readonly as ro
from kafka_mirrors.errors import ConflictError, KafkaAuthError, KafkaOperationError
from kafka_mirrors.kafka import acls as ka
from kafka_mirrors.kafka.acls import Acl
from kafka_mirrors.kafka.admin import Admin
from kafka_mirrors.state import ACTIVE, PENDING_STOPPED, STOPPED, MirrorRecord

T = "orders"
LINKER = "User:linker"
ADMIN = SimpleNamespace(label="destination cluster x:1", timeout=0.3)


def allow(principal, name=T, op="WRITE", pattern="LITERAL"):
    return Acl(principal, op, "ALLOW", name, pattern)


def deny(principal, name=T, op="WRITE", pattern="LITERAL"):
    return Acl(principal, op, "DENY", name, pattern)


# ---------------------------------------------------------------- pure plans

def test_acl_matches_literal_prefixed_and_wildcard_patterns():
    assert allow("User:a").matches_topic(T)
    assert not allow("User:a", name="order").matches_topic(T)
    assert allow("User:a", name="*").matches_topic(T)
    assert allow("User:a", name="ord", pattern="PREFIXED").matches_topic(T)
    assert not allow("User:a", name="pay", pattern="PREFIXED").matches_topic(T)
    assert not Acl("User:a", "WRITE", "ALLOW", T, resource="GROUP").matches_topic(T)
    a = Acl("User:a", "WRITE", "DENY", "ord", "PREFIXED", host="10.0.0.1")
    assert Acl.from_json(a.to_json()) == a
    assert str(a) == "DENY WRITE User:a on topic ord* (prefixed)"


def test_plan_read_only_denies_every_other_writer_whatever_the_pattern():
    existing = [
        allow("User:lit"),
        allow("User:pre", name="or", pattern="PREFIXED"),
        allow("User:wild", name="*"),
        allow("User:all", op="ALL"),
        allow("User:reader", op="READ"),                 # reading is fine
        allow("User:other", name="payments"),            # another topic
        allow("User:pre2", name="pay", pattern="PREFIXED"),
        allow(LINKER, name="*"),                         # the link itself
    ]
    create, delete, warnings = ro.plan_read_only(T, LINKER, existing, [])
    assert create == [allow(LINKER), deny("User:all"), deny("User:lit"), deny("User:pre"), deny("User:wild")]
    assert delete == [] and warnings == []


def test_plan_read_only_skips_what_exists_and_warns_about_everyone():
    existing = [allow(LINKER), allow("User:a"), deny("User:a"), allow("User:*", name="*")]
    create, _, warnings = ro.plan_read_only(T, LINKER, existing, [])
    assert create == []  # the ALLOW and the DENY exist already: neither is made (nor recorded)
    assert len(warnings) == 1 and "User:*" in warnings[0] and "cannot be denied" in warnings[0]


def test_plan_read_only_lifts_a_recorded_fence_of_the_link():
    recorded = [deny(LINKER), deny("User:a")]
    _, delete, _ = ro.plan_read_only(T, LINKER, recorded, recorded)
    assert delete == [deny(LINKER)]


def test_plan_release_lifts_recorded_bindings_and_fences_the_link():
    recorded = [allow(LINKER), deny("User:a"), deny(LINKER)]
    create, delete = ro.plan_release(T, LINKER, recorded)
    assert create == [deny(LINKER)]
    assert delete == [allow(LINKER), deny("User:a")]
    assert ro.plan_release(T, None, [deny("User:a")]) == ([], [deny("User:a")])


def test_blocking_denies_are_those_not_made_by_kafka_mirrors():
    existing = [deny(LINKER, name="or", pattern="PREFIXED"), deny("User:*", name="*", op="ALL"), deny("User:a")]
    assert ro.blocking_denies(T, LINKER, existing, []) == existing[:2]
    assert ro.blocking_denies(T, LINKER, [deny(LINKER)], [deny(LINKER)]) == []


# ---------------------------------------------------------------- against a fake authorizer

class FakeAuthorizer:
    """An ACL table with Kafka's answers: create is idempotent, delete by exact binding,
    describe empty for a principal without DESCRIBE on the cluster."""

    def __init__(self, acls=(), enabled=True, can_describe=True):
        self.acls = set(acls)
        self.enabled = enabled
        self.can_describe = can_describe
        self.fail_create: set[Acl] = set()
        self.fail_delete: set[Acl] = set()
        self.calls: list[str] = []

    def _check(self):
        if not self.enabled:
            raise ka.NoAuthorizer("no authorizer")

    def topic_acls(self, admin):
        self.calls.append("describe")
        self._check()
        return sorted(self.acls, key=str) if self.can_describe else []

    def create(self, admin, acls):
        self.calls.append("create")
        self._check()
        for a in acls:
            if a in self.fail_create:
                raise KafkaOperationError(f"creating ACL '{a}' failed")
            self.acls.add(a)

    def delete(self, admin, acls):
        self.calls.append("delete")
        self._check()
        out = []
        for a in acls:
            if a in self.fail_delete:
                raise KafkaOperationError(f"deleting ACL '{a}' failed")
            if a in self.acls:
                self.acls.remove(a)
                out.append(a)
        return out


class FakeSpec:
    def __init__(self, conf):
        self.conf = conf

    def client_config(self):
        return dict(self.conf)


class FakeLink:
    name = "dr"

    def __init__(self, principal="", username="linker"):
        self.principal = principal
        self.destination = FakeSpec({"bootstrap.servers": "x:1"} | ({"sasl.username": username} if username else {}))

    def option(self, key):
        assert key == "link.principal"
        return self.principal


@pytest.fixture
def authz(monkeypatch):
    fake = FakeAuthorizer()
    for name in ("topic_acls", "create", "delete"):
        monkeypatch.setattr(ka, name, getattr(fake, name))
    # what the broker config authorizer.class.name says (Kafka 4.x: not DescribeAcls)
    monkeypatch.setattr(ka, "has_authorizer", lambda admin: fake.configured)
    fake.configured = True
    return fake


class FakeAdminClient:
    """describe_cluster / describe_configs as confluent-kafka's AdminClient answers them."""

    def __init__(self, authorizer_class=None, refuse=None):
        self.authorizer_class = authorizer_class
        self.refuse = refuse
        self.asked: list[tuple] = []

    @staticmethod
    def _done(value=None, exc=None):
        f = concurrent.futures.Future()
        f.set_exception(exc) if exc else f.set_result(value)
        return f

    def describe_cluster(self, request_timeout):
        return self._done(SimpleNamespace(cluster_id="c", nodes=[SimpleNamespace(id=3), SimpleNamespace(id=1)]))

    def describe_configs(self, resources, request_timeout):
        (r,) = resources
        self.asked.append((r.restype, r.name))
        if self.refuse is not None:
            return {r: self._done(exc=KafkaException(KafkaError(self.refuse)))}
        entries = {"broker.id": ConfigEntry("broker.id", r.name)}
        if self.authorizer_class is not None:
            entries[ka.AUTHORIZER_CONFIG] = ConfigEntry(ka.AUTHORIZER_CONFIG, self.authorizer_class)
        return {r: self._done(entries)}


def _admin(client) -> Admin:
    admin = Admin.__new__(Admin)
    admin.label, admin.timeout, admin.client, admin._errors = "destination cluster x:1", 0.3, client, []
    return admin


def test_has_authorizer_reads_the_broker_config_not_describe_acls():
    # Kafka 4.1 without an authorizer: DescribeAcls answers [], the broker config is empty
    for value in ("", None):
        client = FakeAdminClient(value)
        assert ka.has_authorizer(_admin(client)) is False
        assert client.asked == [(ResourceType.BROKER, "1")]  # the lowest broker id
    assert ka.has_authorizer(_admin(FakeAdminClient("org.apache.kafka.metadata.authorizer.StandardAuthorizer")))
    # only an authorizer refuses DescribeConfigs on the cluster
    assert ka.has_authorizer(_admin(FakeAdminClient(refuse=KafkaError.CLUSTER_AUTHORIZATION_FAILED)))
    with pytest.raises(KafkaOperationError, match="reading the broker config authorizer.class.name"):
        ka.has_authorizer(_admin(FakeAdminClient(refuse=KafkaError.INVALID_REQUEST)))


def test_link_principal_from_option_then_sasl_username():
    assert ro.link_principal(FakeLink(principal="User:CN=dr")) == "User:CN=dr"
    assert ro.link_principal(FakeLink()) == LINKER
    assert ro.link_principal(FakeLink(username=None)) is None


def test_make_read_only_records_only_what_it_created(authz):
    authz.acls |= {allow("User:alice"), allow("User:bob", name="ord", pattern="PREFIXED"), deny("User:bob")}
    before = set(authz.acls)
    kept, changes = ro.ReadOnlyAcls(FakeLink(), ADMIN).make_read_only(T)
    assert kept == [allow(LINKER), deny("User:alice")]  # bob was denied already, by someone else
    assert changes.created == kept and changes.deleted == []
    assert authz.acls == before | set(kept)


def test_make_read_only_fails_and_undoes_when_acls_cannot_be_read(authz):
    authz.can_describe = False  # Kafka's answer to DescribeAcls without DESCRIBE on the cluster
    authz.acls.add(allow("User:alice"))
    with pytest.raises(KafkaAuthError, match="cannot read the ACLs .* DESCRIBE and ALTER on the cluster"):
        ro.ReadOnlyAcls(FakeLink(), ADMIN).make_read_only(T)
    assert authz.acls == {allow("User:alice")}  # the ALLOW it made was deleted again


def test_make_read_only_undoes_the_allow_when_a_deny_fails(authz):
    authz.acls.add(allow("User:alice"))
    authz.fail_create.add(deny("User:alice"))
    with pytest.raises(KafkaOperationError):
        ro.ReadOnlyAcls(FakeLink(), ADMIN).make_read_only(T)
    assert authz.acls == {allow("User:alice")}


def test_no_acls_without_authorizer_or_principal(authz):
    authz.enabled = authz.configured = False
    ro_ = ro.ReadOnlyAcls(FakeLink(), ADMIN)
    ro_.check(T)
    assert ro_.make_read_only(T) == ([], ro.AclChanges())
    assert authz.calls == []  # no ACL call at all
    note = ro_.note()
    assert isinstance(note, ro.Info) and "read-only ACLs are not enforced" in note and "no authorizer" in note
    assert ro_.note() == note  # the same answer each time: mirror create says it once
    assert ro.ReadOnlyAcls(FakeLink(username=None), ADMIN).note() is None  # no principal: nothing expected
    authz.enabled = authz.configured = True
    authz.calls = []
    unknown = ro.ReadOnlyAcls(FakeLink(username=None), ADMIN)
    assert unknown.make_read_only(T)[0] == [] and authz.calls == []
    assert "link's principal is unknown" in unknown.note() and "link.principal=User:NAME" in unknown.note()


def test_security_disabled_from_create_acls_means_no_authorizer(authz):
    authz.enabled = False  # the broker config said yes, CreateAcls says SECURITY_DISABLED
    r = ro.ReadOnlyAcls(FakeLink(), ADMIN)
    kept, changes = r.make_read_only(T, existing=[])
    assert kept == [] and changes.created == [] and len(changes.warnings) == 1
    assert "read-only ACLs are not enforced" in changes.warnings[0]
    assert r.managed() is False  # no ACL call any more, and the note is not repeated
    authz.calls = []
    assert r.make_read_only("payments") == ([], ro.AclChanges()) and authz.calls == []
    assert r.release_and_fence(T, []) == ([], ro.AclChanges())


def test_security_disabled_from_describe_acls_means_no_authorizer(authz):
    authz.enabled = False  # a Kafka before 4.0 answers DescribeAcls so
    r = ro.ReadOnlyAcls(FakeLink(), ADMIN)
    r.check(T)
    assert r.managed() is False


def test_check_refuses_a_foreign_deny_of_the_link(authz):
    authz.acls.add(deny(LINKER, name="ord", pattern="PREFIXED"))
    with pytest.raises(ConflictError, match="denied writing to 'orders' by an ACL that kafka-mirrors did not"):
        ro.ReadOnlyAcls(FakeLink(), ADMIN).check(T)
    ro.ReadOnlyAcls(FakeLink(), ADMIN).check("payments")  # not covered: fine


def test_release_and_fence(authz):
    authz.acls |= {allow("User:alice"), allow(LINKER, name="*")}
    r = ro.ReadOnlyAcls(FakeLink(), ADMIN)
    recorded, _ = r.make_read_only(T)
    kept, changes = r.release_and_fence(T, recorded)
    assert kept == [deny(LINKER)]
    assert changes.created == [deny(LINKER)]
    assert changes.deleted == [allow(LINKER), deny("User:alice")]
    assert authz.acls == {allow("User:alice"), allow(LINKER, name="*"), deny(LINKER)}
    assert changes.view()["created"] == ["DENY WRITE User:linker on topic orders"]
    # the same topic made a mirror of this link again: the recorded fence is lifted
    again, changes = r.make_read_only(T, kept)
    assert deny(LINKER) not in authz.acls and changes.deleted == [deny(LINKER)]
    assert again == [allow(LINKER), deny("User:alice")]


def test_release_failure_keeps_the_fence_recorded(authz):
    authz.acls.add(allow("User:alice"))
    r = ro.ReadOnlyAcls(FakeLink(), ADMIN)
    recorded, _ = r.make_read_only(T)
    authz.fail_delete.add(deny("User:alice"))
    with pytest.raises(ro.AclStepError, match="only partly changed") as info:
        r.release_and_fence(T, recorded)
    # fenced first; nothing recorded is forgotten, so a second run can lift the rest
    assert deny(LINKER) in authz.acls
    assert set(info.value.recorded) == set(recorded) | {deny(LINKER)}
    authz.fail_delete.clear()
    kept, _ = r.release_and_fence(T, info.value.recorded)
    assert kept == [deny(LINKER)] and authz.acls == {allow("User:alice"), deny(LINKER)}


class FakeStore:
    def __init__(self, *recs):
        self.recs = {r.topic: r for r in recs}
        self.puts = 0

    def get_mirror(self, topic):
        return MirrorRecord.from_json(self.recs[topic].to_json())

    def put_mirror(self, rec):
        self.puts += 1
        self.recs[rec.topic] = rec

    def set_state(self, topic, state, reason=None, *, current=None, **fields):
        """As StateStore.set_state: refused when the newest record is in another state than
        `current` (the record the caller read)."""
        from kafka_mirrors.errors import ConflictError
        newest = self.recs[topic]
        if current is not None and newest.state != current.state:
            raise ConflictError(f"mirror '{topic}' is {newest.state} now, not {current.state} as read")
        rec = MirrorRecord.from_json({**newest.to_json(), "state": state, "reason": reason, **fields})
        self.put_mirror(rec)
        return rec


def test_refresh_never_writes_over_a_failover_that_landed_meanwhile(authz):
    # issue 11: the re-check re-read the mirror ACTIVE, a failover wrote PENDING_STOPPED, and
    # put_mirror wrote ACTIVE back over it (the worker then copied again after acking)
    r = ro.ReadOnlyAcls(FakeLink(), ADMIN)
    recorded, _ = r.make_read_only(T)
    store = FakeStore(MirrorRecord("dr", T, T, ACTIVE, acls=ro.to_json(recorded)))
    read = store.get_mirror

    def get_then_failover(topic):
        rec = read(topic)
        store.recs[topic] = MirrorRecord("dr", T, T, PENDING_STOPPED, acls=ro.to_json(recorded))
        return rec

    authz.acls.add(allow("User:carol", name="*"))
    store.get_mirror = lambda topic: read(topic)  # the first read (plan) sees ACTIVE
    first = {T: read(T)}
    store.get_mirror = get_then_failover  # the re-read races the failover
    assert ro.refresh_read_only(FakeLink(), store, ADMIN, [T], first) == []
    assert store.recs[T].state == PENDING_STOPPED and store.puts == 0
    assert deny("User:carol") not in authz.acls  # what it made was undone


def test_refresh_denies_writers_granted_later_and_records_them(authz):
    r = ro.ReadOnlyAcls(FakeLink(), ADMIN)
    recorded, _ = r.make_read_only(T)
    store = FakeStore(MirrorRecord("dr", T, T, ACTIVE, acls=ro.to_json(recorded)),
                      MirrorRecord("dr", "old", "old", STOPPED))
    assert ro.refresh_read_only(FakeLink(), store, ADMIN, [T, "old"]) == []
    assert store.puts == 0
    authz.acls.add(allow("User:carol", name="*"))
    lines = ro.refresh_read_only(FakeLink(), store, ADMIN, [T, "old"])
    assert lines == ["'orders' read-only: created ACL DENY WRITE User:carol on topic orders"]
    assert ro.from_json(store.recs[T].acls) == recorded + [deny("User:carol")]
    assert deny("User:carol", name="old") not in authz.acls  # a stopped mirror is left alone
