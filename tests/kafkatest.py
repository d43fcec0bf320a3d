"""Test-side helpers for real clusters: start/stop through scripts/kafka-local, and small
produce / consume / admin shortcuts used by the integration tests."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def properties_to_librdkafka(path: Path) -> dict:
    """Tiny reader for the SASL/PLAIN properties files kafka-local writes (test use only)."""
    props = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            props[k.strip()] = v.strip()
    conf = {"security.protocol": props["security.protocol"], "sasl.mechanism": props["sasl.mechanism"]}
    jaas = props["sasl.jaas.config"]
    conf["sasl.username"] = jaas.split('username="', 1)[1].split('"', 1)[0]
    conf["sasl.password"] = jaas.split('password="', 1)[1].split('"', 1)[0]
    return conf


@dataclass
class Cluster:
    name: str
    bootstrap: str
    cluster_id: str | None = None
    managed: bool = False
    client_config: dict[str, Path] = field(default_factory=dict)  # user -> properties file
    local: "LocalKafka | None" = None

    @classmethod
    def external(cls, name: str, bootstrap: str, cfg_dir: Path | None) -> "Cluster":
        files = {}
        if cfg_dir:
            files = {p.stem: p for p in cfg_dir.glob("*.properties")}
        c = cls(name, bootstrap, client_config=files)
        admin = c.admin()
        c.cluster_id = admin.describe_cluster().result(15).cluster_id
        return c

    @property
    def sasl(self) -> bool:
        return bool(self.client_config)

    def conf(self, user: str | None = "admin", **extra) -> dict:
        conf = {"bootstrap.servers": self.bootstrap}
        if self.sasl and user:
            conf.update(properties_to_librdkafka(self.client_config[user]))
        conf.update(extra)
        return conf

    def admin(self, user: str | None = "admin", **extra) -> AdminClient:
        return AdminClient(self.conf(user, **extra))

    def producer(self, user: str | None = "admin", **extra) -> Producer:
        return Producer(self.conf(user, **extra))

    def consumer(self, user: str | None = "admin", **extra) -> Consumer:
        base = {"group.id": f"test-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "isolation.level": "read_committed"}
        base.update(extra)
        return Consumer(self.conf(user, **base))

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None) -> str:
        admin = self.admin()  # keep the handle alive until the future resolves
        fs = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})], operation_timeout=15)
        fs[name].result(20)
        return name

    def produce(self, topic: str, values, partition: int | None = None, key: bytes | None = None) -> None:
        p = self.producer(**{"enable.idempotence": True, "linger.ms": 5})
        for v in values:
            kw = {"partition": partition} if partition is not None else {}
            p.produce(topic, value=v, key=key, **kw)
            p.poll(0)
        left = p.flush(30)
        assert left == 0, f"{left} records not delivered to {topic}"

    def read_all(self, topic: str, partition: int = 0, isolation: str = "read_committed",
                 timeout: float = 30.0) -> list:
        """Every record of one partition from its log start offset up to its high
        watermark (read_uncommitted) or last stable offset (read_committed)."""
        c = self.consumer(**{"isolation.level": isolation})
        try:
            tp = TopicPartition(topic, partition)
            low, high = c.get_watermark_offsets(tp, timeout=10)
            out = []
            if high <= low:
                return out
            c.assign([TopicPartition(topic, partition, low)])
            import time
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                m = c.poll(1.0)
                if m is None:
                    if c.position([tp])[0].offset >= high:
                        break
                    continue
                if m.error():
                    if m.error().code() == -191:  # _PARTITION_EOF
                        break
                    raise KafkaException(m.error())
                out.append(m)
                if m.offset() >= high - 1:
                    break
            return out
        finally:
            c.close()


class LocalKafka:
    """Drives scripts/kafka-local with its own state folder, so a test session never
    touches clusters a developer started by hand."""

    def __init__(self, script: Path, state_dir: Path):
        self.script = script
        self.state_dir = state_dir
        self.started: list[str] = []

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, KAFKA_LOCAL_STATE=str(self.state_dir))
        return subprocess.run([str(self.script), *args], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=check, timeout=300)

    def up(self, name: str, sasl: bool = False, clean: bool = True) -> Cluster:
        args = ["up", name, "--json"] + (["--sasl"] if sasl else []) + (["--clean"] if clean else [])
        proc = self._run(*args, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka-local up {name} failed: {proc.stderr}")
        meta = json.loads(proc.stdout)
        self.started.append(name)
        files = {u: Path(p) for u, p in meta.get("client_config", {}).items()}
        return Cluster(name, meta["bootstrap"], meta["cluster_id"], managed=True, client_config=files, local=self)

    def restart(self, cluster: Cluster) -> None:
        self._run("up", cluster.name, *(["--sasl"] if cluster.sasl else []))

    def kill(self, cluster: Cluster) -> None:
        meta = json.loads((self.state_dir / cluster.name / "cluster.json").read_text())
        import signal
        os.kill(meta["pid"], signal.SIGKILL)

    def down(self, name: str) -> None:
        self._run("down", name, check=False)

    def down_all(self) -> None:
        self._run("down", "--all", check=False)
