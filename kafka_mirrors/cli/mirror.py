"""`kafka-mirrors mirror ...`: create, list and describe the mirror topics of a link."""
from __future__ import annotations

from typing import List, Optional

import typer

from kafka_mirrors.cli.application import Application, OutputFormat, topic_names
from kafka_mirrors.cli.completion import complete_link_names
from kafka_mirrors.cli.describe import check_options, render_and_check

app = typer.Typer(help="Create, list, describe, pause, resume, promote and fail over mirror topics.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    topics: List[str] = typer.Argument(..., metavar="TOPIC...", help="Mirror name(s); the destination topic is "
                                       "the link's mirror.topic.prefix + TOPIC.", callback=topic_names),
    link: str = typer.Option(..., "--link", "-l", help="The link to mirror over.",
                             autocompletion=complete_link_names),
    source_topic: Optional[str] = typer.Option(None, "--source-topic", metavar="SRC",
                                               help="Source topic [default: TOPIC]; only with one TOPIC.",
                                               callback=topic_names),
    config: List[str] = typer.Option([], "--config", "-c", metavar="KEY=VALUE",
                                     help="Topic config for the mirror topic, over the source's (repeatable)."),
) -> None:
    """Create mirror topics on the destination with the source's partitions and configs,
    and record them ACTIVE; `kafka-mirrors run --link NAME` then copies them.

    Refuses (and changes nothing) when a source topic is missing or a destination
    topic of that name holds records.

    \b
    Examples:
      kafka-mirrors mirror create orders --link dr
      kafka-mirrors mirror create orders payments --link dr --config retention.ms=604800000
      kafka-mirrors mirror create orders-copy --source-topic orders --link dr
    """
    from kafka_mirrors.mirrors import create_mirrors
    from kafka_mirrors.registry import resolve_registry
    app_: Application = ctx.obj
    from kafka_mirrors.readonly import from_json
    from kafka_mirrors.names import check_topic
    notes: list[str] = []
    link_ = resolve_registry(app_).get(link)
    prefix = link_.option("mirror.topic.prefix") or ""
    if prefix:
        for t in topics:
            check_topic(prefix + t, f"mirror topic (mirror.topic.prefix '{prefix}' + TOPIC)")
    records = create_mirrors(link_, topics, source_topic, config, notes=notes)
    for rec in records:
        app_.print(f"created mirror {rec.topic} <- {rec.source_topic} on link {rec.link} "
                   f"({rec.partitions} partitions, {rec.state})")
        for acl in from_json(rec.acls):
            app_.print(f"  read-only: created ACL {acl}")
    for note in notes:
        app_.note(note)


@app.command("list")
def list_(
    ctx: typer.Context,
    link: Optional[str] = typer.Option(None, "--link", "-l", help="Only this link [default: all links].",
                                       autocompletion=complete_link_names),
    state: Optional[str] = typer.Option(None, "--state", help="Only mirrors in this state (ACTIVE, PAUSED, "
                                        "PENDING_STOPPED, STOPPED, FAILED)."),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", "-o", help="text or json."),
) -> None:
    """List mirror topics and their states, read from each link's destination cluster.

    \b
    Examples:
      kafka-mirrors mirror list
      kafka-mirrors mirror list --link dr --state FAILED --output json
    """
    from kafka_mirrors.mirrors import list_view
    from kafka_mirrors.registry import resolve_registry
    app_: Application = ctx.obj
    view = list_view(resolve_registry(app_), link, state)

    def text(v: dict) -> None:
        if v["mirrors"]:
            app_.table(["LINK", "TOPIC", "SOURCE TOPIC", "STATE", "PARTITIONS", "REASON"],
                       [[m["link"], m["topic"], m["source_topic"], m["state"], m["partitions"], m["reason"]]
                        for m in v["mirrors"]])
        elif not v["errors"]:
            app_.info("no mirrors; run 'kafka-mirrors mirror create TOPIC --link NAME'")

    app_.render(output, view, text)
    for e in view["errors"]:
        app_.warn(f"link '{e['link']}': {e['error']}")
    if view["errors"]:
        raise typer.Exit(1)


@app.command("describe")
def describe(
    ctx: typer.Context,
    topic: str = typer.Argument(..., metavar="TOPIC", help="The mirror (destination topic or mirror name).",
                                callback=topic_names),
    link: str = typer.Option(..., "--link", "-l", help="The mirror's link.", autocompletion=complete_link_names),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", "-o", help="text or json."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when the mirror is FAILED (or lags more than --max-lag)."),
    max_lag: Optional[int] = typer.Option(None, "--max-lag", metavar="N",
                                          help="With --check: exit 1 when the lag exceeds N records."),
    watch: bool = typer.Option(False, "--watch", "-w", help="A live table (state, lag in records and seconds, "
                               "copy rate, worker, heartbeat) refreshed every --interval seconds; Ctrl-C exits."),
    interval: Optional[float] = typer.Option(None, "--interval", metavar="SECONDS",
                                             help="With --watch: seconds between refreshes [default: 2]."),
) -> None:
    """One mirror per partition: source log start offset, last stable offset and high
    watermark, destination log end offset, lag, fillers, offsets lost, state, worker.

    \b
    Examples:
      kafka-mirrors mirror describe orders --link dr
      kafka-mirrors mirror describe orders --link dr --check --max-lag 0
      kafka-mirrors mirror describe orders --link dr --watch
    """
    from kafka_mirrors.cli.watch import check_watch_options, watch as watch_
    from kafka_mirrors.mirrors import describe_view
    from kafka_mirrors.registry import resolve_registry
    app_: Application = ctx.obj
    check_options(check, max_lag)
    seconds = check_watch_options(watch, interval, output, check)
    if watch:
        return watch_(app_, resolve_registry(app_), link, topic, seconds, what="mirror describe")
    view = describe_view(resolve_registry(app_), link, topic)
    render_and_check(app_, view, output, check, max_lag)


# DR commands live in their own module; they are also top-level (promote, failover).
from kafka_mirrors.cli import dr as _dr  # noqa: E402

app.command("pause")(_dr.pause)
app.command("resume")(_dr.resume)
app.command("promote")(_dr.promote)
app.command("failover")(_dr.failover)

# fail back (failback.py), also top-level
from kafka_mirrors.cli import failback as _failback  # noqa: E402

app.command("reverse-and-start")(_failback.reverse_and_start)
app.command("reverse-and-pause")(_failback.reverse_and_pause)
app.command("truncate-and-restore")(_failback.truncate_and_restore)
