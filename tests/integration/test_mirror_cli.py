"""`mirror create/list/describe` and `describe --check` against real source and destination
brokers, with the mirror states in the destination's state topic."""
import json
import uuid

import pytest
from confluent_kafka import TopicCollection
from confluent_kafka.admin import ConfigResource

from kafka_mirrors.state import FAILED, STATE_TOPIC, StateStore

pytestmark = pytest.mark.integration


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def link(cli, source, destination):
    """A fresh link per test: the state store keys are per link, so tests stay apart."""
    def make(*options: str) -> str:
        name = uid("state")
        args = ["link", "create", name, "--source", source.bootstrap, "--destination", destination.bootstrap]
        for o in options:
            args += ["--config", o]
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        return name
    return make


def topic_configs(cluster, topic: str) -> dict:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = cluster.admin()
    entries = admin.describe_configs([res])[res].result(15)
    return {k: e.value for k, e in entries.items()}


def describe_topic(cluster, topic: str):
    admin = cluster.admin()
    return admin.describe_topics(TopicCollection([topic]))[topic].result(15)


def topic_names(cluster) -> set:
    return set(cluster.admin().list_topics(timeout=10).topics)


def store(destination, link_name: str) -> StateStore:
    return StateStore({"bootstrap.servers": destination.bootstrap}, link_name)


def test_create_copies_partitions_and_topic_configs_with_create_time(cli, link, source, destination):
    name = link()
    topic = source.create_topic(uid("orders"), partitions=3,
                                config={"retention.ms": "3600000", "message.timestamp.type": "LogAppendTime"})
    r = cli("mirror", "create", topic, "--link", name)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"created mirror {topic} <- {topic} on link {name} (3 partitions, ACTIVE)\n"

    assert len(describe_topic(destination, topic).partitions) == 3
    cfg = topic_configs(destination, topic)
    assert cfg["retention.ms"] == "3600000"
    assert cfg["message.timestamp.type"] == "CreateTime"  # source uses LogAppendTime

    rec = store(destination, name).snapshot().mirrors[topic]
    assert rec.state == "ACTIVE" and rec.source_topic == topic and rec.partitions == 3
    assert rec.source_topic_id == str(describe_topic(source, topic).topic_id)
    # the state topic is compacted with a single partition
    assert topic_configs(destination, STATE_TOPIC)["cleanup.policy"] == "compact"
    assert len(describe_topic(destination, STATE_TOPIC).partitions) == 1


def test_create_with_prefix_source_topic_and_config_override(cli, link, source, destination):
    name = link("mirror.topic.prefix=src.")
    src_topic = source.create_topic(uid("payments"), partitions=2, config={"retention.ms": "3600000"})
    mirror = uid("copy")
    r = cli("mirror", "create", mirror, "--source-topic", src_topic, "--config", "retention.ms=7200000",
            "--link", name)
    assert r.exit_code == 0, r.stderr
    dest_topic = f"src.{mirror}"
    assert len(describe_topic(destination, dest_topic).partitions) == 2
    assert topic_configs(destination, dest_topic)["retention.ms"] == "7200000"
    rec = store(destination, name).snapshot().mirrors[dest_topic]
    assert rec.source_topic == src_topic
    # describe accepts the mirror name without the prefix
    r = cli("mirror", "describe", mirror, "--link", name, "--output", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["links"][0]["mirrors"][0]["topic"] == dest_topic


def test_create_refuses_a_missing_source_topic_and_changes_nothing(cli, link, destination):
    name = link()
    missing = uid("missing")
    r = cli("mirror", "create", missing, "--link", name)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: source topic '{missing}' does not exist")
    assert "kafka-topics" in r.stderr and r.stdout == ""
    assert missing not in topic_names(destination)
    assert store(destination, name).snapshot().mirrors == {}


def test_create_refuses_a_non_empty_destination_topic(cli, link, source, destination):
    name = link()
    topic = source.create_topic(uid("busy"), partitions=1)
    destination.create_topic(topic, partitions=1)
    destination.produce(topic, [b"already here"])
    r = cli("mirror", "create", topic, "--link", name)
    assert r.exit_code == 1
    assert f"destination topic '{topic}' is not empty" in r.stderr
    assert r.stdout == ""
    assert store(destination, name).snapshot().mirrors == {}
    assert len(destination.read_all(topic)) == 1


def test_create_adopts_an_empty_destination_topic(cli, link, source, destination):
    name = link()
    topic = source.create_topic(uid("empty"), partitions=2)
    destination.create_topic(topic, partitions=2, config={"message.timestamp.type": "LogAppendTime"})
    r = cli("mirror", "create", topic, "--link", name)
    assert r.exit_code == 0, r.stderr
    assert topic_configs(destination, topic)["message.timestamp.type"] == "CreateTime"
    assert store(destination, name).snapshot().mirrors[topic].state == "ACTIVE"


def test_create_refuses_a_second_mirror_of_the_same_topic(cli, link, source):
    name = link()
    topic = source.create_topic(uid("twice"))
    assert cli("mirror", "create", topic, "--link", name).exit_code == 0
    r = cli("mirror", "create", topic, "--link", name)
    assert r.exit_code == 1
    assert f"mirror '{topic}' of link '{name}' exists already (ACTIVE)" in r.stderr


def test_list_and_describe_without_a_worker(cli, link, source):
    name = link()
    topic = source.create_topic(uid("lagging"), partitions=2)
    source.produce(topic, [b"a"] * 7, partition=0)
    source.produce(topic, [b"b"] * 3, partition=1)
    assert cli("mirror", "create", topic, "--link", name).exit_code == 0

    r = cli("mirror", "list", "--output", "json")
    assert r.exit_code == 0, r.stderr
    (m,) = json.loads(r.stdout)["mirrors"]
    assert (m["link"], m["topic"], m["state"], m["partitions"]) == (name, topic, "ACTIVE", 2)
    r = cli("mirror", "list", "--link", name)
    assert r.exit_code == 0 and topic in r.stdout and "ACTIVE" in r.stdout
    r = cli("mirror", "list", "--link", name, "--state", "FAILED", "--output", "json")
    assert json.loads(r.stdout)["mirrors"] == []

    r = cli("mirror", "describe", topic, "--link", name, "--output", "json")
    assert r.exit_code == 0, r.stderr
    view = json.loads(r.stdout)
    (link_view,) = view["links"]
    assert link_view["source_available"] is True
    (mv,) = link_view["mirrors"]
    # nothing copied yet: the lag is every source record
    assert [(p["source_last_stable_offset"], p["destination_log_end_offset"], p["lag"])
            for p in mv["partitions"]] == [(7, 0, 7), (3, 0, 3)]
    assert mv["lag"] == 10 and mv["status"] == "ACTIVE"
    assert mv["worker"]["status"] == "no worker has run"
    # the top-level describe of a registry holding only this link shows the same
    assert json.loads(cli("describe", "--output", "json").stdout) == view

    r = cli("describe", "--link", name)
    assert r.exit_code == 0, r.stderr
    assert f"mirror {topic} (source topic {topic}): ACTIVE, lag 10" in r.stdout
    assert "no worker has run" in r.stdout


def test_describe_json_covers_all_links(cli, link, source):
    a, b = link(), link()
    ta, tb = source.create_topic(uid("a")), source.create_topic(uid("b"))
    assert cli("mirror", "create", ta, "--link", a).exit_code == 0
    assert cli("mirror", "create", tb, "--link", b).exit_code == 0
    view = json.loads(cli("describe", "--output", "json").stdout)
    assert [(lv["link"], [m["topic"] for m in lv["mirrors"]]) for lv in view["links"]] == sorted([(a, [ta]), (b, [tb])])


def test_check_exit_codes(cli, link, source, destination):
    name = link()
    topic = source.create_topic(uid("checked"))
    source.produce(topic, [b"x"] * 10, partition=0)
    assert cli("mirror", "create", topic, "--link", name).exit_code == 0

    assert cli("describe", "--check").exit_code == 0
    assert cli("describe", "--check", "--max-lag", "10").exit_code == 0
    r = cli("describe", "--check", "--max-lag", "9")
    assert r.exit_code == 1
    assert r.stderr == f"error: mirror '{name}/{topic}' lag 10 exceeds --max-lag 9\n"
    assert cli("mirror", "describe", topic, "--link", name, "--check", "--max-lag", "9").exit_code == 1

    store(destination, name).set_state(topic, FAILED, "offset mismatch",
                                       failed={"partition": 0, "offset": 4, "message": "expected 4, got 5"})
    r = cli("mirror", "describe", topic, "--link", name, "--check")
    assert r.exit_code == 1
    assert r.stderr == f"error: mirror '{name}/{topic}' is FAILED at partition 0 offset 4: offset mismatch\n"
    assert "failed at partition 0 offset 4: expected 4, got 5" in r.stdout
    r = cli("mirror", "list", "--state", "failed", "--output", "json")
    assert [m["topic"] for m in json.loads(r.stdout)["mirrors"]] == [topic]


def test_describe_unknown_mirror(cli, link):
    name = link()
    r = cli("mirror", "describe", "nope", "--link", name)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: mirror 'nope' of link '{name}' not found")
    assert f"kafka-mirrors mirror list --link {name}" in r.stderr
