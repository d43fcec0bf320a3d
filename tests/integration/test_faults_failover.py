"""`failover` issued in the middle of each fault of the suite (issue 11), records flowing:

- the worker SIGKILLed (failover while it is dead, then it is started again);
- the worker SIGSTOPped (failover while it is stopped: it cannot answer and is named; then
  it is resumed and must obey the stop);
- the destination broker down (failover refused, naming the cluster, nothing changed),
  then back (failover done);
- the source broker down (failover done from the destination alone, acknowledged);
- a slow link to the source (Toxiproxy latency).

Each case ends the same way: every mirror STOPPED, the worker that survives keeps running
(and heartbeating) for a while after the failover, and then the destination must be exactly
the source's prefix up to the failover point (read_committed: offsets, keys, values,
headers, timestamps), with no record past it (a transaction marker may land there: the abort
of a marker-only transaction the stopped worker had open), and the printed records possibly
lost must lie between 0 and what the source holds past the point. The network partition
case is in test_faults_partition.py.
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from kafka_mirrors import state as st
from tests import faults as fx
from tests import mirrortools as mt
from tests.faults import PLAIN, TXN
from tests.integration.test_faults import _statuses, own_cluster, own_mirroring, sync_offsets  # noqa: F401
from tests.integration.test_faults_network import (PROXY, _both_ways, _topics, _unpoison,  # noqa: F401
                                                   net, proxied_source)
from tests.mirroring import Mirroring

pytestmark = pytest.mark.integration

# the worker's delivery timeout of the fast path (worker/loop.py): what a stopped worker had
# queued before it was stopped expires after it, unsent
DELIVERY_TIMEOUT_S = 30.0


def _failover(cli, m: Mirroring, topics) -> tuple[dict, dict]:
    """`failover --output json` of every topic: ({topic: row}, {topic: {partition: failover
    point}}); every mirror STOPPED."""
    rows = {}
    for t in topics:
        r = cli("failover", t, "--link", m.name, "--yes", "--output", "json")
        assert r.exit_code == 0, (r.stdout, r.stderr)
        (row,) = json.loads(r.stdout)["topics"]
        assert row["ok"], row
        assert m.state(t).state == st.STOPPED, m.state(t)
        rows[t] = row
    points = {t: {int(p): v["destination_log_end_offset"] for p, v in row["partitions"].items()}
              for t, row in rows.items()}
    return rows, points


def _alive_for(m: Mirroring, proc, seconds: float) -> None:
    """`proc` runs for `seconds` and writes a new heartbeat meanwhile: a worker that could
    write, watched after the failover (what it wrote is judged by _check)."""
    assert proc.poll() is None, m.worker_log()[-3000:]
    hb0 = mt.wait_until(lambda: fx.heartbeat_at(m, proc), 30, "a heartbeat of the worker", interval=0.5)
    time.sleep(seconds)
    assert proc.poll() is None, f"the worker exited after the failover:\n{m.worker_log()[-3000:]}"
    mt.wait_until(lambda: (h := fx.heartbeat_at(m, proc)) is not None and h > hb0, 15,
                  "a new heartbeat of the worker after the failover", interval=0.5)


def _state_log(m: Mirroring) -> str:
    """The link's mirror records in the state topic, in order (for a failure's message)."""
    lines = []
    for r in mt.snapshot(m.destination, st.STATE_TOPIC, 0):
        key = (r.key or b"").decode(errors="replace")
        if key.startswith(f"mirror/{m.name}/"):
            v = json.loads(r.value) if r.value else None
            lines.append(f"{r.offset} {key} {v and v.get('state')} based_on={v and v.get('based_on')}")
    return "\n".join(lines)


def _copies_none_of(m: Mirroring, proc, topics) -> None:
    """The worker's heartbeat lists no partition of the stopped mirrors (it obeyed)."""
    def obeyed():
        store = st.StateStore(m.destination.conf(), m.name)
        try:
            beats = [w for w in store.snapshot().workers.values() if w.get("pid") == proc.pid]
        finally:
            store.close()
        return beats and not any(t in topics for b in beats for t, _p in st.worker_partitions(b))
    try:
        mt.wait_until(obeyed, 60, "the worker to copy none of the stopped mirrors", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstate records:\n{_state_log(m)}\nworker log:\n{m.worker_log()[-8000:]}") from None


def _check(m: Mirroring, topics, flow: fx.Flow, rows, points, state_dir, kind: str, proc,
           group: str, reader: fx.GroupReader) -> None:
    results: dict[str, list[dict]] = {}
    for t, (k, _n) in topics.items():
        results.setdefault(k, []).append(fx.compare_topic(m.source, m.destination, t, k, flow.acked,
                                                          upto=points[t]))
    rpo = {t: rows[t]["records_possibly_lost"] for t in topics}
    behind = {t: sum(mt.log_end_offsets(m.source, t).values()) - sum(points[t].values()) for t in topics}
    print(f"\nfailover during {kind}: records possibly lost (printed) {rpo}, offsets the source holds "
          f"past the failover point now {behind}, not acknowledged by "
          f"{ {t: rows[t]['workers_not_acked'] for t in topics} }")
    for t in topics:
        assert rpo[t] is not None and 0 <= rpo[t] <= behind[t], (t, rows[t], behind)
    tb = fx.tracebacks(m)
    moved = fx.check_group_after_failover(m.destination, group, {t: n for t, (_k, n) in topics.items()},
                                          points, reader)
    print(f"group {group} on the destination after the failover: {moved}")
    for k, res in sorted(results.items()):
        fx.report(state_dir, f"failover-during-{kind}-{k}", 1, res, tracebacks=tb, group_partitions=moved["partitions"],
                  group_at_committed_offset=moved["exact"])
    assert tb == 0, m.worker_log()[-6000:]
    if proc is not None:
        assert proc.poll() is None, m.worker_log()[-3000:]


def _ready(m: Mirroring, w, topics, group: str) -> None:
    """Copying, every partition reported with a source high watermark (so records
    possibly lost are known at the failover), and the group's offsets synced to the
    destination for every partition (so the failover has offsets to move)."""
    from tests.integration.test_faults_partition import _all_reported
    fx.wait_copying(m, w, topics)
    mt.wait_until(lambda: _all_reported(m, topics), 60,
                  "the worker to report a source high watermark for every partition", interval=0.3)
    fx.wait_group_on_destination(m.destination, group, {t: n for t, (_k, n) in topics.items()})


def _reader(cluster, group: str, topics) -> fx.GroupReader:
    return fx.GroupReader(cluster, group, {t: n for t, (_k, n) in topics.items()}).start()


# the kill and the destination restart run under `heavy` (with the long fault variants): in
# CI the suite stays near its 25 minutes; the SIGSTOP and slow-link cases run
@pytest.mark.heavy
def test_failover_while_the_worker_is_killed(mirroring, cli, source, local_kafka):
    m = mirroring
    group = sync_offsets(cli, m)
    topics = _topics(source)
    for t in topics:
        m.mirror(t)
    w = m.start_worker(instance_id=f"{m.name}-svc")
    flow = fx.Flow(source, topics, seed=91).start()
    reader = _reader(source, group, topics)
    try:
        _ready(m, w, topics, group)
        assert fx.sigkill(w)
        rows, points = _failover(cli, m, topics)
        # the service manager starts it again: it must leave the stopped mirrors alone
        again = m.start_worker(instance_id=f"{m.name}-svc")
        _alive_for(m, again, 6.0)
        _copies_none_of(m, again, topics)
    finally:
        flow.stop()
        reader.stop()
    _check(m, topics, flow, rows, points, local_kafka.state_dir, "sigkill", again, group, reader)


def test_failover_while_the_worker_is_stopped(mirroring, cli, source, local_kafka):
    m = mirroring
    group = sync_offsets(cli, m)
    topics = _topics(source)
    for t in topics:
        m.mirror(t)
    w = m.start_worker()
    flow = fx.Flow(source, topics, seed=92).start()
    reader = _reader(source, group, topics)
    try:
        _ready(m, w, topics, group)
        w.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            rows, points = _failover(cli, m, topics)
            # a stopped worker cannot acknowledge, and the command says so
            for t in topics:
                assert rows[t]["workers_not_acked"], rows[t]
            # what it had queued before the stop expires unsent once the delivery timeout passed
            time.sleep(max(0.0, DELIVERY_TIMEOUT_S + 5.0 - (time.monotonic() - stopped_at)))
        finally:
            w.send_signal(signal.SIGCONT)
        _copies_none_of(m, w, topics)
        _alive_for(m, w, 5.0)
    finally:
        flow.stop()
        reader.stop()
    _check(m, topics, flow, rows, points, local_kafka.state_dir, "sigstop", w, group, reader)


@pytest.mark.heavy
def test_failover_while_the_destination_is_down_then_back(own_cluster, own_mirroring, cli, source,  # noqa: F811
                                                          local_kafka):
    dst = own_cluster("fo-dst")
    m = own_mirroring(source, dst)
    group = sync_offsets(cli, m)
    topics = {fx.make_topic(source, PLAIN, 2): (PLAIN, 2), fx.make_topic(source, TXN, 2): (TXN, 2)}
    for t in topics:
        m.mirror(t)
    w = m.start_worker()
    flow = fx.Flow(source, topics, seed=93).start()
    reader = _reader(source, group, topics)
    try:
        _ready(m, w, topics, group)
        refused = {}

        def during():
            # the state store is on the destination: refused, naming it, nothing changed
            for t in topics:
                r = cli("failover", t, "--link", m.name, "--yes")
                assert r.exit_code != 0, r.stdout
                assert "Traceback" not in r.stderr and r.stderr.strip(), (r.stdout, r.stderr)
                refused[t] = r.stderr.strip().splitlines()[-1]
            assert w.poll() is None, m.worker_log()[-3000:]
        fx.restart_cluster(local_kafka, dst, during=during)
        print(f"\nfailover with the destination down: {refused}")
        assert all(dst.bootstrap in why or "destination" in why for why in refused.values()), refused
        for t in topics:
            assert m.state(t).state == st.ACTIVE, m.state(t)
        fx.wait_copying(m, w, topics, timeout=120)
        rows, points = _failover(cli, m, topics)
        for t in topics:
            assert rows[t]["workers_not_acked"] == [], rows[t]
        _alive_for(m, w, 4.0)
    finally:
        flow.stop()
        reader.stop()
    _check(m, topics, flow, rows, points, local_kafka.state_dir, "destination-down", w, group, reader)


@pytest.mark.heavy  # CI has the source-down failover in test_failover_source_down.py (3 variants)
def test_failover_while_the_source_is_down(own_cluster, own_mirroring, cli, destination, local_kafka):  # noqa: F811
    src = own_cluster("fo-src")
    m = own_mirroring(src, destination)
    group = sync_offsets(cli, m)
    topics = {fx.make_topic(src, PLAIN, 2): (PLAIN, 2), fx.make_topic(src, TXN, 2): (TXN, 2)}
    for t in topics:
        m.mirror(t)
    w = m.start_worker()
    flow = fx.Flow(src, topics, seed=94).start()
    reader = _reader(src, group, topics)
    rows = points = None
    try:
        _ready(m, w, topics, group)

        def during():
            nonlocal rows, points
            mt.wait_until(lambda: set(_statuses(cli, m).values()) == {"SOURCE_UNAVAILABLE"}, 60,
                          "describe to show SOURCE_UNAVAILABLE")
            rows, points = _failover(cli, m, topics)
            for t in topics:
                assert rows[t]["workers_not_acked"] == [], rows[t]
            _alive_for(m, w, 3.0)
        fx.restart_cluster(local_kafka, src, during=during)
        # the source is back and the flow goes on: the worker must not copy any more
        _alive_for(m, w, 5.0)
        _copies_none_of(m, w, topics)
    finally:
        flow.stop()
        reader.stop()
    _check(m, topics, flow, rows, points, local_kafka.state_dir, "source-down", w, group, reader)


def test_failover_over_a_slow_link(net, cli, local_kafka):
    m, tox = net
    group = sync_offsets(cli, m)
    topics = _topics(m.source)
    for t in topics:
        m.mirror(t)
    w = m.start_worker()
    flow = fx.Flow(m.source, topics, seed=95).start()
    reader = _reader(m.source, group, topics)
    try:
        _ready(m, w, topics, group)
        _both_ways(tox, "slow", "latency", latency=300, jitter=100)
        base = fx.destination_total(m.destination, topics)
        mt.wait_until(lambda: fx.destination_total(m.destination, topics) > base + 50, 120,
                      "records copied over the slow link")
        rows, points = _failover(cli, m, topics)
        for t in topics:
            assert rows[t]["workers_not_acked"] == [], rows[t]
        _alive_for(m, w, 4.0)
        _unpoison(tox, "slow")
        _alive_for(m, w, 2.0)
    finally:
        flow.stop()
        reader.stop()
    _check(m, topics, flow, rows, points, local_kafka.state_dir, "latency", w, group, reader)
