"""Network faults between the worker and the source cluster (issue 11), through Toxiproxy
2.5.0 (built by scripts/toxiproxy, run on 127.0.0.1 by the fixture below).

The source broker of this module is its own: besides its PLAINTEXT listener (used by the
test's producers and readers, never broken) it serves a listener that advertises the
proxy's address (scripts/kafka-local up --proxy-port), so the link's every connection to
the source, after bootstrap too, goes through the proxy. Cases, each with records flowing
and a record-by-record comparison at the end (tests/faults.py):

- a slow link: the latency toxic both ways, the copy goes on;
- connections reset: the reset_peer toxic, again and again;

The network partition cases (the timeout toxic) are in test_faults_partition.py.
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
import uuid

import pytest

from kafka_mirrors import state as st
from tests import faults as fx
from tests import mirrortools as mt
from tests.faults import PLAIN, TXN
from tests.integration.test_faults import _statuses, finish, sync_offsets, wait_settled
from tests.mirroring import Mirroring

pytestmark = pytest.mark.integration

PROXY = "source"


@dataclasses.dataclass
class ProxiedSource:
    cluster: object        # direct: the test's producers and readers
    proxied: object        # the same cluster through Toxiproxy: the link's source
    tox: fx.Toxiproxy


@pytest.fixture(scope="module")
def proxied_source(local_kafka, tmp_path_factory):
    tox = fx.Toxiproxy(tmp_path_factory.mktemp("toxiproxy") / "toxiproxy.log")
    name = f"fault-net-{uuid.uuid4().hex[:6]}"
    try:
        listen = fx.free_port()
        cluster = fx.up_cluster(local_kafka, name, proxy_port=listen)
        meta = json.loads((local_kafka.state_dir / name / "cluster.json").read_text())
        assert meta["proxied"]["advertised"] == f"127.0.0.1:{listen}", meta
        tox.proxy(PROXY, listen, meta["proxied"]["port"])
        proxied = dataclasses.replace(cluster, bootstrap=f"127.0.0.1:{listen}")
        # the proxied listener answers, and names the proxy as the broker's address
        md = proxied.admin().list_topics(timeout=15)
        assert [b.port for b in md.brokers.values()] == [listen], md.brokers
        yield ProxiedSource(cluster, proxied, tox)
    finally:
        tox.stop()
        local_kafka.down(name)
        shutil.rmtree(local_kafka.state_dir / name, ignore_errors=True)


@pytest.fixture
def net(proxied_source, cli, registry_path, destination, tmp_path):
    """A link whose source is the proxied address; test-side reads go direct. Toxics are
    removed and workers stopped at teardown."""
    ps = proxied_source
    m = Mirroring(cli, registry_path, ps.proxied, destination, tmp_path)
    m.source = ps.cluster
    try:
        yield m, ps.tox
    finally:
        try:
            ps.tox.clear(PROXY)
        finally:
            m.stop_all()


def _topics(src) -> dict[str, tuple[str, int]]:
    return {fx.make_topic(src, PLAIN, 2): (PLAIN, 2), fx.make_topic(src, TXN, 2): (TXN, 2)}


def _both_ways(tox: fx.Toxiproxy, name: str, type_: str, **attrs) -> None:
    tox.add_toxic(PROXY, f"{name}-down", type_, "downstream", **attrs)
    tox.add_toxic(PROXY, f"{name}-up", type_, "upstream", **attrs)


def _unpoison(tox: fx.Toxiproxy, name: str) -> None:
    tox.remove_toxic(PROXY, f"{name}-down")
    tox.remove_toxic(PROXY, f"{name}-up")


# ------------------------------------------------------------------ slow link

@pytest.mark.parametrize("copied", [pytest.param(300, id="ci"), pytest.param(5000, id="heavy", marks=pytest.mark.heavy)])
def test_slow_link(net, cli, local_kafka, copied):
    m, tox = net
    group = sync_offsets(cli, m)
    topics = _topics(m.source)
    for t in topics:
        m.mirror(t)
    w = m.start_worker()
    flow = fx.Flow(m.source, topics, seed=51).start()
    reader = fx.GroupReader(m.source, group, {t: n for t, (_k, n) in topics.items()}).start()
    try:
        fx.wait_copying(m, w, topics)
        _both_ways(tox, "slow", "latency", latency=300, jitter=100)
        base = fx.destination_total(m.destination, topics)
        # the copy goes on over the slow link (the worker's 2 s source timeout holds)
        mt.wait_until(lambda: fx.destination_total(m.destination, topics) > base + copied, 240,
                      f"{copied} records copied over the slow link")
        assert [t["type"] for t in tox.toxics(PROXY)] == ["latency", "latency"]
        _unpoison(tox, "slow")
        time.sleep(1.0)
    finally:
        flow.stop()
        reader.stop()
    finish(m, topics, flow, local_kafka.state_dir, "latency", 1, group, copied_while_slow=copied)
    assert w.poll() is None


# ------------------------------------------------------------------ connections reset

@pytest.mark.parametrize("resets", [pytest.param(3, id="ci"), pytest.param(30, id="heavy", marks=pytest.mark.heavy)])
def test_connections_reset(net, cli, local_kafka, resets):
    m, tox = net
    group = sync_offsets(cli, m)
    topics = _topics(m.source)
    for t in topics:
        m.mirror(t)
    w = m.start_worker()
    rnd = random.Random(61)
    flow = fx.Flow(m.source, topics, seed=61).start()
    reader = fx.GroupReader(m.source, group, {t: n for t, (_k, n) in topics.items()}).start()
    try:
        for _ in range(resets):
            fx.wait_copying(m, w, topics, timeout=120)
            # every connection through the proxy is reset (TCP RST) after 0-500 ms of data
            _both_ways(tox, "reset", "reset_peer", timeout=rnd.randint(0, 500))
            time.sleep(rnd.uniform(1.0, 3.0))
            _unpoison(tox, "reset")
        fx.wait_copying(m, w, topics, timeout=120)
        time.sleep(1.0)
    finally:
        flow.stop()
        reader.stop()
    finish(m, topics, flow, local_kafka.state_dir, "reset-peer", resets, group)
    assert w.poll() is None
