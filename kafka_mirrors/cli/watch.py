"""`describe --watch` and `mirror describe --watch`: the describe view, gathered again every
`--interval` seconds by the same code as `describe` (cli/describe.py, mirrors.py), drawn
as one live table with rich.live until Ctrl-C (exit 0).

What the describe view does not hold is derived here from two refreshes in a row:
- copy rate: the growth of each destination log end offset per second between refreshes;
- lag in seconds: metrics.PartitionSample, the approximation the Prometheus series use
  (docs/metrics.md): time since the oldest uncopied source offset was first seen, so a
  lower bound with the resolution of the interval, counted from when the watch started.

At 80 columns or more a table of mirrors with their partitions under them; narrower, one
short line per mirror and per partition. Partition rows stop where the terminal ends,
with a line saying how many were left out (a link of 10,000 partitions stays readable
and cheap to draw). Clients are kept between refreshes (mirrors.DescribeClients).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from kafka_mirrors.errors import KafkaMirrorsError, UsageError
from kafka_mirrors.metrics import PartitionSample

COMPACT_BELOW = 80  # columns: narrower terminals get the compact layout
DEFAULT_INTERVAL_S = 2.0


def check_watch_options(watch: bool, interval: float | None, output, check: bool) -> float:
    """The refresh interval; UsageError (exit 2) for a combination that cannot be watched."""
    from kafka_mirrors.cli.application import OutputFormat
    if not watch:
        if interval is not None:
            raise UsageError("--interval needs --watch", "e.g. --watch --interval 5")
        return DEFAULT_INTERVAL_S
    if output == OutputFormat.json:
        raise UsageError("--watch draws a live table and cannot be combined with --output json",
                         "for JSON, run describe --output json in a loop")
    if check:
        raise UsageError("--watch cannot be combined with --check", "run describe --check on its own")
    interval = DEFAULT_INTERVAL_S if interval is None else interval
    if not (interval > 0 and math.isfinite(interval)):  # also refuses NaN
        raise UsageError(f"--interval must be more than 0 seconds, got {interval:g}", "e.g. --interval 2")
    return interval


# ---------------------------------------------------------------- the model

@dataclass
class PartitionRow:
    partition: int
    lag: int | None
    lag_seconds: float | None
    rate: float | None          # destination offsets per second since the last refresh
    destination_end: int | None


@dataclass
class MirrorRow:
    link: str
    topic: str
    status: str
    lag: int | None
    lag_seconds: float | None
    rate: float | None
    owner: str                  # worker id(s), or "-"
    heartbeat_age: int | None
    worker_status: str
    note: str | None
    partitions: list[PartitionRow] = field(default_factory=list)


@dataclass
class Frame:
    at: float
    mirrors: list[MirrorRow]
    problems: list[str]         # links that could not be described, a failed refresh


class WatchModel:
    """Turns successive describe views into rows; keeps per partition what the next
    refresh needs (the previous destination end for the rate, the lag-in-seconds marks)."""

    def __init__(self):
        self.samples: dict[tuple[str, str, int], PartitionSample] = {}
        self.previous: dict[tuple[str, str, int], tuple[float, int]] = {}

    def update(self, view: dict, now: float) -> Frame:
        mirrors, problems = [], []
        for lv in view["links"]:
            if lv.get("error"):
                problems.append(f"link {lv['link']}: {lv['error']}")
                continue
            if not lv.get("source_available"):
                problems.append(f"link {lv['link']}: SOURCE_UNAVAILABLE: {lv.get('source_error')}")
            for m in lv["mirrors"]:
                mirrors.append(self._mirror(m, now))
        return Frame(now, mirrors, problems)

    def _mirror(self, m: dict, now: float) -> MirrorRow:
        parts = []
        for p in m["partitions"]:
            key = (m["link"], m["topic"], p["partition"])
            s = self.samples.setdefault(key, PartitionSample())
            dst = p["destination_log_end_offset"]
            s.note_offsets(now, p["source_last_stable_offset"], dst)
            rate = None
            prev = self.previous.get(key)
            if dst is not None:
                if prev is not None and now > prev[0]:
                    rate = max(0.0, (dst - prev[1]) / (now - prev[0]))
                self.previous[key] = (now, dst)
            parts.append(PartitionRow(p["partition"], p["lag"], s.lag_seconds(now) if p["lag"] is not None else None,
                                      rate, dst))
        w = m["worker"]
        rates = [p.rate for p in parts]
        secs = [p.lag_seconds for p in parts]
        note = m.get("copy_error") or m.get("reason") or m.get("source_error") or m.get("destination_error")
        return MirrorRow(
            link=m["link"], topic=m["topic"], status=m["status"], lag=m["lag"],
            lag_seconds=None if not parts or None in secs else max(secs),
            rate=None if not parts or None in rates else sum(rates),
            owner=", ".join(w.get("worker_ids") or []) or "-",
            heartbeat_age=w.get("seconds_since_heartbeat"), worker_status=w.get("status") or "",
            note=note, partitions=parts)


# ---------------------------------------------------------------- drawing

def _num(v) -> str:
    return "-" if v is None else f"{v:,}"


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    v = int(v)
    return f"{v}s" if v < 120 else f"{v // 60}m{v % 60:02d}s" if v < 7200 else f"{v // 3600}h{v // 60 % 60:02d}m"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}/s" if v >= 10 or v == 0 else f"{v:,.1f}/s"


def _age(m: MirrorRow) -> str:
    return "never" if m.heartbeat_age is None else f"{m.heartbeat_age}s ago"


def header(frame: Frame, interval: float, what: str, compact: bool) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(frame.at))
    if compact:
        return Text(f"{stamp} every {interval:g}s, Ctrl-C exits")
    return Text(f"kafka-mirrors {what} --watch  every {interval:g}s  {stamp}  Ctrl-C to exit")


def render(frame: Frame, width: int, height: int, interval: float, what: str = "describe"):
    """The screen for one refresh: a rich renderable."""
    compact = width < COMPACT_BELOW
    lines: list = [header(frame, interval, what, compact)]
    lines += [Text(f"! {p}") for p in frame.problems]
    if not frame.mirrors:
        lines.append(Text("no mirrors; run 'kafka-mirrors mirror create TOPIC --link LINK'"
                          if not frame.problems else "nothing to show"))
        return Group(*lines)
    # the rows that fit: every mirror, then partitions while the terminal has room
    budget = max(0, height - len(lines) - 3 - 2 * len(frame.mirrors))
    if compact:
        return Group(*lines, *_compact(frame, budget))
    return Group(*lines, _table(frame, budget))


def _partitions_shown(m: MirrorRow, budget: int) -> tuple[list[PartitionRow], int]:
    if len(m.partitions) <= 1:
        return [], budget  # the mirror's row says it all
    shown = m.partitions[:budget]
    return shown, budget - len(shown)


def _table(frame: Frame, budget: int) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False)
    for col, justify in (("MIRROR", "left"), ("PART", "right"), ("STATE", "left"), ("LAG", "right"),
                         ("LAG S", "right"), ("RATE", "right"), ("WORKER", "left"), ("HEARTBEAT", "right")):
        t.add_column(col, justify=justify, overflow="fold" if col in ("MIRROR", "WORKER") else "ellipsis",
                     no_wrap=col not in ("MIRROR", "WORKER"))
    for m in frame.mirrors:
        t.add_row(Text(f"{m.link}/{m.topic}"), "all", Text(m.status), _num(m.lag), _secs(m.lag_seconds),
                  _rate(m.rate), Text(m.owner), _age(m))
        if m.note:
            t.add_row(Text(f"  {m.note}"), "", "", "", "", "", "", "")
        shown, budget = _partitions_shown(m, budget)
        for p in shown:
            t.add_row("", str(p.partition), "", _num(p.lag), _secs(p.lag_seconds), _rate(p.rate), "", "")
        if len(m.partitions) > 1 and len(shown) < len(m.partitions):
            t.add_row(Text(f"  ({len(m.partitions) - len(shown)} more partitions)"), "", "", "", "", "", "", "")
    return t


def _compact(frame: Frame, budget: int) -> list[Text]:
    out = []
    for m in frame.mirrors:
        out.append(Text(f"{m.link}/{m.topic} {m.status}"))
        out.append(Text(f"  lag {_num(m.lag)} ({_secs(m.lag_seconds)}) {_rate(m.rate)} hb {_age(m)}"))
        if m.note:
            out.append(Text(f"  {m.note}"))
        shown, budget = _partitions_shown(m, budget)
        for p in shown:
            out.append(Text(f"  p{p.partition} lag {_num(p.lag)} {_rate(p.rate)}"))
        if len(m.partitions) > 1 and len(shown) < len(m.partitions):
            out.append(Text(f"  ({len(m.partitions) - len(shown)} more partitions)"))
    return out


# ---------------------------------------------------------------- the loop

def watch(app, registry, link: str | None, topic: str | None, interval: float,
          what: str = "describe") -> None:
    """Refresh until Ctrl-C, then return (the command exits 0). The first describe runs
    before anything is drawn, so a link or mirror that does not exist fails as describe
    does."""
    from rich.live import Live

    from kafka_mirrors.cli.describe import describe_links_view
    from kafka_mirrors.mirrors import DescribeClients

    clients = DescribeClients()
    model = WatchModel()
    console = app.out

    def frame() -> Frame:
        try:
            view = describe_links_view(registry, link, topic, clients)
        except KafkaMirrorsError as exc:
            # the clusters went away mid-watch: say so and keep watching
            return Frame(time.time(), [], [f"refresh failed: {exc}"])
        return model.update(view, time.time())

    def draw(f: Frame):
        return render(f, console.width, console.height, interval, what)

    try:
        first = model.update(describe_links_view(registry, link, topic, clients), time.time())
        if not console.is_terminal:
            # no terminal to redraw in: one frame after another
            f = first
            while True:
                console.print(draw(f))
                console.print()
                time.sleep(interval)
                f = frame()
        with Live(draw(first), console=console, auto_refresh=False, transient=False,
                  redirect_stderr=False, redirect_stdout=False) as live:
            next_at = time.monotonic() + interval
            while True:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = time.monotonic() + interval
                live.update(draw(frame()), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        clients.close()
