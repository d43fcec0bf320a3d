"""A pseudo-terminal for integration tests: run a kafka-mirrors command with a pty of a
given size as its terminal, and read back the screen it drew (Screen replays the bytes
through the few control sequences rich uses). Used by the describe --watch and the
worker progress tests."""
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

from tests import mirrortools as mt

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


class PtyCommand:
    """`kafka-mirrors ARGS` with a pty as its terminal (stdin, stdout, stderr); output read
    in a thread."""

    def __init__(self, args: list[str], width: int, height: int = 40):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(TERM="xterm-256color", NO_COLOR="1")
        # Ctrl-C as in a terminal session: a suite started in the background by a shell
        # without job control (`.ci/run &`) has SIGINT ignored, which every child inherits,
        # and Python then never raises KeyboardInterrupt (the watch did not exit in 30 s)
        self.proc = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, close_fds=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{text}"
            return text if pred(text) else None
        try:
            return mt.wait_until(attempt, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nscreen:\n{self.text()}") from None

    def interrupt(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
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
