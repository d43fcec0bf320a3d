"""`kafka-mirrors describe`: every mirror of every link (or of one link) with its offsets
on both clusters, derived lag, fillers, offsets lost, state and worker heartbeat; with
`--check`, exit 1 when a mirror is FAILED or lags more than --max-lag (CI smoke checks).

The text renderer and the check here are shared with `mirror describe`. Across links,
each link is described on its own: one whose cluster cannot be reached becomes an error
row and the others still print."""
from __future__ import annotations

import time
from typing import Optional

import typer

from kafka_mirrors.cli.application import Application, OutputFormat
from kafka_mirrors.cli.completion import complete_link_names


def describe_links_view(registry, link_name: str | None, topic: str | None = None, clients=None) -> dict:
    """The describe view of one link, or of every link with each described on its own: a
    link that cannot be described (its destination unreachable, its settings unusable)
    gets a row with `error` set and no mirrors, so the others still show. Every row has
    `error` (null when described). `topic` (with `link_name`) narrows it to one mirror;
    `clients` (mirrors.DescribeClients) keeps the clients for the next call."""
    from kafka_mirrors.errors import KafkaMirrorsError
    from kafka_mirrors.mirrors import describe_view
    keep = {"clients": clients} if clients is not None else {}
    if link_name:
        return describe_view(registry, link_name, topic, **keep)
    now, rows = time.time(), []
    for name in sorted(registry.links()):
        try:
            rows.extend(describe_view(registry, name, now=now, **keep)["links"])
        except KafkaMirrorsError as exc:
            rows.append({"link": name, "error": str(exc), "source_available": None, "source_error": None,
                         "consumer_offset_sync": None, "mirrors": []})
    return {"links": rows}


def link_problems(view: dict) -> list[str]:
    """One line per link that could not be described."""
    return [f"link '{lv['link']}' could not be described: {lv['error']}"
            for lv in view["links"] if lv.get("error")]


def render_text(app: Application, view: dict) -> None:
    for link in view["links"]:
        if link.get("error"):
            app.print(f"link {link['link']} (ERROR: {link['error']})")
            continue
        where = "source reachable" if link["source_available"] else f"SOURCE_UNAVAILABLE: {link['source_error']}"
        app.print(f"link {link['link']} ({where})")
        sync = link.get("consumer_offset_sync")
        if sync:
            app.print(f"  consumer offsets: last sync {max(0.0, time.time() - sync['at']):.0f} s ago: "
                      f"{sync.get('offsets_written', 0)} offset(s) written to {len(sync.get('groups') or {})} "
                      f"group(s), {len(sync.get('skipped') or {})} group(s) skipped, "
                      f"{len(sync.get('errors') or {})} failed")
        if not link["mirrors"]:
            app.print("  no mirrors; run 'kafka-mirrors mirror create TOPIC --link " + link["link"] + "'")
        for m in link["mirrors"]:
            lag = "unknown" if m["lag"] is None else str(m["lag"])
            app.print(f"mirror {m['topic']} (source topic {m['source_topic']}): {m['status']}, lag {lag}, "
                      f"fillers {m['fillers_written']}, offsets lost to source retention "
                      f"{m['offsets_lost_to_source_retention']}; {m['worker']['status']}")
            if m["reason"]:
                app.print(f"  reason: {m['reason']}")
            if m.get("copy_error"):
                app.print(f"  copying backs off: {m['copy_error']}")
            if m["failed"]:
                f = m["failed"]
                app.print(f"  failed at partition {f.get('partition')} offset {f.get('offset')}: {f.get('message')}")
            if m.get("acls"):
                app.print("  ACLs kafka-mirrors keeps: " + "; ".join(
                    f"{a['permission']} {a['operation']} {a['principal']}" for a in m["acls"]))
            for err in (m["source_error"], m["destination_error"]):
                if err and err != link["source_error"]:
                    app.print(f"  {err}")
            app.table(
                ["PARTITION", "SOURCE LOG START", "SOURCE LAST STABLE", "SOURCE HIGH WATERMARK",
                 "DESTINATION LOG END", "LAG", "FILLERS", "LOST", "OWNER"],
                [[p["partition"], p["source_log_start_offset"], p["source_last_stable_offset"],
                  p["source_high_watermark"], p["destination_log_end_offset"], p["lag"],
                  p["fillers_written"], p["offsets_lost_to_source_retention"], _owner(p)]
                 for p in m["partitions"]])


def _owner(p: dict) -> str:
    """The worker copying a partition, with its heartbeat's age when it is not fresh."""
    if not p.get("owner"):
        return "-"
    if p.get("owner_live"):
        return p["owner"]
    return f"{p['owner']} (not seen for {p['owner_seconds_since_heartbeat']} s)"


def render_and_check(app: Application, view: dict, output: OutputFormat, check: bool, max_lag: int | None) -> None:
    from kafka_mirrors.mirrors import health_problems
    for lv in view["links"]:
        lv.setdefault("error", None)
    app.render(output, view, lambda v: render_text(app, v))
    problems = link_problems(view)
    if check:
        problems += health_problems(view, max_lag)
    if problems:
        # a link that could not be described fails the command, as in `mirror list`
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        app.abort(problems[0] + more, 1)


def check_options(check: bool, max_lag: int | None) -> None:
    from kafka_mirrors.errors import UsageError
    if max_lag is not None and not check:
        raise UsageError("--max-lag needs --check")
    if max_lag is not None and max_lag < 0:
        raise UsageError("--max-lag must be 0 or more")


def describe(
    ctx: typer.Context,
    link: Optional[str] = typer.Option(None, "--link", "-l", help="Only this link [default: all links].",
                                       autocompletion=complete_link_names),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", "-o", help="text or json."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when a mirror is FAILED (or lags more than --max-lag)."),
    max_lag: Optional[int] = typer.Option(None, "--max-lag", metavar="N",
                                          help="With --check: exit 1 when a mirror's lag exceeds N records."),
    watch: bool = typer.Option(False, "--watch", "-w", help="A live table (state, lag in records and seconds, "
                               "copy rate, worker, heartbeat) refreshed every --interval seconds; Ctrl-C exits."),
    interval: Optional[float] = typer.Option(None, "--interval", metavar="SECONDS",
                                             help="With --watch: seconds between refreshes [default: 2]."),
) -> None:
    """Every mirror with its offsets on both clusters, lag, state and worker heartbeat.

    Lag is the source's last stable offset minus the destination's log end offset. A
    link whose destination cannot be reached gets an error row, the other links still
    print, and the command exits 1.

    \b
    Examples:
      kafka-mirrors describe
      kafka-mirrors describe --link dr --output json
      kafka-mirrors describe --check --max-lag 1000
      kafka-mirrors describe --watch --interval 5
    """
    from kafka_mirrors.cli.watch import check_watch_options, watch as watch_
    from kafka_mirrors.registry import resolve_registry
    app: Application = ctx.obj
    check_options(check, max_lag)
    seconds = check_watch_options(watch, interval, output, check)
    if watch:
        return watch_(app, resolve_registry(app), link, None, seconds)
    view = describe_links_view(resolve_registry(app), link)
    render_and_check(app, view, output, check, max_lag)
