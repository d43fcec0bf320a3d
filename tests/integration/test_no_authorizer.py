"""Issue 11, first defect: on a cluster without an authorizer kafka-mirrors believed there
was one (Kafka 4.x answers DescribeAcls there with an empty list, not SECURITY_DISABLED).
With a principal on the link, `mirror create` then failed with "creating ACL ...: the
cluster has no authorizer"; without one it warned about an authorizer that did not exist.

The plain `destination` fixture has no authorizer; the `sasl_cluster` has the
StandardAuthorizer (scripts/kafka-local --sasl)."""
from __future__ import annotations

import pytest

from kafka_mirrors.kafka.acls import has_authorizer
from kafka_mirrors.kafka.admin import Admin
from tests import mirrortools as mt
from tests.mirroring import unique

pytestmark = pytest.mark.integration

NOT_ENFORCED = "read-only ACLs are not enforced: the destination cluster"


def test_mirror_create_with_a_principal_on_a_cluster_without_authorizer(cli, mirroring, source, destination):
    r = cli("link", "alter", mirroring.name, "--config", "link.principal=User:linker")
    assert r.exit_code == 0, r.stderr
    topics = [source.create_topic(unique("noauthz"), partitions=2) for _ in range(2)]
    for t in topics:
        mt.produce_records(source, t, mt.make_records(200, seed=11), partitions=2)

    r = cli("mirror", "create", *topics, "--link", mirroring.name)
    assert r.exit_code == 0, r.stderr
    assert "warning" not in r.stderr and "authorizer but" not in r.stderr
    # said once for the command, not once per topic, and nothing claims an ACL was made
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(NOT_ENFORCED), r.stderr
    assert "no authorizer" in lines[0] and "read-only: created ACL" not in r.stdout
    for t in topics:
        assert f"created mirror {t} <- {t} on link {mirroring.name}" in r.stdout
        assert mirroring.state(t).acls is None

    mirroring.start_worker()
    for t in topics:
        mirroring.wait_caught_up(t)
        mt.assert_identical(source, destination, t, t)
        assert mirroring.state(t).state == "ACTIVE"


def test_mirror_create_without_a_principal_on_a_cluster_without_authorizer_is_quiet(cli, mirroring, source):
    t = source.create_topic(unique("noauthz"), partitions=1)
    r = cli("mirror", "create", t, "--link", mirroring.name)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""  # no ACLs expected, none possible: nothing to say


def test_authorizer_detected_on_the_sasl_cluster_and_not_on_the_plain_one(sasl_cluster, destination):
    assert has_authorizer(Admin(sasl_cluster.conf("admin"), "sasl cluster")) is True
    # a principal without DescribeConfigs on the cluster is refused: proof of an authorizer
    assert has_authorizer(Admin(sasl_cluster.conf("alice"), "sasl cluster")) is True
    assert has_authorizer(Admin(destination.conf(), "destination cluster")) is False
