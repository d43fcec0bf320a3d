"""link commands without a broker: the delete guard and its confirmation, mirror counts
when the destination cannot be read, usage errors. The state store is replaced by a fake
list_mirrors; links are recorded with --no-validate."""
import json

import pytest

from kafka_mirrors import state
from kafka_mirrors.cli import link as link_cli
from kafka_mirrors.errors import KafkaUnavailableError


@pytest.fixture
def one_link(cli, registry_path):
    r = cli("link", "create", "dr", "--source", "127.0.0.1:1", "--destination", "127.0.0.1:2", "--no-validate")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "created link 'dr' (not validated)\n"
    return registry_path


def _mirrors(result):
    def fake(link, timeout=15.0):
        if isinstance(result, Exception):
            raise result
        return result
    return fake


def test_delete_refuses_while_mirrors_replicate(cli, one_link, monkeypatch):
    monkeypatch.setattr(state, "list_mirrors", _mirrors([{"topic": "orders", "state": "ACTIVE"},
                                                         {"topic": "pay", "state": "PAUSED"},
                                                         {"topic": "old", "state": "STOPPED"}]))
    before = one_link.read_bytes()
    r = cli("link", "delete", "dr", "--yes")
    assert r.exit_code == 1
    assert r.stderr == ("error: link 'dr' has 2 active or paused mirror(s): orders, pay; "
                        "promote, fail over or delete them first, or pass --force\n")
    assert one_link.read_bytes() == before
    r = cli("link", "list")
    assert r.stdout.splitlines()[1].split()[-1] == "3"

    r = cli("link", "delete", "dr", "--yes", "--force")
    assert r.exit_code == 0, r.stderr
    assert "warning: link 'dr' still had 2 active or paused mirror(s): orders, pay" in r.stderr
    assert "dr" not in one_link.read_text()


def test_delete_refuses_when_destination_cannot_be_checked(cli, one_link, monkeypatch):
    monkeypatch.setattr(state, "list_mirrors", _mirrors(KafkaUnavailableError("destination cluster down")))
    before = one_link.read_bytes()
    r = cli("link", "delete", "dr", "--yes")
    assert r.exit_code == 1
    assert r.stderr == ("error: cannot delete link 'dr': the destination could not be checked for its mirrors "
                        "(destination cluster down); run again with --force to delete it anyway\n")
    assert one_link.read_bytes() == before

    r = cli("link", "list", "-o", "json")
    assert json.loads(r.stdout)["links"][0]["mirrors"] is None
    r = cli("link", "list")
    assert r.stdout.splitlines()[1].split()[-1] == "?"

    r = cli("link", "delete", "dr", "--yes", "--force")
    assert r.exit_code == 0, r.stderr
    assert json.loads(cli("link", "list", "-o", "json").stdout) == {"links": []}


@pytest.mark.parametrize("answer,code,kept", [("n\n", 1, True), ("y\n", 0, False)])
def test_delete_asks_on_a_terminal(cli, one_link, monkeypatch, answer, code, kept):
    monkeypatch.setattr(state, "list_mirrors", _mirrors([]))
    monkeypatch.setattr(link_cli, "_stdin_is_terminal", lambda: True)
    r = cli("link", "delete", "dr", input=answer)
    assert r.exit_code == code, r.stderr
    assert "Delete link 'dr' (127.0.0.1:1 -> 127.0.0.1:2)?" in r.stderr
    assert ("[links.dr]" in one_link.read_text()) is kept


def test_alter_and_unset(cli, one_link):
    r = cli("link", "alter", "dr", "-c", "auto.create.mirror.topics.include=orders.*,pay")
    assert r.exit_code == 0, r.stderr
    assert '"auto.create.mirror.topics.include" = "orders.*,pay"' in one_link.read_text()
    r = cli("link", "alter", "dr", "--unset", "auto.create.mirror.topics.include")
    assert r.exit_code == 0, r.stderr
    assert "auto.create" not in one_link.read_text()


@pytest.mark.parametrize("args,code,message", [
    (["link", "alter", "dr"], 2, "error: nothing to change; pass --config KEY=VALUE or --unset KEY"),
    (["link", "alter", "dr", "--unset", "nope"], 2, "error: unknown link option 'nope'"),
    (["link", "alter", "dr", "-c", "auto.create.mirror.topics.include=(["], 2,
     "error: link option 'auto.create.mirror.topics.include' has a bad value '([': '([' is not a regular expression"),
    (["link", "alter", "dr", "-c", "replication.factor=0"], 2,
     "error: link option 'replication.factor' has a bad value '0': expected -1"),
    (["link", "create", "a b", "--source", "h:1", "--destination", "h:2", "--no-validate"], 2,
     "error: bad link name 'a b'"),
    (["link", "create", "x", "--source", "h:1", "--destination", "h:2", "--no-validate", "--validate-only"], 2,
     "error: --no-validate and --validate-only exclude each other"),
    (["link", "create", "x", "--source", "h:1", "--destination", "h:2", "--no-validate",
      "--source-setting", "sasl.password"], 2, "error: bad --source-setting 'sasl.password': expected KEY=VALUE"),
    (["link", "create", "x", "--source", "h:1", "--destination", "h:2", "--no-validate",
      "--source-setting", "no.such.librdkafka.key=1"], 2,
     "error: client settings of the source cluster are not accepted by librdkafka: No such configuration property"),
    (["link", "create", "x", "--source", "h:1", "--destination", "H:1", "--no-validate"], 2,
     "error: source and destination are the same cluster (h:1)"),
])
def test_usage_errors_change_nothing(cli, one_link, args, code, message):
    before = one_link.read_bytes()
    r = cli(*args)
    assert r.exit_code == code, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert r.stdout == ""
    assert one_link.read_bytes() == before
