"""`kafka-mirrors describe --watch` in a pseudo-terminal, on real brokers (issue 12, live
view): the screen shows the mirror and its lag before the worker runs, the lag falls to 0
and the worker's id shows once it copies, a narrow terminal gets the compact layout, and
SIGINT (Ctrl-C) exits 0. The screen is what a terminal would show (tests/ptyterm.py).
Each frame seen is kept in the test's tmp dir (watch-*.txt)."""
from __future__ import annotations

import re
import time

import pytest

from tests import mirrortools as mt
from tests.mirroring import unique
from tests.ptyterm import PtyCommand

pytestmark = pytest.mark.integration

RECORDS_PER_PARTITION = 150_000


@pytest.fixture
def watches():
    started: list[PtyCommand] = []

    def start(args: list[str], width: int) -> PtyCommand:
        w = PtyCommand(args, width)
        started.append(w)
        return w

    yield start
    for w in started:  # stopped even when the test fails
        w.close()


def _row(text: str, name: str) -> list[str] | None:
    for line in text.splitlines():
        if line.split()[:1] == [name]:
            return line.split()
    return None


def test_describe_watch_shows_the_copy_live_and_exits_0_on_ctrl_c(mirroring, watches):
    m = mirroring
    topic = m.source.create_topic(unique("watch"), partitions=2)
    now_ms = int(time.time() * 1000)
    records = (mt.Record(key=None, value=b"v" * 50, headers=[], timestamp_ms=now_ms)
               for _ in range(2 * RECORDS_PER_PARTITION))
    mt.produce_records(m.source, topic, records, partitions=2)
    m.mirror(topic)
    total = 2 * RECORDS_PER_PARTITION
    name = f"{m.name}/{topic}"

    w = watches(["--registry", str(m.registry_path), "describe", "--watch", "--interval", "0.5"], width=120)
    # before any worker: the whole source is the lag, no worker has run
    before = w.wait_screen(lambda t: (r := _row(t, name)) is not None and r[3] == f"{total:,}",
                           f"the mirror with lag {total:,}")
    assert _row(before, name)[:3] == [name, "all", "ACTIVE"]
    assert "MIRROR" in before and "LAG S" in before and "RATE" in before and "HEARTBEAT" in before
    assert _row(before, name)[-1] == "never"  # heartbeat
    (m.tmp_path / "watch-before.txt").write_text(before)

    worker = m.start_worker()
    frames: list[str] = []

    def caught_up(text: str) -> bool:
        r = _row(text, name)
        if r is not None and r[3] not in ("0", f"{total:,}"):
            frames.append(text)  # a frame mid-copy
        # lag 0, the worker named, its heartbeat fresh
        return r is not None and r[3] == "0" and r[-2].endswith("s") and r[-1] == "ago" and \
            re.search(r"-\d+-[0-9a-f]{6}", text) is not None

    after = w.wait_screen(caught_up, "lag 0 with the worker's heartbeat", timeout=180)
    assert worker.poll() is None, m.worker_log()
    (m.tmp_path / "watch-caught-up.txt").write_text(after)
    if frames:
        (m.tmp_path / "watch-during-copy.txt").write_text(frames[len(frames) // 2])
        print("describe --watch during the copy:\n" + frames[len(frames) // 2])
    print("describe --watch caught up:\n" + after)
    # the partitions under the mirror, each caught up
    lines = after.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
    assert [x.split()[:2] for x in lines[at + 1:at + 3]] == [["0", "0"], ["1", "0"]]
    assert w.interrupt() == 0
    assert "Traceback" not in w.text() and "interrupted" not in w.text()

    # a narrow terminal: the compact layout, still readable, still exits 0 on Ctrl-C
    n = watches(["--registry", str(m.registry_path), "mirror", "describe", topic, "--link", m.name,
                 "--watch", "--interval", "0.5"], width=60)
    narrow = n.wait_screen(lambda t: f"{name} ACTIVE" in t and "  lag 0 (0s)" in t and "hb " in t,
                           "the compact layout")
    (m.tmp_path / "watch-narrow.txt").write_text(narrow)
    print("describe --watch at 60 columns:\n" + narrow)
    assert all(len(line) <= 60 for line in narrow.splitlines())
    assert n.interrupt() == 0
    m.stop_worker(worker)
