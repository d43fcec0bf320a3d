"""Several workers of one link share its partitions through Kafka's group protocol (issue 10,
must-show 1): two workers share a link of 12 partitions, a third joins, one is SIGKILLed
and one SIGSTOPped for 30 s and resumed, all while records flow. At the end the copy is
identical record by record, no mirror is FAILED, and describe shows every partition
owned by a live worker."""
from __future__ import annotations

import json
import signal
import time

import pytest

from kafka_mirrors import state as st
from tests import faults as fx
from tests import mirrortools as mt
from tests.faults import PLAIN, TXN
from tests.integration.test_faults import finish

pytestmark = pytest.mark.integration


def heartbeats(m) -> dict[int, dict]:
    """{pid: heartbeat} of the link's workers."""
    store = st.StateStore(m.destination.conf(), m.name)
    try:
        return {w.get("pid"): w for w in store.snapshot().workers.values()}
    finally:
        store.close()


def owners(cli, m) -> dict[tuple[str, int], dict]:
    r = cli("describe", "--link", m.name, "--output", "json")
    assert r.exit_code == 0, r.stderr
    view = json.loads(r.stdout)
    return {(mv["topic"], p["partition"]): p for lv in view["links"] for mv in lv["mirrors"]
            for p in mv["partitions"]}


def wait_sharing(m, procs, what: str, timeout: float = 180.0) -> dict[int, list[int]]:
    """Until every slot is owned by exactly one of `procs` (all running) and each owns some."""
    def shared():
        for p in procs:
            assert p.poll() is None, f"worker {p.pid} exited ({p.returncode}):\n{m.worker_log()[-4000:]}"
        now = time.time()
        beats = heartbeats(m)
        slots = {p.pid: (beats.get(p.pid) or {}).get("slots") or [] for p in procs}
        fresh = all(now - float((beats.get(p.pid) or {}).get("heartbeat_at") or 0) < 10 for p in procs)
        owned = sorted(k for ks in slots.values() for k in ks)
        if fresh and owned == list(range(st.SLOTS)) and all(slots.values()):
            return slots
        return None
    try:
        return mt.wait_until(shared, timeout, what, interval=0.5)
    except AssertionError:
        beats = heartbeats(m)
        raise AssertionError(f"{what}: heartbeats { {pid: (b.get('slots'), b.get('slots_waiting'), b.get('group_lease_error')) for pid, b in beats.items()} }\n"
                             f"{m.worker_log()[-6000:]}") from None


def test_workers_share_a_link_through_joins_kills_and_pauses(mirroring, cli, source, destination, local_kafka):
    m = mirroring
    r = cli("link", "alter", m.name, "--config", "worker.session.timeout.ms=6000")
    assert r.exit_code == 0, r.stderr
    topics = {fx.make_topic(source, PLAIN, 8): (PLAIN, 8), fx.make_topic(source, TXN, 4): (TXN, 4)}
    for t in topics:
        m.mirror(t)
    flow = fx.Flow(source, topics, seed=10).start()
    try:
        w1, w2 = m.start_worker(), m.start_worker()
        two = wait_sharing(m, [w1, w2], "two workers to share the slots")
        print(f"\ntwo workers: {two}")
        w3 = m.start_worker()
        three = wait_sharing(m, [w1, w2, w3], "a third worker to get slots of its own")
        print(f"three workers: {three}")
        fx.wait_copying(m, w3, topics)
        assert fx.sigkill(w1)
        w2.send_signal(signal.SIGSTOP)
        try:
            time.sleep(30)
            # w3 copies on alone meanwhile: the destination grows
            fx.wait_copying(m, w3, topics, timeout=90)
        finally:
            w2.send_signal(signal.SIGCONT)
        after = wait_sharing(m, [w2, w3], "the two live workers to share the slots again")
        print(f"after the kill and the pause: {after}")
        fx.wait_copying(m, w2, topics)
        time.sleep(2.0)
    finally:
        flow.stop()
    finish(m, topics, flow, local_kafka.state_dir, "scale-out", 3)
    live = {str(w.pid) for w in (w2, w3)}
    view = owners(cli, m)
    assert len(view) == 12
    for (t, p), row in sorted(view.items()):
        assert row["owner_live"] and row["owner"] and row["owner"].split("-")[-2] in live, (t, p, row)
    for t in topics:
        assert m.state(t).state == st.ACTIVE
    assert w2.poll() is None and w3.poll() is None
