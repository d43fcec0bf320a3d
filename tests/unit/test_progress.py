"""The worker's catch-up progress without a broker: the bar only for text logs on a
terminal; a mirror far behind is tracked from the copy plane's view (rate, ETA) until it
caught up; without a terminal the same figures go out as log lines."""
import io
import json
import logging
import os
import pty

import pytest

from kafka_mirrors.cli import progress as pg
from kafka_mirrors.logs import JsonFormatter


def view(nexts: dict[int, int], hws: dict[int, int | None]) -> dict:
    return {"orders": {p: {"next_offset": n, "source_high_watermark": hws[p]} for p, n in nexts.items()}}


def test_bar_only_for_text_logs_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert pg.wants_bar(tty, "text") is True
            assert pg.wants_bar(tty, "json") is False
            monkeypatch.setenv("TERM", "dumb")
            assert pg.wants_bar(tty, "text") is False
    finally:
        os.close(master)
        os.close(slave)
    monkeypatch.setenv("TERM", "xterm")
    assert pg.wants_bar(io.StringIO(), "text") is False
    with open(os.devnull, "w") as f:
        assert pg.wants_bar(f, "text") is False


def test_a_mirror_far_behind_is_tracked_until_it_caught_up():
    t = pg.CatchUpTracker(catchup_lag=10_000, caught_up_lag=1_000)
    assert t.update(view({0: 0, 1: 0}, {0: 4_000, 1: 5_000}), 0.0) == []  # 9,000 behind: no bar
    assert t.update(view({0: 0}, {0: None}), 1.0) == []  # no high watermark yet: not measured
    t = pg.CatchUpTracker(catchup_lag=10_000, caught_up_lag=1_000)
    [c] = t.update(view({0: 100, 1: 0}, {0: 30_100, 1: 0}), 10.0)
    assert (c.topic, c.lag, c.done, c.rate, c.eta_s, c.finished) == ("orders", 30_000, 0, None, None, False)
    [c] = t.update(view({0: 10_100, 1: 0}, {0: 30_100, 1: 0}), 12.0)
    assert (c.lag, c.done, c.total, c.rate, c.eta_s) == (20_000, 10_000, 30_000, 5_000.0, 4.0)
    [c] = t.update(view({0: 29_600, 1: 0}, {0: 30_100, 1: 0}), 14.0)
    assert c.finished and c.lag == 500 and "orders" not in t.active
    assert t.update(view({0: 29_700, 1: 0}, {0: 30_100, 1: 0}), 16.0) == []  # reported once


class Plane:
    def __init__(self):
        self.view, self.view_serial = {}, 0

    def publish(self, v: dict) -> None:
        self.view, self.view_serial = v, self.view_serial + 1


@pytest.fixture
def json_log():
    out = io.StringIO()
    h = logging.StreamHandler(out)
    h.setFormatter(JsonFormatter())
    lg = logging.getLogger("kafka_mirrors.progress")
    lg.handlers[:], lg.propagate, lg.level = [h], False, logging.INFO
    yield out
    lg.handlers[:], lg.propagate = [], True


def test_without_a_terminal_progress_is_log_lines(json_log):
    plane, now = Plane(), [100.0]
    r = pg.ProgressReporter(plane, "dr", console=None, clock=lambda: now[0])
    plane.publish(view({0: 0}, {0: 50_000}))
    r.tick()
    r.tick()  # the same view again: nothing new
    now[0] = 102.0
    plane.publish(view({0: 20_000}, {0: 50_000}))
    r.tick()  # within 30 s of the last line: no line
    now[0] = 140.0
    plane.publish(view({0: 40_000}, {0: 50_000}))
    r.tick()
    now[0] = 142.0
    plane.publish(view({0: 49_990}, {0: 50_000}))
    r.tick()
    got = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert [g["message"] for g in got] == [
        "[dr/orders] catching up: 50000 record(s) behind, 0 copied, rate unknown yet, ETA unknown",
        "[dr/orders] catching up: 10000 record(s) behind, 40000 copied, 526 records/s, ETA 0m19s",
        "[dr/orders] caught up: 10 record(s) behind after copying 49990",
    ]
    assert (got[1]["link"], got[1]["mirror"], got[1]["lag_records"], got[1]["eta_s"]) == ("dr", "orders", 10000, 19)


def test_on_a_terminal_a_bar_is_drawn(json_log):
    from rich.console import Console
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    plane, now = Plane(), [0.0]
    r = pg.ProgressReporter(plane, "dr", console=console, clock=lambda: now[0])
    r.stop.set()  # no thread: ticks are driven here
    r.start()
    try:
        plane.publish(view({0: 0}, {0: 50_000}))
        r.tick()
        now[0] = 2.0
        plane.publish(view({0: 25_000}, {0: 50_000}))
        r.tick()
        r._progress.refresh()
        assert "dr/orders" in out.getvalue() and "25000/50000" in out.getvalue()
        assert "12,500/s" in out.getvalue()
        assert json_log.getvalue() == ""  # no catching-up log lines beside a bar
    finally:
        r.close()
