"""`kafka-cluster-links` without a broker, and the --dry-run and --output json of the
Confluent-style flags: Confluent link configs sorted into source, client settings and
link options (unsupported ones named), usage errors (one line, exit 2, registry
untouched), what each action calls and prints. Services are monkeypatched where a
cluster would be asked; the registry is a real file in tmp_path."""
from __future__ import annotations

import json

import pytest

from kafka_mirrors import dryrun, links, linkconfigs, mirrors
from kafka_mirrors.cli import clusterlinks
from kafka_mirrors.errors import ConfigError, UsageError
from kafka_mirrors.registry import Registry
from tests.unit.test_confluent_flags import DST, SRC, _one_error_line, calls, world  # noqa: F401  (fixtures)


@pytest.fixture
def kcl(registry_path, monkeypatch, capsys):
    """Run kafka-cluster-links in-process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("KAFKA_MIRRORS_REGISTRY", str(registry_path))
    monkeypatch.setenv("NO_COLOR", "1")

    def invoke(*args: str):
        capsys.readouterr()
        code = clusterlinks.run(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return invoke


def _registry_bytes(path):
    return path.read_bytes() if path.exists() else None


# ---------------------------------------------------------------- link configs

def test_link_config_file_is_sorted_into_source_settings_and_options():
    lc = linkconfigs.split({
        "bootstrap.servers": "src:9092,src2:9092", "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
        "consumer.offset.sync.enable": "true", "consumer.offset.sync.ms": "1000", "cluster.link.prefix": "west.",
        "consumer.offset.group.filters": '{"groupFilters": [{"name": "*", "patternType": "LITERAL", '
                                         '"filterType": "INCLUDE"}, {"name": "tmp-", "patternType": "PREFIXED", '
                                         '"filterType": "EXCLUDE"}]}',
        "auto.create.mirror.topics.filters": '{"topicFilters": [{"name": "a.b", "patternType": "LITERAL"}]}',
        "link.mode": "DESTINATION", "acl.sync.enable": "false", "replication.factor": "3"})
    assert lc.source_bootstrap == "src:9092,src2:9092"
    assert lc.client_settings == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    assert lc.options == {"consumer.offset.sync.enable": "true", "consumer.offset.sync.ms": "1000",
                          "mirror.topic.prefix": "west.", "consumer.offset.groups.include": ".*",
                          "consumer.offset.groups.exclude": "tmp\\-.*",
                          "auto.create.mirror.topics.include": "a\\.b", "auto.create.mirror.topics.exclude": "",
                          "replication.factor": "3"}


def test_unsupported_link_configs_are_all_named():
    with pytest.raises(ConfigError) as e:
        linkconfigs.split({"bootstrap.servers": "s:1", "acl.sync.enable": "true", "acl.filters": "{}",
                           "link.mode": "SOURCE", "cluster.link.something.new": "1", "security.protocol": "SSL"})
    assert e.value.message == ("link config(s) not supported by kafka-mirrors: acl.sync.enable=true, acl.filters, "
                               "link.mode=SOURCE, cluster.link.something.new")
    assert "consumer.offset.sync.enable" in e.value.hint and e.value.exit_code == 2


@pytest.mark.parametrize("value,message", [
    ("not json", "link config 'consumer.offset.group.filters' is not JSON"),
    ('{"topicFilters": []}', "must be {\"groupFilters\": [...]}"),
    ('{"groupFilters": [{"name": "a", "patternType": "MATCH"}]}', "patternType must be LITERAL or PREFIXED"),
])
def test_bad_filters_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")):
        linkconfigs.split({"consumer.offset.group.filters": value})


def test_config_pairs_split_on_commas_that_start_a_pair():
    assert linkconfigs.split_pairs("bootstrap.servers=a:1,b:2,consumer.offset.sync.ms=10") == \
        {"bootstrap.servers": "a:1,b:2", "consumer.offset.sync.ms": "10"}
    with pytest.raises(UsageError):
        linkconfigs.split_pairs("novalue")


# ---------------------------------------------------------------- kafka-cluster-links

@pytest.mark.parametrize("argv,message", [
    ([], "no action flag given"),
    (["--create", "--list", "--bootstrap-server", DST], "give one action flag, not --create and --list"),
    (["--list"], "--list needs --bootstrap-server (the destination cluster)"),
    (["--create", "--bootstrap-server", DST, "--config-file", "f"], "--create needs --link L"),
    (["--create", "--link", "x", "--bootstrap-server", DST], "--create needs --config-file F"),
    (["--list", "--config-file", "f", "--bootstrap-server", DST], "--config-file does not go with --list"),
    (["--describe", "--force", "--bootstrap-server", DST], "--force does not go with --describe"),
    (["--list", "--bootstrap-server", DST, "--include-topics"], "--include-topics is not supported"),
    (["--list", "--bootstrap-server", DST, "--frobnicate"], "unknown flag '--frobnicate'"),
    (["--create", "--link", "x", "--config", "bootstrap.servers=" + SRC, "--acl-filters-json-file", "a.json",
      "--bootstrap-server", DST], "--acl-filters-json-file is not supported by kafka-cluster-links here: ACL sync"),
    (["--create", "--link", "x", "--config", "bootstrap.servers=" + SRC + ",acl.sync.enable=true",
      "--bootstrap-server", DST], "link config(s) not supported by kafka-mirrors: acl.sync.enable=true"),
    (["--create", "--link", "x", "--config", "consumer.offset.sync.ms=5", "--bootstrap-server", DST],
     "the source cluster is not named: bootstrap.servers is in neither --config-file nor --config"),
    (["--create", "--link", "x", "--config-file", "/nonexistent/link.properties", "--bootstrap-server", DST],
     "/nonexistent/link.properties"),
])
def test_bad_input_is_one_line_exit_2_nothing_changed(kcl, registry_path, argv, message):
    before = _registry_bytes(registry_path)
    code, out, err = kcl(*argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert out == ""
    assert _registry_bytes(registry_path) == before


def test_create_from_a_confluent_config_file(kcl, registry_path, tmp_path):
    f = tmp_path / "link.properties"
    f.write_text(f"bootstrap.servers={SRC}\nconsumer.offset.sync.enable=true\nsecurity.protocol=PLAINTEXT\n")
    code, out, err = kcl("--create", "--link", "dr", "--config-file", str(f), "--config",
                         "consumer.offset.sync.ms=1000", "--exclude-validate-link", "--bootstrap-server", DST)
    assert (code, out) == (0, "Cluster link 'dr' creation successfully completed.\n"), err
    link = Registry(registry_path).get("dr")
    assert (link.source.bootstrap, link.destination.bootstrap) == (SRC, DST)
    assert link.source.config == {"security.protocol": "PLAINTEXT"}
    assert link.options == {"consumer.offset.sync.enable": "true", "consumer.offset.sync.ms": "1000"}
    # a second create of the same name is refused, the registry as it was
    before = registry_path.read_bytes()
    code, out, err = kcl("--create", "--link", "dr", "--config-file", str(f), "--exclude-validate-link",
                         "--bootstrap-server", DST)
    assert code == 1 and "link 'dr' already exists" in err
    assert registry_path.read_bytes() == before


def test_create_validate_only_records_nothing(kcl, registry_path, monkeypatch):
    monkeypatch.setattr(links, "probe", lambda spec, side, timeout: f"id-{side}")
    code, out, err = kcl("--create", "--link", "dr", "--config", f"bootstrap.servers={SRC}", "--validate-only",
                         "--bootstrap-server", DST)
    assert (code, out) == (0, "Cluster link 'dr' validation successfully completed.\n"), err
    assert not registry_path.exists() or "dr" not in Registry(registry_path).links()


def test_list_describe_delete(world, kcl, registry_path, monkeypatch):
    def probe_both(specs, timeout):
        return {side: {"reachable": side == "destination", "cluster_id": None, "error": "down" if side == "source"
                       else None, "exc": None} for side in ("source", "destination")}
    monkeypatch.setattr(links, "probe_both", probe_both)
    monkeypatch.setattr(links, "_mirrors", lambda link, t: ([], None))
    code, out, err = kcl("--list", "--bootstrap-server", DST)
    assert (code, out) == (0, "Link name: 'dr', link ID: 'dr', remote cluster ID: '-', local cluster ID: '-', "
                              "remote cluster available: 'false', link state: 'SOURCE_UNAVAILABLE'\n"), err
    code, out, err = kcl("--describe", "--link", "dr", "--bootstrap-server", DST)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Link name: 'dr', ")
    assert f"\tbootstrap.servers={SRC}" in lines and "\tconsumer.offset.sync.enable=true" in lines
    assert "SOURCE_UNAVAILABLE: down" in err
    # the link's source is not its destination: refused, nothing deleted
    code, out, err = kcl("--delete", "--link", "dr", "--bootstrap-server", SRC)
    assert code == 2 and "is not the destination of link 'dr'" in err
    code, out, err = kcl("--delete", "--link", "dr", "--bootstrap-server", DST)
    assert (code, out) == (0, "Cluster link 'dr' deletion successfully completed.\n"), err
    assert "dr" not in Registry(registry_path).links()


# ---------------------------------------------------------------- --dry-run, --output json

def test_failover_dry_run_calls_only_the_plan(world, cli, calls, monkeypatch):
    def plan(link, names, all_, verb):
        calls.append(("plan", link.name, list(names), all_, verb))
        return [{"topic": "orders", "ok": True, "state": "ACTIVE", "error": None, "dry_run": True,
                 "reason": "failed over", "workers": ["w1"], "workers_not_acked": [], "records_possibly_lost": 7,
                 "partitions": {"0": {"destination_log_end_offset": 100, "last_known_source_offset": 107,
                                      "records_possibly_lost": 7}}}]
    monkeypatch.setattr(dryrun, "stop_plan", plan)
    r = cli("--failover", "--topics", "orders", "--dry-run", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == ("Topic orders's mirror on link dr would be failed over: ACTIVE -> STOPPED; "
                                        "records possibly lost now: 7; dry run, nothing changed")
    assert [c[0] for c in calls if c[0] != "probe"] == ["plan"]
    assert calls[-1] == ("plan", "dr", ["orders"], False, "failover")
    r = cli("--promote", "--link", "dr", "--dry-run", "--output", "json", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["link_name"] == "dr" and rows[0]["mirror_topic_name"] == "orders" and rows[0]["dry_run"] is True
    assert calls[-1] == ("plan", "dr", [], True, "promote")


@pytest.mark.parametrize("argv,message", [
    (["--pause", "--topics", "orders", "--dry-run"], "--dry-run does not go with --pause"),
    (["--unpause", "--topics", "orders", "--output", "json"], "--output does not go with --unpause"),
    (["--list", "--output", "yaml"], "--output 'yaml' is not a format"),
])
def test_dry_run_and_output_usage(world, cli, calls, argv, message):
    r = cli(*argv, "--bootstrap-server", DST)
    assert r.exit_code == 2
    assert message in _one_error_line(r)
    assert [c for c in calls if c[0] != "probe"] == []


def test_create_dry_run_validates_only(world, cli, calls, monkeypatch):
    def create(link, names, source_topic=None, config_pairs=(), timeout=None, validate_only=False):
        calls.append(("create", names, validate_only))
        return [mirrors.MirrorPlan(names[0], source_topic or names[0], "id", 3, {}, False)]
    monkeypatch.setattr(mirrors, "create_mirrors", create)
    r = cli("--create", "--mirror-topic", "orders", "--link", "dr", "--dry-run", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ("Topic orders would be created as a mirror of orders on link dr (3 partition(s)); "
                        "dry run, nothing changed.\n")
    assert calls[-1] == ("create", ["orders"], True)


def test_list_and_describe_json(world, cli, monkeypatch):
    r = cli("--list", "--output", "json", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == [
        {"link_name": "dr", "mirror_topic_name": "orders", "source_topic_name": "orders", "mirror_status": "ACTIVE"},
        {"link_name": "dr", "mirror_topic_name": "payments", "source_topic_name": "payments",
         "mirror_status": "ACTIVE"}]
    from tests.unit.test_confluent_flags import _view
    monkeypatch.setattr(mirrors, "describe_view", lambda registry, link_name=None, topic=None, now=None: {
        "links": [{"link": link_name, "source_available": True, "source_error": None,
                   "mirrors": [_view("orders", "ACTIVE", 3)]}]})
    r = cli("--describe", "--topics", "orders", "--output", "json", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    [m] = json.loads(r.stdout)
    assert m["mirror_topic_name"] == "orders" and m["mirror_status"] == "ACTIVE"
    assert m["mirror_lags"] == [{"partition": 0, "lag": 3, "last_source_fetch_offset": 13,
                                 "local_log_end_offset": 10}]
