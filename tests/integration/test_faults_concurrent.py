"""Concurrent CLI commands against a running worker (issue 11): pause, resume, promote and
failover from two processes at once. The commands that succeeded must form some serial
order (each allowed where it ran) that leads to the final state, the refused ones changed
nothing, and the worker obeys the final state: new source records are copied when it is
ACTIVE, and nothing lands (the worker alive, its heartbeat moving) when PAUSED or STOPPED.
"""
from __future__ import annotations

import random
import subprocess
import sys
import threading

import pytest

from kafka_mirrors import state as st
from tests import faults as fx
from tests import mirrortools as mt
from tests.integration.test_faults import wait_settled
from tests.mirroring import Mirroring

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ concurrent commands

# What each command does to a mirror's state when it runs alone (None: refused, nothing changes).
def _model(cmd: str, state: str) -> str | None:
    if cmd == "pause":
        return st.PAUSED if state == st.ACTIVE else None
    if cmd == "resume":
        return st.ACTIVE if state == st.PAUSED else None
    if cmd == "promote":
        return st.STOPPED if state in (st.ACTIVE, st.PAUSED) else None
    if cmd == "failover":
        return st.STOPPED if state in (st.ACTIVE, st.PAUSED, st.PENDING_STOPPED, st.FAILED) else None
    raise ValueError(cmd)


def _orders(a: list, b: list):
    """Every interleaving of two sequences, each kept in its own order."""
    if not a:
        yield list(b)
        return
    if not b:
        yield list(a)
        return
    for rest in _orders(a[1:], b):
        yield [a[0], *rest]
    for rest in _orders(a, b[1:]):
        yield [b[0], *rest]


def explain(results: list[tuple[str, bool]], start: str, final: str, other: list[tuple[str, bool]]) -> bool:
    """Does some serial order of the commands that succeeded (each allowed where it ran)
    lead from `start` to `final`? Refused commands change nothing (the loser of a race is
    refused, naming the state it found)."""
    mine = [c for c, ok in results if ok]
    theirs = [c for c, ok in other if ok]
    for order in _orders(mine, theirs):
        s = start
        for cmd in order:
            s = _model(cmd, s)
            if s is None:
                break
        if s == final:
            return True
    return False


def _run_cli(m: Mirroring, cmd: str, topic: str) -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "kafka_mirrors", "--registry", str(m.registry_path)]
    args = {"pause": ["mirror", "pause", topic], "resume": ["mirror", "resume", topic],
            "promote": ["promote", topic, "--yes", "--timeout", "20"],
            "failover": ["failover", topic, "--yes"]}[cmd]
    return subprocess.run(base + args + ["--link", m.name], text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120, stdin=subprocess.DEVNULL)


def _ack_seen_offset(m: Mirroring, topic: str) -> int:
    store = st.StateStore(m.destination.conf(), m.name)
    try:
        return max((int(a.get("seen_offset") or -1) for (t, _w), a in store.snapshot().acks.items()
                    if t == topic and a.get("state") == "stopped"), default=-1)
    finally:
        store.close()


COMMANDS = ["pause", "resume", "promote", "failover"]


@pytest.mark.parametrize("rounds", [pytest.param(3, id="ci"), pytest.param(20, id="heavy", marks=pytest.mark.heavy)])
def test_concurrent_commands_from_two_processes(mirroring, cli, source, destination, local_kafka, rounds):
    m = mirroring
    rnd = random.Random(1111 + rounds)
    # an idle mirror whose pause tells when the worker has applied every state record before it
    sentinel = m.new_mirror(partitions=1, records=3)
    w = m.start_worker()
    races = lost_states = 0
    finals = []
    for r in range(rounds):
        topic = m.new_mirror(partitions=2, records=40)
        wait_settled(m, topic)
        m.wait_worker_serving(topic)
        seqs = [[rnd.choice(COMMANDS) for _ in range(3)] for _ in range(2)]
        if r == 0:
            seqs = [["pause", "resume", "failover"], ["resume", "pause", "promote"]]
        out: list[list[tuple[str, bool, str]]] = [[], []]
        gate = threading.Barrier(2)

        def run(i):
            gate.wait()
            for cmd in seqs[i]:
                p = _run_cli(m, cmd, topic)
                out[i].append((cmd, p.returncode == 0, p.stdout + p.stderr))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        races += 1
        for cmd, ok, text in out[0] + out[1]:
            assert "Traceback" not in text, text
            if not ok:
                assert text.strip(), f"{cmd} failed without saying why"
        rec = m.state(topic)
        final = rec.state
        finals.append(final)
        hist = [[(c, ok) for c, ok, _ in o] for o in out]
        ok = explain(hist[0], st.ACTIVE, final, hist[1])
        print(f"\nround {r}: {hist[0]} | {hist[1]} -> {final}")
        if not ok:
            lost_states += 1
        assert ok, (f"final state {final} ({rec.reason}) is no serial order of the commands that succeeded: {hist}\n"
                    + "\n".join(t for o in out for _c, _ok, t in o))

        # the worker has applied everything before the sentinel's pause once it acknowledges it
        mark = mt.watermarks(destination, st.STATE_TOPIC, 0)[1]
        res = cli("mirror", "pause", sentinel, "--link", m.name)
        assert res.exit_code == 0, res.stderr
        mt.wait_until(lambda: _ack_seen_offset(m, sentinel) >= mark, 30, "the worker to acknowledge the sentinel")
        res = cli("mirror", "resume", sentinel, "--link", m.name)
        assert res.exit_code == 0, res.stderr

        # and it obeys the final state: new source records are copied only when ACTIVE
        ends = mt.log_end_offsets(destination, topic)
        mt.produce_records(source, topic, mt.make_records(30, seed=r), partitions=2)
        if final == st.ACTIVE:
            wait_settled(m, topic)
            mt.assert_identical(source, destination, topic, topic, partitions=2)
        else:
            assert final in (st.PAUSED, st.STOPPED), final
            fx.watch_nothing_lands(m, w, topic, ends, seconds=3.0)
            if final == st.STOPPED:
                # promoted or failed over: a writable topic now
                destination.produce(topic, [b"after stop"], partition=0)
    assert w.poll() is None
    fx.report(local_kafka.state_dir, "concurrent-cli", races,
              [{"lost": 0, "dup": 0, "mismatched": lost_states, "records": 1, "fillers": 0, "detail": []}],
              states_lost=lost_states, finals="/".join(finals))
