"""The clusters the whole suite stands on: real, independent, and (for SASL) locked down."""
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

pytestmark = pytest.mark.integration


def test_produce_and_consume_back(source):
    topic = source.create_topic(f"smoke-{uuid.uuid4().hex[:8]}", partitions=2)
    values = [f"v{i}".encode() for i in range(50)]
    source.produce(topic, values, partition=1)
    got = source.read_all(topic, partition=1)
    assert [m.value() for m in got] == values
    assert [m.offset() for m in got] == list(range(50))


def test_clusters_are_independent(source, destination):
    src_admin, dst_admin = source.admin(), destination.admin()
    src_id = src_admin.describe_cluster().result(10).cluster_id
    dst_id = dst_admin.describe_cluster().result(10).cluster_id
    assert src_id and dst_id and src_id != dst_id
    topic = source.create_topic(f"only-on-source-{uuid.uuid4().hex[:8]}")
    assert topic in source.admin().list_topics(timeout=10).topics
    assert topic not in destination.admin().list_topics(timeout=10).topics


def _create(cluster, user, name, **conf):
    admin = cluster.admin(user, **conf)
    fs = admin.create_topics([NewTopic(name, 1, 1)], request_timeout=8)
    fs[name].result(15)


def test_sasl_super_user_accepted(sasl_cluster):
    name = f"by-admin-{uuid.uuid4().hex[:8]}"
    _create(sasl_cluster, "admin", name)
    assert name in sasl_cluster.admin("admin").list_topics(timeout=10).topics


def test_sasl_ordinary_user_without_acls_refused(sasl_cluster):
    with pytest.raises(KafkaException) as e:
        _create(sasl_cluster, "alice", f"by-alice-{uuid.uuid4().hex[:8]}")
    assert e.value.args[0].name() in ("TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED")


def test_sasl_unauthenticated_client_refused(sasl_cluster):
    # a PLAINTEXT client against the SASL listener never gets a metadata answer
    admin = sasl_cluster.admin(None, **{"socket.timeout.ms": 3000, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
