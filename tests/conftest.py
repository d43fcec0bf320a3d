"""Shared fixtures.

Clusters: `source`, `destination` and (on demand) `sasl_cluster` are real single-node
Apache Kafka (KRaft) brokers started by scripts/kafka-local for the whole session and
stopped at its end, even when tests fail. To run against clusters that are already up:

    KAFKA_MIRRORS_TEST_SOURCE=127.0.0.1:9092 KAFKA_MIRRORS_TEST_DESTINATION=127.0.0.1:9093 \
    KAFKA_MIRRORS_TEST_SASL=127.0.0.1:9094 KAFKA_MIRRORS_TEST_SASL_CONFIG_DIR=/path/with/properties pytest

(the SASL directory holds admin.properties, alice.properties and linker.properties).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.kafkatest import Cluster, LocalKafka

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def local_kafka():
    # KAFKA_MIRRORS_TEST_STATE lets two test runs on one machine keep apart
    state = os.environ.get("KAFKA_MIRRORS_TEST_STATE", str(ROOT / ".cache" / "test-clusters"))
    lk = LocalKafka(ROOT / "scripts" / "kafka-local", Path(state))
    yield lk
    lk.down_all()


def _cluster(local_kafka: LocalKafka, name: str, env: str, sasl: bool = False) -> Cluster:
    external = os.environ.get(env)
    if external:
        cfg_dir = os.environ.get("KAFKA_MIRRORS_TEST_SASL_CONFIG_DIR") if sasl else None
        return Cluster.external(name, external, Path(cfg_dir) if cfg_dir else None)
    return local_kafka.up(name, sasl=sasl)


@pytest.fixture(scope="session")
def source(local_kafka) -> Cluster:
    return _cluster(local_kafka, "source", "KAFKA_MIRRORS_TEST_SOURCE")


@pytest.fixture(scope="session")
def destination(local_kafka) -> Cluster:
    return _cluster(local_kafka, "destination", "KAFKA_MIRRORS_TEST_DESTINATION")


@pytest.fixture(scope="session")
def sasl_cluster(local_kafka) -> Cluster:
    return _cluster(local_kafka, "sasl", "KAFKA_MIRRORS_TEST_SASL", sasl=True)


@pytest.fixture
def registry_path(tmp_path) -> Path:
    return tmp_path / "links.toml"


@pytest.fixture
def cli(registry_path, monkeypatch):
    """Run the CLI in-process: exceptions not swallowed, no colour, fixed width,
    the registry in tmp_path. Returns the typer Result (exit_code, stdout, stderr)."""
    from kafka_mirrors.cli import app

    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("KAFKA_MIRRORS_REGISTRY", str(registry_path))
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict | None = None):
        return runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def mirroring(cli, registry_path, source, destination, tmp_path):
    """A link between `source` and `destination` with helpers for mirrors and workers;
    every worker it started is stopped at teardown."""
    from tests.mirroring import Mirroring

    m = Mirroring(cli, registry_path, source, destination, tmp_path)
    yield m
    m.stop_all()
