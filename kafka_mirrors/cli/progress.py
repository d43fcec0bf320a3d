"""The worker's catch-up progress (`kafka-mirrors run`): while a mirror is far behind its
source (more than CATCHUP_LAG records, e.g. its initial copy), show how far it has got.

In a terminal (stderr a tty, text logs) one rich progress bar per such mirror, with copy
rate and ETA, drawn under the log lines; elsewhere (a pipe, a file, a journal, or
`--log-format json`) a plain log line per such mirror every LOG_EVERY_S, with the same
figures as extra fields in JSON. Either way a line says when the mirror caught up (lag
back under CAUGHT_UP_LAG).

It reads only what the copy plane publishes for everyone: `plane.view` (replaced whole,
every 2 s) and `plane.view_serial`, as metrics.Sampler does, from a thread of its own. It
takes no lock the worker holds and puts nothing on its queues, so it never holds up the
copy or the control loop.

Lag here is the copy plane's own figure: the source high watermark of the last fetch
response minus the next offset to copy (the destination log end offset), summed over the
mirror's partitions being copied.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("kafka_mirrors.progress")

CATCHUP_LAG = 10_000    # records behind: above this a mirror gets a progress bar / log lines
CAUGHT_UP_LAG = 1_000   # back under this: caught up (the gap keeps a bar from flickering)
LOG_EVERY_S = 30.0      # without a terminal: one line per catching-up mirror this often
LOOK_EVERY_S = 0.5      # how often the view is looked at (it changes every 2 s)


def wants_bar(stream, log_format: str) -> bool:
    """A progress bar only for a person at a terminal: text logs to a tty that is not dumb."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return bool(tty) and log_format == "text" and os.environ.get("TERM", "") != "dumb"


@dataclass
class CatchUp:
    topic: str
    base: int           # sum of next offsets when the mirror was first seen far behind
    done: int           # offsets copied since
    lag: int            # records behind now
    rate: float | None  # offsets per second between the last two views, None before
    finished: bool = False

    @property
    def total(self) -> int:
        return self.done + self.lag

    @property
    def eta_s(self) -> float | None:
        return self.lag / self.rate if self.rate else None


class CatchUpTracker:
    """Which mirrors are far behind, from successive copy plane views (pure: tested
    without a worker)."""

    def __init__(self, catchup_lag: int = CATCHUP_LAG, caught_up_lag: int = CAUGHT_UP_LAG):
        self.catchup_lag = catchup_lag
        self.caught_up_lag = caught_up_lag
        self.active: dict[str, CatchUp] = {}
        self._last: dict[str, tuple[float, int]] = {}  # topic -> (time, sum of next offsets)

    @staticmethod
    def measure(parts: dict) -> tuple[int, int] | None:
        """(sum of next offsets, lag) of one mirror's view, None when no partition's
        source high watermark is known yet."""
        nexts, lag, known = 0, 0, False
        for prog in parts.values():
            nxt, hw = prog.get("next_offset"), prog.get("source_high_watermark")
            if nxt is None:
                continue
            nexts += nxt
            if hw is not None:
                known = True
                lag += max(0, hw - nxt)
        return (nexts, lag) if known else None

    def update(self, view: dict, now: float) -> list[CatchUp]:
        """The mirrors catching up after this view, and those that just caught up
        (`finished`, reported once)."""
        out = []
        for topic, parts in view.items():
            m = self.measure(parts)
            if m is None:
                continue
            nexts, lag = m
            rate = None
            last = self._last.get(topic)
            if last is not None and now > last[0] and nexts >= last[1]:
                rate = (nexts - last[1]) / (now - last[0])
            self._last[topic] = (now, nexts)
            c = self.active.get(topic)
            if c is None:
                if lag > self.catchup_lag:
                    c = self.active[topic] = CatchUp(topic, nexts, 0, lag, rate)
                    out.append(c)
                continue
            c.done, c.lag = max(0, nexts - c.base), lag
            c.rate = rate if rate is not None else c.rate
            if lag < self.caught_up_lag:
                c.finished = True
                del self.active[topic]
            out.append(c)
        for topic in [t for t in self.active if t not in view]:
            c = self.active.pop(topic)  # the mirror stopped (paused, failed over)
            c.finished = True
            out.append(c)
        return out


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressReporter:
    """The thread that watches the plane's view and draws bars (console given) or logs."""

    def __init__(self, plane, link_name: str, console=None, clock=time.time):
        self.plane = plane
        self.link = link_name
        self.console = console
        self.clock = clock
        self.tracker = CatchUpTracker()
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serial = None
        self._logged_at: dict[str, float] = {}
        self._progress = None
        self._tasks: dict[str, int] = {}

    def start(self) -> "ProgressReporter":
        if self.console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=True, redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.link}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._progress is not None:
            self._progress.stop()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a display must never end the worker
                log.debug("[%s] progress display: %s: %s", self.link, type(exc).__name__, exc)
            self.stop.wait(LOOK_EVERY_S)

    def tick(self) -> None:
        serial, view = self.plane.view_serial, self.plane.view
        if serial == self._serial:
            return
        self._serial = serial
        now = self.clock()
        for c in self.tracker.update(view, now):
            if self._progress is not None:
                self._bar(c)
            else:
                self._log(c, now)

    def _fields(self, c: CatchUp) -> dict:
        return {"link": self.link, "mirror": c.topic, "lag_records": c.lag, "copied": c.done,
                "rate_per_s": None if c.rate is None else round(c.rate, 1),
                "eta_s": None if c.eta_s is None else round(c.eta_s)}

    def _log(self, c: CatchUp, now: float) -> None:
        if c.finished:
            self._logged_at.pop(c.topic, None)
            log.info("[%s/%s] caught up: %d record(s) behind after copying %d", self.link, c.topic, c.lag,
                     c.done, extra=self._fields(c))
            return
        if now - self._logged_at.get(c.topic, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        self._logged_at[c.topic] = now
        rate = "rate unknown yet" if c.rate is None else f"{c.rate:,.0f} records/s"
        log.info("[%s/%s] catching up: %d record(s) behind, %d copied, %s, ETA %s", self.link, c.topic, c.lag,
                 c.done, rate, _eta(c.eta_s), extra=self._fields(c))

    def _bar(self, c: CatchUp) -> None:
        p = self._progress
        rate = "" if c.rate is None else f"{c.rate:,.0f}/s"
        task = self._tasks.get(c.topic)
        if c.finished:
            if task is not None:
                p.remove_task(task)
                del self._tasks[c.topic]
                p.refresh()  # the bar gone before the line is printed (rich redraws what it last drew)
            log.info("[%s/%s] caught up: %d record(s) behind after copying %d", self.link, c.topic, c.lag,
                     c.done, extra=self._fields(c))
            return
        if task is None:
            self._tasks[c.topic] = p.add_task(f"{self.link}/{c.topic}", total=c.total, completed=c.done, rate=rate)
        else:
            p.update(task, total=c.total, completed=c.done, rate=rate)


class ConsoleLogHandler(logging.Handler):
    """Log lines through the rich console the bars are drawn on, so they print above the
    bars instead of through them."""

    def __init__(self, console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from rich.text import Text
            self.console.print(Text(self.format(record)), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own contract
            self.handleError(record)
