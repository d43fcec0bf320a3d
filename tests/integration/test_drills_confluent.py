"""Must-show 3 of issue 5: the two DR drills of tests/drills.py driven only with the
Confluent-style flags, as a runbook written for Confluent's kafka-mirrors issues them:
mirrors made with `--create`, `--promote`/`--failover` by topic with the destination as
--bootstrap-server (the link found from it), `--reverse-and-start` on the new primary,
`--truncate-and-restore` against the old source. Nothing prompts and nothing needs --yes.
Links and workers are kafka-mirrors' own (`link create`, `run`), as Confluent's are
`kafka-cluster-links` and the broker."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import TopicPartition

from kafka_mirrors import state as st
from tests import drills
from tests import mirrortools as mt
from tests.mirroring import Mirroring

pytestmark = pytest.mark.integration


class ConfluentOps(drills.Ops):
    """The drills' DR commands as Confluent-style flags (no --yes, no --output)."""

    def promote(self, topic: str):
        return self.cli("--promote", "--topics", topic, "--bootstrap-server", self.destination.bootstrap,
                        "--timeout", "120")

    def failover(self, topic: str):
        return self.cli("--failover", "--topics", topic, "--link", self.link,
                        "--bootstrap-server", self.destination.bootstrap)

    def reverse_and_start(self, topic: str):
        return self.cli("--reverse-and-start", "--topics", topic, "--link", self.link,
                        "--bootstrap-server", self.destination.bootstrap)

    def reverse_and_pause(self, topic: str):
        return self.cli("--reverse-and-pause", "--topics", topic, "--link", self.link,
                        "--bootstrap-server", self.destination.bootstrap)

    def truncate_and_restore(self, topic: str):
        # Confluent runs it against the cluster whose topic is truncated: the old source
        return self.cli("--truncate-and-restore", "--topics", topic, "--link", self.link,
                        "--bootstrap-server", self.source.bootstrap)

    def printed_rpo(self, result, topic: str) -> dict[int, int | None]:
        """The RecordsPossiblyLost column of the partition lines under the topic's line."""
        out, mine = {}, False
        for line in result.stdout.splitlines():
            if not line.startswith("\t"):
                mine = line.startswith(f"Stopped topic {topic}'s mirror ")
                continue
            m = re.match(r"\tPartition: (\d+)\t.*\tRecordsPossiblyLost: (\S+)$", line)
            if mine and m:
                out[int(m.group(1))] = None if m.group(2) == "-" else int(m.group(2))
        assert out, result.stdout
        return out


class ConfluentMirroring(Mirroring):
    """Mirrors made with `kafka-mirrors --create --mirror-topic T --link L --bootstrap-server DEST`."""

    def mirror(self, topic: str) -> str:
        r = self.cli("--create", "--mirror-topic", topic, "--link", self.name,
                     "--bootstrap-server", self.destination.bootstrap)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == f"Created topic {topic}.\n"
        return topic


@pytest.fixture
def cmirroring(cli, registry_path, source, destination, tmp_path):
    m = ConfluentMirroring(cli, registry_path, source, destination, tmp_path)
    yield m
    m.stop_all()


def test_drill_1_planned_migration_with_confluent_flags(cli, cmirroring, source, destination):
    ops = ConfluentOps(cli, cmirroring.name, source, destination)
    result = drills.drill_planned_migration(ops, cmirroring)
    topic, dst = result.topic, destination.bootstrap
    # what a Confluent runbook checks after the cut-over
    r = cli("--list", "--link", cmirroring.name, "--bootstrap-server", dst)
    assert r.exit_code == 0 and topic in r.stdout.splitlines()
    r = cli("--describe", "--topics", topic, "--bootstrap-server", dst)
    assert r.exit_code == 0, r.stderr
    assert f"Topic: {topic}\tLinkName: {cmirroring.name}\tSourceTopic: {topic}\tState: STOPPED" in r.stdout
    assert r.stdout.count("\tPartition: ") == 2
    r = cli("--describe", "--topics", topic, "--pending-stopped-only", "--bootstrap-server", dst)
    assert (r.exit_code, r.stdout) == (0, "No mirror topics found.\n")
    # the old source now mirrors the new primary over the reverse link
    r = cli("--describe", "--links", f"{cmirroring.name}-reverse", "--bootstrap-server", source.bootstrap)
    assert r.exit_code == 0, r.stderr
    assert f"Topic: {topic}\tLinkName: {cmirroring.name}-reverse\tSourceTopic: {topic}\tState: ACTIVE" in r.stdout
    assert "\tLag: 0\t" in r.stdout


def test_drill_2_disaster_with_confluent_flags(cli, registry_path, local_kafka, destination, tmp_path):
    src = local_kafka.up(f"cdrill-src-{uuid.uuid4().hex[:8]}")
    m = None
    try:
        m = ConfluentMirroring(cli, registry_path, src, destination, tmp_path)
        ops = ConfluentOps(cli, m.name, src, destination)
        result = drills.drill_disaster(ops, m, local_kafka, src)
        print(result)
        rec = drills.mirror_record(src, f"{m.name}-reverse", result.topic)
        assert (rec.state, rec.reason) == (st.ACTIVE, "truncate-and-restore")
    finally:
        if m is not None:
            m.stop_all()
        local_kafka.down(src.name)


def test_wrong_bootstrap_server_changes_nothing(cli, cmirroring, source, destination):
    topic = cmirroring.new_mirror(partitions=1)
    r = cli("--failover", "--topics", topic, "--link", cmirroring.name, "--bootstrap-server", source.bootstrap)
    assert r.exit_code == 2
    assert (f"--bootstrap-server {source.bootstrap} is not the destination of link '{cmirroring.name}' "
            f"({destination.bootstrap}), it is the link's source") in r.stderr
    assert cmirroring.state(topic).state == st.ACTIVE


def test_another_address_of_the_destination_is_matched_by_cluster_id(cli, cmirroring, destination):
    topic = cmirroring.new_mirror(partitions=1)
    host, port = destination.bootstrap.split(",")[0].rsplit(":", 1)
    other = f"localhost:{port}" if host != "localhost" else f"127.0.0.1:{port}"
    r = cli("--pause", "--topics", topic, "--bootstrap-server", other)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"Paused topic {topic}'s mirror on link {cmirroring.name}: PAUSED\n"
    assert cmirroring.state(topic).state == st.PAUSED
    r = cli("--unpause", "--link", cmirroring.name, "--bootstrap-server", other)
    assert r.exit_code == 0, r.stderr
    assert cmirroring.state(topic).state == st.ACTIVE


def test_reverse_and_start_on_a_live_mirror_promotes_then_reverses(cli, cmirroring, source, destination):
    """As in Confluent's tool: --reverse-and-start on a mirror that is still a mirror makes
    it the primary and the old source its mirror, in one command (here with --link alone,
    for every mirror of the link)."""
    topic = cmirroring.new_mirror(partitions=2, records=60)
    cmirroring.start_worker()
    cmirroring.wait_caught_up(topic)
    cmirroring.wait_worker_serving(topic)
    r = cli("--reverse-and-start", "--link", cmirroring.name, "--bootstrap-server", destination.bootstrap)
    assert r.exit_code == 0, r.stderr
    assert f"Stopped topic {topic}'s mirror on link {cmirroring.name}: STOPPED (promoted)" in r.stdout
    assert (f"Reversed topic {topic}'s mirror on link {cmirroring.name}: {topic} on {source.bootstrap} is now a "
            f"mirror on link {cmirroring.name}-reverse: ACTIVE (adopted)") in r.stdout
    assert f"next: kafka-mirrors run --link {cmirroring.name}-reverse" in r.stderr
    assert cmirroring.state(topic).state == st.STOPPED
    assert drills.mirror_record(source, f"{cmirroring.name}-reverse", topic).state == st.ACTIVE
    # a second run finds nothing left to reverse on that link
    r = cli("--reverse-and-start", "--link", cmirroring.name, "--bootstrap-server", destination.bootstrap)
    assert r.exit_code == 0 and r.stdout == ""
    assert "no mirror in a state --reverse-and-start applies to" in r.stderr


def test_command_config_is_used_for_the_cluster_check_on_sasl(cli, source, sasl_cluster, tmp_path):
    admin = sasl_cluster.client_config["admin"]
    r = cli("link", "create", "to-sasl", "--source", source.bootstrap, "--destination", sasl_cluster.bootstrap,
            "--destination-config", str(admin))
    assert r.exit_code == 0, r.stderr
    host, port = sasl_cluster.bootstrap.split(",")[0].rsplit(":", 1)
    other = f"localhost:{port}" if host != "localhost" else f"127.0.0.1:{port}"
    # another address of the destination: its cluster ID is read with the --command-config settings
    r = cli("--list", "--link", "to-sasl", "--bootstrap-server", other, "--command-config", str(admin))
    assert (r.exit_code, r.stdout) == (0, ""), r.stderr
    # wrong credentials: the cluster cannot be compared, so the address is refused
    bad = tmp_path / "bad.properties"
    bad.write_text(admin.read_text().replace("admin-secret", "not-the-password"))
    r = cli("--list", "--link", "to-sasl", "--bootstrap-server", other, "--command-config", str(bad))
    assert r.exit_code == 2
    assert f"--bootstrap-server {other} is not the destination of link 'to-sasl' ({sasl_cluster.bootstrap})" \
        in r.stderr
    assert "comparing cluster IDs failed" in r.stderr and "not-the-password" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- Confluent's DR runbook

def kafka_cluster_links(registry_path, *args: str) -> subprocess.CompletedProcess:
    """The kafka-cluster-links console script, as a runbook runs it (its own process)."""
    return subprocess.run([sys.executable, "-m", "kafka_mirrors.cli.clusterlinks", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "KAFKA_MIRRORS_REGISTRY": str(registry_path)})


def _group_offset(cluster, group: str, topic: str, partition: int) -> int:
    c = cluster.consumer(**{"group.id": group})
    try:
        return c.committed([TopicPartition(topic, partition)], timeout=15)[0].offset
    finally:
        c.close()


def test_confluent_dr_runbook_start_to_finish(cli, registry_path, local_kafka, destination, tmp_path):
    """Confluent's Cluster Linking disaster-recovery runbook (docs/runbook.md section 6),
    command for command with Confluent's flags only: a link made from a link config file
    with consumer offset sync, mirrors made and described, a planned promote and a
    failover after the primary is lost, each tried with --dry-run first (which changes
    nothing), JSON read back, the link listed and deleted. The worker runs as the
    Confluent broker's link would (kafka-mirrors run)."""
    src = local_kafka.up(f"crunbook-src-{uuid.uuid4().hex[:8]}")
    link, dst = f"dr-{uuid.uuid4().hex[:6]}", destination.bootstrap
    m = Mirroring.__new__(Mirroring)
    m.__dict__.update(cli=cli, registry_path=registry_path, source=src, destination=destination,
                      tmp_path=tmp_path, name=link, procs=[])
    try:
        planned, disaster = (src.create_topic(f"{n}-{uuid.uuid4().hex[:6]}", partitions=2) for n in ("orders", "pay"))
        for t in (planned, disaster):
            src.produce(t, [f"{t}-{i}".encode() for i in range(40)])
        group = f"app-{uuid.uuid4().hex[:6]}"
        c = src.consumer(**{"group.id": group})
        c.commit(offsets=[TopicPartition(planned, 0, 7)], asynchronous=False)
        c.close()

        # 1. the link, from a Confluent link config file
        cfg = tmp_path / "dr-link.properties"
        cfg.write_text(f"bootstrap.servers={src.bootstrap}\nconsumer.offset.sync.enable=true\n"
                       'consumer.offset.group.filters={"groupFilters": [{"name": "*", "patternType": "LITERAL", '
                       '"filterType": "INCLUDE"}]}\n')
        r = kafka_cluster_links(registry_path, "--bootstrap-server", dst, "--create", "--link", link,
                                "--config-file", str(cfg), "--config", "consumer.offset.sync.ms=1000")
        assert (r.returncode, r.stdout) == (0, f"Cluster link '{link}' creation successfully completed.\n"), r.stderr
        r = kafka_cluster_links(registry_path, "--bootstrap-server", dst, "--link", link, "--list")
        assert r.returncode == 0, r.stderr
        assert r.stdout == (f"Link name: '{link}', link ID: '{link}', remote cluster ID: '{src.cluster_id}', "
                            f"local cluster ID: '{destination.cluster_id}', remote cluster available: 'true', "
                            f"link state: 'ACTIVE'\n")

        # 2. the mirrors: dry run first, then for real
        r = cli("--create", "--source-topic", planned, "--mirror-topic", planned, "--link", link,
                "--bootstrap-server", dst, "--dry-run")
        assert r.exit_code == 0, r.stderr
        assert "dry run, nothing changed" in r.stdout
        r = cli("--list", "--link", link, "--bootstrap-server", dst)
        assert (r.exit_code, r.stdout) == (0, ""), r.stderr
        for t in (planned, disaster):
            r = cli("--create", "--source-topic", t, "--mirror-topic", t, "--link", link, "--bootstrap-server", dst)
            assert (r.exit_code, r.stdout) == (0, f"Created topic {t}.\n"), r.stderr
        m.start_worker()
        for t in (planned, disaster):
            m.wait_caught_up(t)
            m.wait_worker_serving(t)
        r = cli("--describe", "--topics", f"{planned},{disaster}", "--bootstrap-server", dst, "--output", "json")
        assert r.exit_code == 0, r.stderr
        described = json.loads(r.stdout)
        assert [(d["mirror_topic_name"], d["mirror_status"]) for d in described] == \
            sorted([(planned, "ACTIVE"), (disaster, "ACTIVE")])
        assert all(lag["lag"] == 0 for d in described for lag in d["mirror_lags"])

        # 3. planned: promote (dry run changes nothing; then the mirror stops at lag 0)
        r = cli("--promote", "--topics", planned, "--bootstrap-server", dst, "--dry-run")
        assert r.exit_code == 0, r.stderr
        assert f"Topic {planned}'s mirror on link {link} would be promoted: ACTIVE -> STOPPED" in r.stdout
        assert m.state(planned).state == st.ACTIVE
        r = cli("--promote", "--topics", planned, "--bootstrap-server", dst, "--timeout", "120")
        assert r.exit_code == 0, r.stderr
        assert f"Stopped topic {planned}'s mirror on link {link}: STOPPED (promoted)" in r.stdout
        assert _group_offset(destination, group, planned, 0) == 7  # synced by the link's offset sync

        # 4. disaster: the primary is lost; failover (dry run first) from the destination alone
        local_kafka.kill(src)
        r = cli("--failover", "--topics", disaster, "--bootstrap-server", dst, "--dry-run", "--output", "json")
        assert r.exit_code == 0, r.stderr
        [row] = json.loads(r.stdout)
        assert (row["mirror_topic_name"], row["dry_run"], row["state"]) == (disaster, True, st.ACTIVE)
        assert m.state(disaster).state == st.ACTIVE
        r = cli("--failover", "--topics", disaster, "--bootstrap-server", dst)
        assert r.exit_code == 0, r.stderr
        assert f"Stopped topic {disaster}'s mirror on link {link}: STOPPED (failed over)" in r.stdout
        r = cli("--describe", "--topics", disaster, "--bootstrap-server", dst)
        assert r.exit_code == 0, r.stderr
        assert f"Topic: {disaster}\tLinkName: {link}\tSourceTopic: {disaster}\tState: STOPPED" in r.stdout
        before = mt.log_end_offsets(destination, disaster)[0]
        destination.produce(disaster, [b"written-on-the-dr-cluster"], partition=0)  # writable now
        assert mt.log_end_offsets(destination, disaster)[0] == before + 1

        # 5. the link: the old primary is gone; delete it once its mirrors are stopped
        r = kafka_cluster_links(registry_path, "--bootstrap-server", dst, "--list")
        assert r.returncode == 0, r.stderr
        assert "remote cluster available: 'false', link state: 'SOURCE_UNAVAILABLE'" in r.stdout
        r = kafka_cluster_links(registry_path, "--bootstrap-server", dst, "--delete", "--link", link)
        assert (r.returncode, r.stdout) == (0, f"Cluster link '{link}' deletion successfully completed.\n"), r.stderr
        r = kafka_cluster_links(registry_path, "--bootstrap-server", dst, "--list")
        assert (r.returncode, r.stdout) == (0, ""), r.stderr
    finally:
        m.stop_all()
        local_kafka.down(src.name)
