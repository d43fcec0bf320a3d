"""`kafka-mirrors describe --watch` in a pseudo-terminal, on real brokers (issue 12, live
view): the screen shows the mirror and its lag before the worker runs, the lag falls to 0
and the worker's id shows once it copies, a narrow terminal gets the compact layout, and
SIGINT (Ctrl-C) exits 0. The screen is what a terminal would show: the bytes the command
wrote to the pty, replayed through the few control sequences rich.live uses (Screen).
Each frame seen is kept in the test's tmp dir (watch-*.txt)."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from tests import mirrortools as mt
from tests.mirroring import unique

pytestmark = pytest.mark.integration

RECORDS_PER_PARTITION = 150_000
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b[()][0-9A-B]|\x1b.|\r|\n|[^\x1b\r\n]+", re.S)


class Screen:
    """A terminal of `width` x unlimited rows, enough for what rich.live writes: text,
    CR, LF, cursor up/down/column, erase line / to end of screen; colours ignored."""

    def __init__(self, width: int):
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.r = self.c = 0

    def feed(self, data: str) -> None:
        for m in _CSI.finditer(data):
            tok = m.group(0)
            if tok == "\r":
                self.c = 0
            elif tok == "\n":
                self.r += 1
                self.c = 0
            elif m.group(2):
                n = int(m.group(1)) if m.group(1).isdigit() else 1
                cmd = m.group(2)
                if cmd == "A":
                    self.r = max(0, self.r - n)
                elif cmd == "B":
                    self.r += n
                elif cmd == "G":
                    self.c = n - 1
                elif cmd == "K":  # erase in line: to its end, or (2) all of it
                    row = self._row()
                    del row[0 if m.group(1) == "2" else self.c:]
                elif cmd == "J":
                    del self.rows[self.r + 1:]
                    self._row()[self.c:] = []
            elif not tok.startswith("\x1b"):
                for ch in tok:
                    if self.c >= self.width:
                        self.r += 1
                        self.c = 0
                    row = self._row()
                    row.extend(" " * (self.c + 1 - len(row)))
                    row[self.c] = ch
                    self.c += 1

    def _row(self) -> list[str]:
        while len(self.rows) <= self.r:
            self.rows.append([])
        return self.rows[self.r]

    def text(self) -> str:
        return "\n".join("".join(r).rstrip() for r in self.rows).strip("\n")


class PtyWatch:
    """`kafka-mirrors ... --watch` with a pty as its terminal; output read in a thread."""

    def __init__(self, args: list[str], width: int, height: int = 40):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(TERM="xterm-256color", NO_COLOR="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.screen = Screen(width)
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the other side closed
                return
            if not data:
                return
            with self.lock:
                self.screen.feed(data.decode("utf-8", errors="replace"))

    def text(self) -> str:
        with self.lock:
            return self.screen.text()

    def wait_screen(self, pred, what: str, timeout: float = 90.0) -> str:
        def attempt():
            text = self.text()
            assert self.proc.poll() is None, f"watch exited {self.proc.returncode}:\n{text}"
            return text if pred(text) else None
        try:
            return mt.wait_until(attempt, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nscreen:\n{self.text()}") from None

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self.reader.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        try:
            os.close(self.master)
        except OSError:
            pass


@pytest.fixture
def watches():
    started: list[PtyWatch] = []

    def start(args: list[str], width: int) -> PtyWatch:
        w = PtyWatch(args, width)
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
