"""`describe` across links: a link whose destination cannot be reached gets an error row
(text and JSON), the other links still print, and the command exits 1."""
import json
import socket
import uuid

import pytest

pytestmark = pytest.mark.integration


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_links(cli, source, destination):
    live, dead = uid("live"), uid("dead")
    assert cli("link", "create", live, "--source", source.bootstrap,
               "--destination", destination.bootstrap).exit_code == 0
    # request.timeout.s bounds every admin call and the state-store read: keep it short
    r = cli("link", "create", dead, "--source", source.bootstrap,
            "--destination", f"127.0.0.1:{closed_port()}", "--no-validate", "--config", "request.timeout.s=2")
    assert r.exit_code == 0, r.stderr
    topic = source.create_topic(uid("orders"))
    source.produce(topic, [b"x"] * 4, partition=0)
    assert cli("mirror", "create", topic, "--link", live).exit_code == 0
    return live, dead, topic


def test_describe_prints_the_live_link_beside_the_dead_one(cli, two_links):
    live, dead, topic = two_links
    r = cli("describe")
    assert r.exit_code == 1
    assert f"link {live} (source reachable)" in r.stdout
    assert f"mirror {topic} (source topic {topic}): ACTIVE, lag 4" in r.stdout
    (dead_row,) = [line for line in r.stdout.splitlines() if line.startswith(f"link {dead} ")]
    assert dead_row.startswith(f"link {dead} (ERROR: destination cluster 127.0.0.1:")
    assert r.stderr.startswith(f"error: link '{dead}' could not be described: ")
    assert len(r.stderr.splitlines()) == 1


def test_describe_json_has_an_error_row(cli, two_links):
    live, dead, topic = two_links
    r = cli("describe", "--output", "json")
    assert r.exit_code == 1
    rows = {lv["link"]: lv for lv in json.loads(r.stdout)["links"]}
    assert sorted(rows) == sorted([live, dead])
    assert rows[live]["error"] is None
    assert [(m["topic"], m["lag"]) for m in rows[live]["mirrors"]] == [(topic, 4)]
    assert rows[dead]["mirrors"] == [] and rows[dead]["source_available"] is None
    assert "127.0.0.1:" in rows[dead]["error"]


def test_check_exits_1_naming_the_dead_link(cli, two_links):
    live, dead, _ = two_links
    r = cli("describe", "--check", "--max-lag", "100")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: link '{dead}' could not be described: ")
    assert f"link {live} (source reachable)" in r.stdout
    # the live link alone passes the same check
    assert cli("describe", "--link", live, "--check", "--max-lag", "100").exit_code == 0
