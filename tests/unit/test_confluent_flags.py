"""Confluent-style flags without a broker: routing from the entry point, parsing and its
one-line usage errors, the --bootstrap-server destination check (addresses, cluster IDs
through --command-config), topic-to-link resolution, and what each action calls and
prints. The services are monkeypatched; the registry is a real file in tmp_path."""
from __future__ import annotations

import subprocess
import sys

import pytest

from kafka_mirrors import dr, mirrors
from kafka_mirrors.cli import confluent
from kafka_mirrors.errors import KafkaUnavailableError

SRC, DST = "src1:9092", "dst1:9093"


@pytest.fixture
def calls():
    return []


@pytest.fixture
def world(cli, monkeypatch, calls):
    """Links 'dr' (SRC -> DST) and 'other' (other-src -> other-dst) recorded without
    contacting clusters; mirror listings, services and the cluster-ID probe faked."""
    for name, src, dst in (("dr", SRC, DST), ("other", "osrc:1", "odst:2")):
        r = cli("link", "create", name, "--source", src, "--destination", dst, "--no-validate")
        assert r.exit_code == 0, r.stderr
    state = {"mirrors": {"dr": {"orders": "ACTIVE", "payments": "ACTIVE"}, "other": {"audit": "ACTIVE"}},
             "ids": {}}

    def list_view(registry, link_name=None, state_=None):
        ms = state["mirrors"].get(link_name, {})
        return {"mirrors": [{"link": link_name, "topic": t, "source_topic": t, "state": s}
                            for t, s in sorted(ms.items())], "errors": []}

    def probe(conf, label, timeout):
        calls.append(("probe", conf["bootstrap.servers"], dict(conf)))
        cid = state["ids"].get(conf["bootstrap.servers"].lower())
        if cid is None:
            raise KafkaUnavailableError(f"{label} did not answer within {timeout:g} s (describe cluster)")
        return cid

    def rows(verb, new_state):
        def service(link, names, all_=False, **kw):
            calls.append((verb, link.name, list(names), all_, kw))
            chosen = names or sorted(state["mirrors"][link.name])
            return [{"topic": t, "ok": True, "state": new_state, "error": None} for t in chosen]
        return service

    def stopped(verb, reason):
        def service(link, names, all_=False, **kw):
            calls.append((verb, link.name, list(names), all_, kw))
            chosen = names or sorted(state["mirrors"][link.name])
            return [{"topic": t, "ok": True, "state": "STOPPED", "error": None, "reason": reason,
                     "partitions": {"0": {"destination_log_end_offset": 100, "last_known_source_offset": 107,
                                          "records_possibly_lost": 7}},
                     "workers": ["w1"], "workers_not_acked": [], "records_possibly_lost": 7} for t in chosen]
        return service

    monkeypatch.setattr(mirrors, "list_view", list_view)
    monkeypatch.setattr(confluent, "_probe_cluster_id", probe)
    monkeypatch.setattr(dr, "pause", rows("pause", "PAUSED"))
    monkeypatch.setattr(dr, "resume", rows("resume", "ACTIVE"))
    monkeypatch.setattr(dr, "promote", stopped("promote", "promoted"))
    monkeypatch.setattr(dr, "failover", stopped("failover", "failed over"))
    return state


def _one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------- routing

@pytest.mark.parametrize("argv,confluent_style", [
    (["--promote", "--topics", "a"], True),
    (["--bootstrap-server", "d:1", "--describe"], True),
    (["--registry", "f.toml", "--list", "--bootstrap-server", "d:1"], True),
    (["--registry=f.toml", "--failover"], True),
    (["--help"], False),
    (["-h"], False),
    (["--version"], False),
    (["--registry", "f.toml", "link", "list"], False),
    (["promote", "orders", "--link", "dr"], False),
    ([], False),
])
def test_routing(argv, confluent_style):
    assert confluent.is_confluent_style(argv) is confluent_style


def test_native_commands_unchanged(cli, registry_path):
    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.startswith("kafka-mirrors ")
    r = cli("--help")
    assert r.exit_code == 0 and "link" in r.stdout and "--bootstrap-server" in r.stdout
    r = cli("--registry", str(registry_path), "link", "list")
    assert r.exit_code == 0, r.stderr


def test_help_of_the_flag_mode(cli):
    r = cli("--promote", "--help")
    assert r.exit_code == 0
    assert "--bootstrap-server HOST:PORT" in r.stdout and "--truncate-and-restore" in r.stdout


# ---------------------------------------------------------------- usage errors

@pytest.mark.parametrize("argv,message", [
    (["--promote", "--topics", "orders"], "--promote needs --bootstrap-server"),
    (["--promote", "--failover", "--topics", "orders", "--bootstrap-server", DST],
     "give one action flag, not --promote and --failover"),
    (["--promote", "--bootstrap-server", DST], "--promote needs --topics T,U or --link L"),
    (["--promote", "--topics", "orders", "--bootstrap-server", DST, "--frobnicate"], "unknown flag '--frobnicate'"),
    (["--pause", "orders", "--link", "dr", "--bootstrap-server", DST], "unexpected argument 'orders'"),
    (["--promote", "--topics"], "--topics needs a value"),
    (["--bootstrap-server", DST], "no action flag given"),
    (["--create", "--link", "dr", "--bootstrap-server", DST], "--create needs --mirror-topic T"),
    (["--create", "--mirror-topic", "x", "--bootstrap-server", DST], "--create needs exactly one --link L"),
    (["--describe", "--mirror-topic", "x", "--bootstrap-server", DST], "--mirror-topic does not go with --describe"),
    (["--promote", "--topics", "a", "--config", "a=b", "--bootstrap-server", DST], "--config does not go with --promote"),
    (["--failover", "--topics", "orders", "--pending-stopped-only", "--bootstrap-server", DST],
     "--pending-stopped-only does not go with --failover"),
    (["--promote", "--link", "dr,other", "--bootstrap-server", DST], "--promote takes one --link"),
    (["--promote", "--topics", "a,,b", "--bootstrap-server", DST], "--topics 'a,,b' holds an empty name"),
    (["--promote", "--topics", "a", "--timeout", "soon", "--bootstrap-server", DST], "is not a number"),
])
def test_bad_input_is_one_line_exit_2_nothing_called(world, cli, calls, argv, message):
    r = cli(*argv)
    assert r.exit_code == 2
    assert message in _one_error_line(r)
    assert r.stdout == ""
    assert not [c for c in calls if c[0] != "probe"]


def test_command_config_must_exist(world, cli, calls, tmp_path):
    r = cli("--promote", "--topics", "orders", "--bootstrap-server", DST, "--command-config",
            str(tmp_path / "nope.properties"))
    assert r.exit_code == 2
    assert "client properties file" in _one_error_line(r) and "not found" in r.stderr
    assert calls == []


# ---------------------------------------------------------------- the destination check

def test_source_address_is_refused_naming_the_destination(world, cli, calls):
    r = cli("--failover", "--topics", "orders", "--link", "dr", "--bootstrap-server", SRC)
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert f"--bootstrap-server {SRC} is not the destination of link 'dr' ({DST}), it is the link's source" in line
    assert f"pass --bootstrap-server {DST}" in line
    assert not [c for c in calls if c[0] == "failover"]


def test_unknown_address_is_refused_after_comparing_cluster_ids(world, cli, calls):
    world["ids"].update({"dst2:9093": "cluster-X"})
    world_link_ids(cli)  # dr's destination answers as cluster-D
    r = cli("--failover", "--link", "dr", "--bootstrap-server", "dst2:9093")
    assert r.exit_code == 2
    assert f"is not the destination of link 'dr' ({DST})" in _one_error_line(r)
    assert not [c for c in calls if c[0] == "failover"]


def world_link_ids(cli):
    """Record cluster IDs on link 'dr' as `link create` would have."""
    from kafka_mirrors.registry import Registry
    import os
    reg = Registry(os.environ["KAFKA_MIRRORS_REGISTRY"])
    with reg.update() as links:
        links["dr"].destination_cluster_id = "cluster-D"
        links["dr"].source_cluster_id = "cluster-S"


def test_another_broker_of_the_destination_is_accepted(world, cli, calls, tmp_path):
    world_link_ids(cli)
    world["ids"]["dst2:9093"] = "cluster-D"
    props = tmp_path / "dst.properties"
    props.write_text("security.protocol=PLAINTEXT\nclient.id=runbook\n")
    r = cli("--promote", "--topics", "orders", "--link", "dr", "--bootstrap-server", "DST2:9093",
            "--command-config", str(props))
    assert r.exit_code == 0, r.stderr
    probes = [c for c in calls if c[0] == "probe"]
    assert probes and probes[0][1] == "DST2:9093" and probes[0][2]["client.id"] == "runbook"
    assert ("promote", "dr", ["orders"], False, {"timeout": 60.0}) in calls


def test_address_match_is_case_insensitive_and_ignores_protocol(world, cli, calls):
    r = cli("--pause", "--topics", "orders", "--bootstrap-server", "PLAINTEXT://DST1:9093,other:1")
    assert r.exit_code == 0, r.stderr
    assert [c for c in calls if c[0] == "probe"] == []


# ---------------------------------------------------------------- resolution of topics

def test_topics_without_link_find_their_link_on_that_destination(world, cli, calls):
    r = cli("--promote", "--topics", "orders,payments", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert ("promote", "dr", ["orders", "payments"], False, {"timeout": 60.0}) in calls
    assert "Stopped topic orders's mirror on link dr: STOPPED (promoted); records possibly lost: 7" in r.stdout
    assert "\tPartition: 0\tLocalLogEndOffset: 100\tLastKnownSourceOffset: 107\tRecordsPossiblyLost: 7" in r.stdout


def test_topic_not_a_mirror_of_the_link_changes_nothing(world, cli, calls):
    r = cli("--failover", "--topics", "orders,nope", "--link", "dr", "--bootstrap-server", DST)
    assert r.exit_code == 1
    assert "topic 'nope' is not a mirror of link 'dr'; nothing changed" in _one_error_line(r)
    assert not [c for c in calls if c[0] == "failover"]


def test_topic_of_no_link_on_that_destination(world, cli, calls):
    r = cli("--failover", "--topics", "audit", "--bootstrap-server", DST)
    assert r.exit_code == 1
    assert f"topic 'audit' is not a mirror of any link with destination {DST}" in _one_error_line(r)


def test_topic_mirrored_by_two_links_needs_link(world, cli, calls):
    r = cli("link", "create", "dr2", "--source", "s3:1", "--destination", DST, "--no-validate")
    assert r.exit_code == 0, r.stderr
    world["mirrors"]["dr2"] = {"orders": "ACTIVE"}
    r = cli("--failover", "--topics", "orders", "--bootstrap-server", DST)
    assert r.exit_code == 2
    assert "topic 'orders' is a mirror of links dr, dr2" in _one_error_line(r)
    r = cli("--failover", "--topics", "orders", "--link", "dr2", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert ("failover", "dr2", ["orders"], False, {}) in calls


def test_link_alone_applies_to_every_mirror_without_prompt(world, cli, calls):
    r = cli("--failover", "--link", "dr", "--bootstrap-server", DST)  # no terminal, no --yes
    assert r.exit_code == 0, r.stderr
    assert ("failover", "dr", [], True, {}) in calls
    assert r.stdout.count("Stopped topic ") == 2


def test_failed_row_exits_1_and_other_rows_print(world, cli, calls, monkeypatch):
    def pause(link, names, all_=False):
        return [{"topic": "orders", "ok": True, "state": "PAUSED", "error": None},
                {"topic": "payments", "ok": False, "state": "PAUSED",
                 "error": "mirror 'payments' is PAUSED; pause needs ACTIVE"}]
    monkeypatch.setattr(dr, "pause", pause)
    r = cli("--pause", "--topics", "orders,payments", "--bootstrap-server", DST)
    assert r.exit_code == 1
    assert r.stdout == "Paused topic orders's mirror on link dr: PAUSED\n"
    assert "mirror 'payments' is PAUSED; pause needs ACTIVE" in _one_error_line(r)


def test_unpause_resumes(world, cli, calls):
    r = cli("--unpause", "--topics", "orders", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert ("resume", "dr", ["orders"], False, {}) in calls
    assert r.stdout == "Resumed topic orders's mirror on link dr: ACTIVE\n"


# ---------------------------------------------------------------- create, list, describe

def test_create_maps_mirror_topic_and_prints_like_confluent(world, cli, calls, monkeypatch):
    from kafka_mirrors.state import MirrorRecord

    def create(link, names, source_topic=None, config_pairs=(), timeout=None):
        calls.append(("create", link.name, names, source_topic, list(config_pairs)))
        return [MirrorRecord(link=link.name, topic=names[0], source_topic=source_topic or names[0], partitions=2)]
    monkeypatch.setattr(mirrors, "create_mirrors", create)
    r = cli("--create", "--mirror-topic", "orders-copy", "--source-topic", "orders", "--link", "dr",
            "--bootstrap-server", DST, "--config", "retention.ms=1000", "--config", "max.message.bytes=2000")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "Created topic orders-copy.\n"
    assert calls[-1] == ("create", "dr", ["orders-copy"], "orders", ["retention.ms=1000", "max.message.bytes=2000"])


def test_create_with_prefix_needs_the_prefixed_name(world, cli, calls, monkeypatch):
    r = cli("link", "create", "pre", "--source", "s9:1", "--destination", DST, "--no-validate",
            "--config", "mirror.topic.prefix=west.")
    assert r.exit_code == 0, r.stderr
    monkeypatch.setattr(mirrors, "create_mirrors", lambda link, names, source_topic=None, *a, **k: (
        calls.append(("create", names)) or []))
    r = cli("--create", "--mirror-topic", "orders", "--link", "pre", "--bootstrap-server", DST)
    assert r.exit_code == 2
    assert "--mirror-topic 'orders' must start with link 'pre's mirror.topic.prefix 'west.'" in _one_error_line(r)
    r = cli("--create", "--mirror-topic", "west.orders", "--link", "pre", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert ("create", ["orders"]) in calls


def test_list_prints_mirror_topic_names(world, cli):
    r = cli("--list", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "orders\npayments\n"
    r = cli("--list", "--link", "other", "--bootstrap-server", "odst:2")
    assert r.stdout == "audit\n"


def _view(topic, state, lag=0):
    return {"link": "dr", "topic": topic, "source_topic": topic, "source_topic_id": "id-1", "state": state,
            "status": state, "reason": None, "updated_at": 0.0,
            "partitions": [{"partition": 0, "destination_log_end_offset": 10, "source_high_watermark": 10 + lag,
                            "lag": lag, "progress_updated_at": None}]}


def test_describe_per_partition_and_pending_stopped_only(world, cli, monkeypatch):
    monkeypatch.setattr(mirrors, "describe_view", lambda registry, link_name=None, topic=None, now=None: {
        "links": [{"link": link_name, "source_available": True, "source_error": None,
                   "mirrors": [_view("orders", "ACTIVE", 3), _view("payments", "STOPPED")]}]})
    r = cli("--describe", "--topics", "orders", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ("Topic: orders\tLinkName: dr\tSourceTopic: orders\tState: ACTIVE\tSourceTopicId: id-1\t"
                        "StateTime: 1970-01-01 00:00:00\n"
                        "\tPartition: 0\tState: ACTIVE\tLocalLogEndOffset: 10\tLastFetchSourceHighWatermark: 13\t"
                        "Lag: 3\tTimeSinceLastFetchMs: -\n")
    r = cli("--describe", "--links", "dr", "--bootstrap-server", DST)
    assert [ln.split("\t")[0] for ln in r.stdout.splitlines() if ln.startswith("Topic: ")] == \
        ["Topic: orders", "Topic: payments"]
    r = cli("--describe", "--topics", "orders,payments", "--pending-stopped-only", "--bootstrap-server", DST)
    assert r.exit_code == 0 and r.stdout == "No mirror topics found.\n"


# ---------------------------------------------------------------- fail back

def test_reverse_and_start_promotes_a_live_mirror_first(world, cli, calls, monkeypatch):
    failback = pytest.importorskip("kafka_mirrors.failback")
    world["mirrors"]["dr"]["payments"] = "STOPPED"

    def reverse(registry, link_name, names, all_=False, reverse_name=None, start=True):
        calls.append(("reverse", link_name, names, all_, reverse_name, start))
        return {"reverse_link": {"name": "dr-reverse", "created": True, "source": DST, "destination": SRC},
                "next": ["kafka-mirrors run --link dr-reverse"],
                "topics": [{"topic": t, "ok": True, "error": None, "mirror_topic": t, "source_topic": t,
                            "reverse_link": "dr-reverse", "state": "ACTIVE", "action": "adopted",
                            "partitions": {"0": {"stop_offset": 5, "old_log_end_offset": 5,
                                                 "new_primary_log_end_offset": 9}}} for t in names]}
    monkeypatch.setattr(failback, "reverse", reverse)
    r = cli("--reverse-and-start", "--topics", "orders,payments", "--bootstrap-server", DST)
    assert r.exit_code == 0, r.stderr
    assert ("promote", "dr", ["orders"], False, {"timeout": 60.0}) in calls
    assert ("reverse", "dr", ["orders", "payments"], False, None, True) in calls
    assert calls.index(("promote", "dr", ["orders"], False, {"timeout": 60.0})) < \
        calls.index(("reverse", "dr", ["orders", "payments"], False, None, True))
    assert (f"Reversed topic payments's mirror on link dr: payments on {SRC} is now a mirror on link "
            f"dr-reverse: ACTIVE (adopted)") in r.stdout
    assert "\tPartition: 0\tStopOffset: 5\tOldLogEndOffset: 5\tNewPrimaryLogEndOffset: 9" in r.stdout
    assert "next: kafka-mirrors run --link dr-reverse" in r.stderr


def test_reverse_skips_a_mirror_whose_promote_failed(world, cli, calls, monkeypatch):
    failback = pytest.importorskip("kafka_mirrors.failback")
    monkeypatch.setattr(dr, "promote", lambda link, names, all_=False, timeout=60.0: [
        {"topic": "orders", "ok": False, "state": "ACTIVE", "error": "mirror 'orders' not promoted: still 4 behind"}])
    monkeypatch.setattr(failback, "reverse", lambda *a, **k: calls.append("reverse"))
    r = cli("--reverse-and-pause", "--topics", "orders", "--bootstrap-server", DST)
    assert r.exit_code == 1
    assert "mirror 'orders' not promoted" in _one_error_line(r)
    assert "reverse" not in calls


def test_truncate_and_restore_runs_against_the_old_source(world, cli, calls, monkeypatch):
    failback = pytest.importorskip("kafka_mirrors.failback")
    world["mirrors"]["dr"]["orders"] = "STOPPED"

    def restore(registry, link_name, names, all_=False, reverse_name=None):
        calls.append(("restore", link_name, names, all_, reverse_name))
        return {"reverse_link": {"name": "dr-back", "created": False}, "next": [],
                "topics": [{"topic": "orders", "ok": True, "error": None, "mirror_topic": "orders",
                            "source_topic": "orders", "reverse_link": "dr-back", "state": "ACTIVE",
                            "action": "re-created", "side_topic": "orders.diverged-x", "records_saved": 4,
                            "partitions": {"0": {"stop_offset": 5, "old_log_end_offset": 9,
                                                 "new_primary_log_end_offset": 12, "records_saved": 4}}}]}
    monkeypatch.setattr(failback, "truncate_and_restore", restore)
    r = cli("--truncate-and-restore", "--topics", "orders", "--link", "dr", "--reverse-link", "dr-back",
            "--bootstrap-server", SRC)
    assert r.exit_code == 0, r.stderr
    assert ("restore", "dr", ["orders"], False, "dr-back") in calls
    assert "4 record(s) past the stop offset saved to topic orders.diverged-x" in r.stdout
    assert "RecordsSaved: 4" in r.stdout
    r = cli("--truncate-and-restore", "--topics", "orders", "--link", "dr", "--bootstrap-server", "elsewhere:1")
    assert r.exit_code == 2
    assert f"is neither the destination of link 'dr' ({DST}) nor its source ({SRC})" in _one_error_line(r)


# ---------------------------------------------------------------- the installed entry point

def test_entry_point_routes_flags_in_a_subprocess(tmp_path):
    env = {"KAFKA_MIRRORS_REGISTRY": str(tmp_path / "links.toml"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "kafka_mirrors", "--failover", "--topics", "orders"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2
    assert p.stderr == ("error: --failover needs --bootstrap-server (the destination cluster); "
                        "e.g. --bootstrap-server dst:9092\n")
    p = subprocess.run([sys.executable, "-m", "kafka_mirrors", "--list", "--bootstrap-server", "d:1"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "no link has destination d:1" in p.stderr
    p = subprocess.run([sys.executable, "-m", "kafka_mirrors", "--version"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("kafka-mirrors ")
