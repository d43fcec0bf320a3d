"""`kafka-mirrors link ...` against real brokers: the whole life of a link, a link to the
SASL cluster made from Kafka-style properties files, a table of bad inputs (each one line
on stderr, a non-zero exit, the registry bytes unchanged) and 20 concurrent creates."""
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAFKA_MIRRORS = ROOT / ".venv" / "bin" / "kafka-mirrors"


def _one_error_line(r) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_link_life_cycle(cli, source, destination, registry_path):
    r = cli("link", "create", "dr", "--source", source.bootstrap, "--destination", destination.bootstrap,
            "--validate-only")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == (f"link 'dr' is valid; nothing recorded (source cluster ID {source.cluster_id}, "
                        f"destination cluster ID {destination.cluster_id})\n")
    assert not registry_path.exists()

    r = cli("link", "create", "dr", "--source", source.bootstrap, "--destination", destination.bootstrap,
            "--config", "mirror.topic.prefix=src.")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == (f"created link 'dr' (source cluster ID {source.cluster_id}, "
                        f"destination cluster ID {destination.cluster_id})\n")

    r = cli("link", "list")
    assert r.exit_code == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "SOURCE", "SOURCE", "CLUSTER", "ID", "DESTINATION", "DESTINATION",
                              "CLUSTER", "ID", "MIRRORS"]
    assert row.split() == ["dr", source.bootstrap, source.cluster_id, destination.bootstrap,
                           destination.cluster_id, "0"]

    r = cli("link", "list", "--check", "--output", "json")
    assert r.exit_code == 0, r.stderr
    view = json.loads(r.stdout)
    assert view == {"links": [{
        "name": "dr", "mirrors": 0, "created_at": view["links"][0]["created_at"],
        "source": {"bootstrap": source.bootstrap, "cluster_id": source.cluster_id, "reachable": True, "error": None},
        "destination": {"bootstrap": destination.bootstrap, "cluster_id": destination.cluster_id,
                        "reachable": True, "error": None},
    }]}

    r = cli("link", "alter", "dr", "--config", "consumer.offset.sync.ms=10000", "--unset", "mirror.topic.prefix")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "altered link 'dr': consumer.offset.sync.ms=10000, mirror.topic.prefix unset\n"

    r = cli("link", "describe", "dr", "-o", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["options"] == {"consumer.offset.sync.ms": "10000"}
    assert d["effective_options"]["consumer.offset.sync.ms"] == 10000
    assert d["effective_options"]["mirror.topic.prefix"] == ""
    assert d["source"]["reachable"] is True and d["source"]["cluster_id_matches"] is True
    assert d["destination"]["current_cluster_id"] == destination.cluster_id
    assert d["mirrors"] == [] and d["mirrors_error"] is None

    r = cli("link", "describe", "dr")
    assert r.exit_code == 0, r.stderr
    assert f"source:       {source.bootstrap}  cluster ID {source.cluster_id}  reachable" in r.stdout
    assert "  consumer.offset.sync.ms = 10000\n" in r.stdout
    assert "  mirror.topic.prefix = \"\"  (default)\n" in r.stdout
    assert "mirrors: none" in r.stdout

    # no terminal and no --yes: refuse at once instead of waiting for an answer
    before = registry_path.read_bytes()
    r = cli("link", "delete", "dr")
    assert r.exit_code == 2
    assert _one_error_line(r) == ("error: link 'dr' not deleted: confirmation needed but there is no terminal; "
                                  "pass --yes")
    assert registry_path.read_bytes() == before

    r = cli("link", "delete", "dr", "--yes")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "deleted link 'dr'\n"
    r = cli("link", "list", "-o", "json")
    assert json.loads(r.stdout) == {"links": []}


def test_sasl_link_from_kafka_properties_files(cli, source, sasl_cluster, registry_path, monkeypatch):
    linker = sasl_cluster.client_config["linker"]
    assert "PlainLoginModule" in linker.read_text()  # the Kafka CLI's own --command-config format
    r = cli("link", "create", "to-sasl", "--source", source.bootstrap, "--destination", sasl_cluster.bootstrap,
            "--destination-config", str(linker), "--config", "link.principal=User:linker")
    assert r.exit_code == 0, r.stderr
    assert f"destination cluster ID {sasl_cluster.cluster_id}" in r.stdout
    saved = registry_path.read_text()
    assert f'config_file = "{linker.resolve()}"' in saved
    assert "linker-secret" not in saved

    # the admin file on the source side too, and the same through inline settings with an
    # ${ENV_VAR} placeholder: the registry keeps the placeholder, never the password
    monkeypatch.setenv("KM_TEST_ADMIN_PW", "admin-secret")
    r = cli("link", "create", "from-sasl", "--source", sasl_cluster.bootstrap, "--destination", source.bootstrap,
            "--source-setting", "security.protocol=SASL_PLAINTEXT", "--source-setting", "sasl.mechanism=PLAIN",
            "--source-setting", "sasl.username=admin", "--source-setting", "sasl.password=${KM_TEST_ADMIN_PW}")
    assert r.exit_code == 0, r.stderr
    assert "admin-secret" not in registry_path.read_text()
    assert "${KM_TEST_ADMIN_PW}" in registry_path.read_text()

    # an inline secret is allowed; the registry stays private and describe redacts it
    r = cli("link", "create", "inline", "--source", sasl_cluster.bootstrap, "--destination", source.bootstrap,
            "--source-setting", "security.protocol=SASL_PLAINTEXT", "--source-setting", "sasl.mechanism=PLAIN",
            "--source-setting", "sasl.username=alice", "--source-setting", "sasl.password=alice-secret")
    assert r.exit_code == 0, r.stderr
    assert "readable by its owner only" in r.stderr
    assert stat.S_IMODE(os.stat(registry_path).st_mode) == 0o600
    for name in ("inline", "to-sasl", "from-sasl"):
        for fmt in ("text", "json"):
            r = cli("link", "describe", name, "-o", fmt)
            assert r.exit_code == 0, r.stderr
            assert "secret" not in r.stdout.replace("${KM_TEST_ADMIN_PW}", "")
    d = json.loads(cli("link", "describe", "inline", "-o", "json").stdout)
    assert d["source"]["config"]["sasl.password"] == "******"
    assert d["source"]["reachable"] is True and d["source"]["current_cluster_id"] == sasl_cluster.cluster_id
    d = json.loads(cli("link", "describe", "to-sasl", "-o", "json").stdout)
    assert d["destination"]["config_file"] == str(linker.resolve())
    assert d["destination"]["reachable"] is True
    assert d["effective_options"]["link.principal"] == "User:linker"

    r = cli("link", "list", "--check", "-o", "json")
    rows = {x["name"]: x for x in json.loads(r.stdout)["links"]}
    assert sorted(rows) == ["from-sasl", "inline", "to-sasl"]
    assert all(x["source"]["reachable"] and x["destination"]["reachable"] for x in rows.values())

    r = cli("link", "delete", "inline", "--yes")
    assert r.exit_code == 0, r.stderr
    assert sorted(json.loads(cli("link", "list", "-o", "json").stdout)["links"][i]["name"] for i in range(2)) == \
        ["from-sasl", "to-sasl"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS = [
    # (id, registry content: None = as set up, command, exit code, message)
    ("unknown link describe", None, ["link", "describe", "nope"], 1,
     "error: link 'nope' not found; run 'kafka-mirrors link list'"),
    ("unknown link alter", None, ["link", "alter", "nope", "-c", "replication.factor=3"], 1,
     "error: link 'nope' not found; run 'kafka-mirrors link list'"),
    ("unknown link delete", None, ["link", "delete", "nope", "--yes"], 1,
     "error: link 'nope' not found; run 'kafka-mirrors link list'"),
    ("duplicate name", None, ["link", "create", "dr", "--source", "{src}", "--destination", "{dst}"], 1,
     "error: link 'dr' already exists; run 'kafka-mirrors link describe dr', or pick another name"),
    ("same cluster, same address", None, ["link", "create", "x", "--source", "{src}", "--destination", "{src}"], 2,
     "error: source and destination are the same cluster ({src}); a link joins two different clusters"),
    ("same cluster, other address", None,
     ["link", "create", "x", "--source", "{src}", "--destination", "{src_localhost}"], 2,
     "error: source and destination are the same cluster (cluster ID {src_id}); a link joins two different clusters"),
    ("unreachable bootstrap", None,
     ["link", "create", "x", "--source", "{src}", "--destination", "127.0.0.1:1", "--timeout", "3"], 1,
     "error: destination cluster 127.0.0.1:1 "),  # "did not answer within 3 s" or librdkafka's own timeout
    ("malformed registry", "version = [\n", ["link", "list"], 1, "error: registry {registry} is not valid TOML"),
    ("malformed registry on create", "[links.dr\n",
     ["link", "create", "y", "--source", "{src}", "--destination", "{dst}", "--no-validate"], 1,
     "error: registry {registry} is not valid TOML"),
    ("wrong registry types", 'version = "1"\n', ["link", "list"], 1,
     "error: registry {registry}: version must be an integer; fix the file by hand or move it aside"),
    ("wrong link types", 'version = 1\n[links.dr]\ncreated_at = "x"\nsource = "a:1"\n', ["link", "describe", "dr"], 1,
     "error: registry {registry}: links.dr.source must be a table"),
    ("bad --config key", None,
     ["link", "create", "x", "--source", "{src}", "--destination", "{dst}", "-c", "mirror.topic.prefx=a"], 2,
     "error: unknown link option 'mirror.topic.prefx' (did you mean 'mirror.topic.prefix'?); "
     "run 'kafka-mirrors link create --help' for the list"),
    ("bad --config value", None, ["link", "alter", "dr", "-c", "consumer.offset.sync.enable=maybe"], 2,
     "error: link option 'consumer.offset.sync.enable' has a bad value 'maybe': expected true or false"),
    ("bad --config shape", None, ["link", "alter", "dr", "-c", "replication.factor"], 2,
     "error: bad --config 'replication.factor': expected KEY=VALUE"),
    ("missing properties file", None,
     ["link", "create", "x", "--source", "{src}", "--destination", "{dst}", "--source-config", "/nonexistent/a.properties"],
     2, "error: client properties file '/nonexistent/a.properties' not found"),
    ("JKS truststore", None,
     ["link", "create", "x", "--source", "{src}", "--destination", "{dst}", "--source-config", "{jks}"],
     2, "error: ssl.truststore.location '/etc/kafka/client.truststore.jks' is a JKS truststore"),
    ("wrong SASL password", None,
     ["link", "create", "x", "--source", "{src}", "--destination", "{sasl}", "--destination-config", "{wrong_pw}",
      "--timeout", "5"], 1, "error: connecting on destination cluster {sasl} was refused: "),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs(case, cli, source, destination, sasl_cluster, registry_path, tmp_path):
    _, content, args, code, message = case
    r = cli("link", "create", "dr", "--source", source.bootstrap, "--destination", destination.bootstrap,
            "--no-validate")
    assert r.exit_code == 0, r.stderr
    if content is not None:
        registry_path.write_text(content)
    wrong_pw = _write(tmp_path / "wrong.properties", sasl_cluster.client_config["linker"].read_text()
                      .replace("linker-secret", "not-the-password"))
    jks = _write(tmp_path / "jks.properties", "security.protocol=SSL\n"
                 "ssl.truststore.location=/etc/kafka/client.truststore.jks\nssl.truststore.password=changeit\n")
    values = {"src": source.bootstrap, "dst": destination.bootstrap, "sasl": sasl_cluster.bootstrap,
              "src_localhost": source.bootstrap.replace("127.0.0.1", "localhost"), "src_id": source.cluster_id,
              "registry": registry_path, "wrong_pw": wrong_pw, "jks": jks}
    before = registry_path.read_bytes()
    started = time.monotonic()
    r = cli(*[a.format(**values) for a in args])
    elapsed = time.monotonic() - started
    assert r.exit_code == code, (r.stdout, r.stderr)
    line = _one_error_line(r)
    assert line.startswith(message.format(**values))
    assert "not-the-password" not in line and "changeit" not in line
    assert r.stdout == ""
    assert registry_path.read_bytes() == before
    assert elapsed < 10  # the 3 s and 5 s timeouts hold, far from the 15 s default


def test_twenty_concurrent_creates_lose_nothing(tmp_path):
    registry = tmp_path / "links.toml"
    env = dict(os.environ, KAFKA_MIRRORS_REGISTRY=str(registry))
    procs = [subprocess.Popen([str(KAFKA_MIRRORS), "link", "create", f"l{i:02d}", "--source", f"127.0.0.1:{20000 + i}",
                               "--destination", f"127.0.0.1:{21000 + i}", "--no-validate"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(20)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [rc for rc, _, _ in results] == [0] * 20, results
    out = subprocess.run([str(KAFKA_MIRRORS), "link", "list", "-o", "json", "--timeout", "1"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = [x["name"] for x in json.loads(out.stdout)["links"]]
    assert names == [f"l{i:02d}" for i in range(20)]
    assert all(x["mirrors"] is None for x in json.loads(out.stdout)["links"])  # nothing listens there: "?"
