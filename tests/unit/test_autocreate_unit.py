"""Auto-created mirrors without a broker: which source topics get a mirror, and a
refusal logged once."""
import logging

from kafka_mirrors.worker.autocreate import AutoCreator, topics_to_mirror
from kafka_mirrors.errors import ConflictError
from kafka_mirrors.state import FAILED, STOPPED, MirrorRecord


def rec(topic, source, state="ACTIVE"):
    return MirrorRecord(link="dr", topic=topic, source_topic=source, state=state)


def test_topics_to_mirror_patterns_internal_and_existing_mirrors_in_any_state():
    source = ["orders", "orders-test", "payments", "__consumer_offsets", "_schemas", "__kafka_mirrors_state",
              "billing", "stopped-one", "failed-one", "_confluent-metrics", "audit"]
    mirrors = {"src.billing": rec("src.billing", "billing"), "x": rec("x", "stopped-one", STOPPED),
               "src.failed-one": rec("src.failed-one", "failed-one", FAILED)}
    got = topics_to_mirror(source, mirrors, [".*"], [".*-test", "audit"], prefix="src.")
    assert got == ["orders", "payments"]
    assert topics_to_mirror(source, mirrors, ["pay.*"], [], prefix="src.") == ["payments"]
    # no include pattern: nothing is mirrored automatically
    assert topics_to_mirror(source, {}, [], []) == []


class FakeLink:
    name = "dr"
    options = {"auto.create.mirror.topics.include": ["t-.*"], "auto.create.mirror.topics.exclude": [],
               "mirror.topic.prefix": ""}

    def option(self, key):
        return self.options[key]


def test_refusal_logged_once_and_retried_later(caplog):
    now = [0.0]
    calls = []

    def create(topic):
        calls.append(topic)
        if topic == "t-bad":
            raise ConflictError("destination topic 't-bad' is not empty")

    ac = AutoCreator(FakeLink(), create, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="kafka_mirrors.autocreate"):
        assert ac.tick(["t-bad", "t-ok", "other"], {}) == ["t-ok"]
        assert ac.tick(["t-bad", "t-ok"], {"t-ok": rec("t-ok", "t-ok")}) == []
        now[0] = 61.0
        assert ac.tick(["t-bad", "t-ok"], {"t-ok": rec("t-ok", "t-ok")}) == []
    assert calls == ["t-bad", "t-ok", "t-bad"]
    refusals = [r for r in caplog.records if "was not mirrored" in r.getMessage()]
    assert len(refusals) == 1
