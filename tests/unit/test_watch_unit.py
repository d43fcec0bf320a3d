"""`describe --watch` without a broker: the options it refuses (exit 2), the rate and lag
in seconds it derives from two describe views, and the screen at 120 and at 60 columns."""
import io

import pytest
from rich.console import Console

from kafka_mirrors.cli import watch as w


def dview(dst_ends: list[int], lso: list[int], status="ACTIVE", beat=1) -> dict:
    parts = [{"partition": p, "source_last_stable_offset": s, "destination_log_end_offset": d, "lag": max(0, s - d)}
             for p, (d, s) in enumerate(zip(dst_ends, lso))]
    return {"links": [{"link": "dr", "error": None, "source_available": True, "source_error": None, "mirrors": [
        {"link": "dr", "topic": "orders", "status": status, "lag": sum(p["lag"] for p in parts),
         "reason": None, "copy_error": None, "source_error": None, "destination_error": None,
         "worker": {"worker_ids": ["host-1-abc"], "seconds_since_heartbeat": beat, "status": ""},
         "partitions": parts}]}]}


@pytest.mark.parametrize("args, message", [
    (["--watch", "--output", "json"], "--watch draws a live table and cannot be combined with --output json"),
    (["--watch", "--interval", "0"], "--interval must be more than 0 seconds, got 0"),
    (["--watch", "--interval", "-1.5"], "--interval must be more than 0 seconds, got -1.5"),
    (["--watch", "--interval", "inf"], "--interval must be more than 0 seconds, got inf"),
    (["--interval", "3"], "--interval needs --watch"),
    (["--watch", "--check"], "--watch cannot be combined with --check"),
])
def test_bad_watch_options_are_usage_errors(cli, args, message):
    for cmd in (["describe"], ["mirror", "describe", "orders", "--link", "dr"]):
        r = cli(*cmd, *args)
        assert r.exit_code == 2, (cmd, r.stdout, r.stderr)
        assert r.stderr.startswith(f"error: {message}"), r.stderr
        assert r.stdout == ""


def test_rate_and_lag_seconds_come_from_successive_views():
    m = w.WatchModel()
    f = m.update(dview([0, 0], [1000, 400]), 100.0)
    [row] = f.mirrors
    assert (row.lag, row.rate, row.lag_seconds, row.owner, row.heartbeat_age) == (1400, None, 0.0, "host-1-abc", 1)
    f = m.update(dview([500, 100], [1000, 400]), 102.0)
    [row] = f.mirrors
    assert [p.rate for p in row.partitions] == [250.0, 50.0] and row.rate == 300.0
    assert [p.lag_seconds for p in row.partitions] == [2.0, 2.0] and row.lag_seconds == 2.0
    f = m.update(dview([1000, 400], [1000, 450]), 106.0)
    [row] = f.mirrors
    # p0 caught up: 0 s; p1 is behind only on what appeared since the last view
    assert [p.lag_seconds for p in row.partitions] == [0.0, 0.0] and [p.lag for p in row.partitions] == [0, 50]
    f = m.update(dview([1000, 400], [1000, 450]), 110.0)
    assert f.mirrors[0].partitions[1].lag_seconds == 4.0 and f.mirrors[0].rate == 0.0


def test_a_link_that_cannot_be_described_is_a_problem_line():
    f = w.WatchModel().update({"links": [{"link": "dead", "error": "destination unreachable", "mirrors": []}]}, 1.0)
    assert f.mirrors == [] and f.problems == ["link dead: destination unreachable"]


def screen(frame, width: int, height: int = 30) -> str:
    out = io.StringIO()
    c = Console(file=out, width=width, height=height, color_system=None, markup=False)
    c.print(w.render(frame, width, height, 2.0))
    return out.getvalue()


def test_wide_and_narrow_screens():
    m = w.WatchModel()
    m.update(dview([0, 0], [10_000, 4_000]), 100.0)
    frame = m.update(dview([5_000, 1_000], [10_000, 4_000]), 102.0)
    wide = screen(frame, 120)
    lines = wide.splitlines()
    assert lines[0].startswith("kafka-mirrors describe --watch  every 2s")
    assert lines[1].split() == ["MIRROR", "PART", "STATE", "LAG", "LAG", "S", "RATE", "WORKER", "HEARTBEAT"]
    assert lines[2].split() == ["dr/orders", "all", "ACTIVE", "8,000", "2s", "3,000/s", "host-1-abc", "1s", "ago"]
    assert lines[3].split() == ["0", "5,000", "2s", "2,500/s"]
    assert max(len(x) for x in lines) <= 120
    narrow = screen(frame, 60).splitlines()
    assert narrow[1:] == ["dr/orders ACTIVE", "  lag 8,000 (2s) 3,000/s hb 1s ago",
                          "  p0 lag 5,000 2,500/s", "  p1 lag 3,000 500/s"]
    assert max(len(x) for x in narrow) <= 60
    # a short terminal: partitions stop where it ends, and it says so
    short = screen(frame, 60, height=7).splitlines()
    assert short[-2:] == ["  p0 lag 5,000 2,500/s", "  (1 more partitions)"] and len(short) <= 7


def test_a_topic_name_with_brackets_prints_as_it_is():
    v = dview([0], [5])
    v["links"][0]["mirrors"][0]["topic"] = "a[bold]b"
    assert "dr/a[bold]b" in screen(w.WatchModel().update(v, 1.0), 120)
