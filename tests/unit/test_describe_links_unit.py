"""describe across links without a broker: a link whose describe raises becomes an error
row, the others keep theirs, and the command exits 1 (with or without --check)."""
import json

from kafka_mirrors.cli import describe as cli_describe
from kafka_mirrors.errors import KafkaUnavailableError


class Registry:
    def links(self):
        return {"b-dead": object(), "a-live": object()}


def fake_describe_view(registry, link_name=None, topic=None, now=None):
    if link_name == "b-dead":
        raise KafkaUnavailableError("destination cluster 127.0.0.1:1 did not answer within 2 s (read state)",
                                    "check the bootstrap servers and that the cluster is up")
    return {"links": [{"link": link_name, "source_available": True, "source_error": None,
                       "consumer_offset_sync": None, "mirrors": []}]}


def test_one_unreachable_link_becomes_an_error_row(monkeypatch):
    monkeypatch.setattr("kafka_mirrors.mirrors.describe_view", fake_describe_view)
    view = cli_describe.describe_links_view(Registry(), None)
    assert [lv["link"] for lv in view["links"]] == ["a-live", "b-dead"]
    assert "error" not in view["links"][0]
    dead = view["links"][1]
    assert dead["error"].startswith("destination cluster 127.0.0.1:1 did not answer")
    assert dead["mirrors"] == [] and dead["source_available"] is None
    assert cli_describe.link_problems(view) == [f"link 'b-dead' could not be described: {dead['error']}"]


def test_cli_prints_both_rows_and_exits_1(cli, monkeypatch):
    monkeypatch.setattr("kafka_mirrors.mirrors.describe_view", fake_describe_view)
    monkeypatch.setattr("kafka_mirrors.registry.resolve_registry", lambda app: Registry())
    r = cli("describe")
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0] == "link a-live (source reachable)"
    assert "link b-dead (ERROR: destination cluster 127.0.0.1:1 did not answer" in r.stdout
    assert r.stderr.startswith("error: link 'b-dead' could not be described: ")
    r = cli("describe", "--output", "json")
    assert r.exit_code == 1
    rows = json.loads(r.stdout)["links"]
    assert [(lv["link"], lv["error"] is None) for lv in rows] == [("a-live", True), ("b-dead", False)]
    assert cli("describe", "--check").exit_code == 1
