"""`kafka-mirrors promote|failover` (also under `mirror`) and `mirror pause|resume`: the
DR commands. Each parses, calls one function of kafka_mirrors.dr and renders one row per
topic; any failed topic makes the exit code 1. Promote and failover are destructive (the
mirror becomes an ordinary writable topic) and confirm in a terminal unless --yes."""
from __future__ import annotations

import math

from typing import List, Optional

import typer

from kafka_mirrors import dr as service
from kafka_mirrors.cli.application import Application, OutputFormat, topic_names
from kafka_mirrors.cli.completion import complete_link_names
from kafka_mirrors.cli.link import _stdin_is_terminal
from kafka_mirrors.errors import UsageError

TOPICS = typer.Argument(None, metavar="TOPIC...", help="Mirror topic(s).", callback=topic_names)
LINK = typer.Option(..., "--link", "-l", help="The mirrors' link.", autocompletion=complete_link_names)
ALL = typer.Option(False, "--all", help="Every mirror of the link that is in a state the command applies to.")
OUTPUT = typer.Option(OutputFormat.text, "--output", "-o", help="text or json.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def _app(ctx: typer.Context) -> Application:
    return ctx.obj if isinstance(ctx.obj, Application) else Application()


def _link(a: Application, name: str):
    from kafka_mirrors.registry import resolve_registry
    return resolve_registry(a).get(name)


def _confirm(verb: str, topics: List[str], all_: bool, link: str, yes: bool, what: str) -> None:
    if yes:
        return
    which = "every mirror" if all_ else ", ".join(topics)
    if not _stdin_is_terminal():
        # a runbook must not hang on a prompt nobody can answer
        raise UsageError(f"nothing {verb}: confirmation needed but there is no terminal", "pass --yes")
    if not typer.confirm(f"{what} {which} of link '{link}'? The mirror topics become ordinary writable "
                         f"topics and stop following the source", default=False, err=True):
        raise typer.Exit(1)


def _finish(a: Application, rows: list[dict], output: OutputFormat, text, view: dict | None = None) -> None:
    """Render the view (default {"topics": rows}), then its notes as warnings and one
    error line per failed row; exit 1 if any row failed."""
    view = {"topics": rows} if view is None else view
    a.render(output, view, text)
    for n in view.get("notes") or []:
        a.note(n)
    for r in rows:
        if not r["ok"]:
            a.err.print(f"error: {r['error']}")
    if any(not r["ok"] for r in rows):
        raise typer.Exit(1)
    if not rows:
        a.info("no mirror in a state this command applies to")


def _state_rows(a: Application, verb: str):
    def text(v: dict) -> None:
        for r in v["topics"]:
            if r["ok"]:
                a.print(f"{verb} {r['topic']}: {r['state']}")
    return text


def pause(ctx: typer.Context, topics: Optional[List[str]] = TOPICS, link: str = LINK, all_: bool = ALL,
          output: OutputFormat = OUTPUT) -> None:
    """Pause mirrors (ACTIVE -> PAUSED): the worker stops copying them.

    \b
    Examples:
      kafka-mirrors mirror pause orders --link dr
      kafka-mirrors mirror pause --all --link dr
    """
    a = _app(ctx)
    rows = service.pause(_link(a, link), list(topics or []), all_)
    _finish(a, rows, output, _state_rows(a, "paused"))


def resume(ctx: typer.Context, topics: Optional[List[str]] = TOPICS, link: str = LINK, all_: bool = ALL,
           output: OutputFormat = OUTPUT) -> None:
    """Resume paused mirrors (PAUSED -> ACTIVE): copying continues from the destination
    log end offset.

    \b
    Examples:
      kafka-mirrors mirror resume orders --link dr
      kafka-mirrors mirror resume --all --link dr
    """
    a = _app(ctx)
    rows = service.resume(_link(a, link), list(topics or []), all_)
    _finish(a, rows, output, _state_rows(a, "resumed"))


def _stopped_text(a: Application):
    def text(v: dict) -> None:
        table = []
        for r in v["topics"]:
            if not r["ok"]:
                continue
            for p, o in sorted(r["partitions"].items(), key=lambda kv: int(kv[0])):
                table.append([r["topic"], p, o["destination_log_end_offset"], o["last_known_source_offset"],
                              "unknown" if o["records_possibly_lost"] is None else o["records_possibly_lost"]])
        if table:
            a.table(["TOPIC", "PARTITION", "DESTINATION LOG END OFFSET", "LAST KNOWN SOURCE OFFSET",
                     "RECORDS POSSIBLY LOST"], table)
        for r in v["topics"]:
            if not r["ok"]:
                continue
            lost = r["records_possibly_lost"]
            # with no live worker the last reported source offset may be stale: a lower bound
            a.print(f"{r['topic']}: STOPPED ({r['reason']}); records possibly lost: "
                    + ("unknown" if lost is None else (str(lost) if r["workers"] else f"at least {lost}")))
            if lost is None:
                a.print("  the source offset of some partitions was never reported by a worker, so what "
                        "may be lost there is unknown")
            if not r["workers"]:
                a.print("  no live worker was copying it")
            for w in r["workers_not_acked"]:
                a.print(f"  WARNING: worker {w} did not acknowledge the stop; make sure it is stopped")
            acls = r.get("acls") or {}
            for acl in acls.get("deleted", []):
                a.print(f"  ACL deleted: {acl}")
            for acl in acls.get("created", []):
                a.print(f"  ACL created: {acl}")
    return text


def failover(ctx: typer.Context, topics: Optional[List[str]] = TOPICS, link: str = LINK, all_: bool = ALL,
             yes: bool = YES, output: OutputFormat = OUTPUT) -> None:
    """Disaster: stop mirrors now, whatever their lag, without contacting the source.

    Waits up to 4 s for the live workers to acknowledge, records per partition the
    destination log end offset and the last source offset a worker reported, and marks
    the mirrors STOPPED ("failed over"). Prints the records possibly lost (the RPO).

    \b
    Examples:
      kafka-mirrors failover orders --link dr
      kafka-mirrors failover --all --link dr --yes --output json
    """
    a = _app(ctx)
    _confirm("failed over", list(topics or []), all_, link, yes, "Fail over")
    rows = service.failover(_link(a, link), list(topics or []), all_)
    _finish(a, rows, output, _stopped_text(a))


def promote(ctx: typer.Context, topics: Optional[List[str]] = TOPICS, link: str = LINK, all_: bool = ALL,
            timeout: float = typer.Option(60.0, "--timeout", metavar="SECONDS", min=0.0,
                                          help="How long to wait for lag 0."),
            yes: bool = YES, output: OutputFormat = OUTPUT) -> None:
    """Planned switch-over: wait until the mirrors reach the source's last stable offset,
    stop the workers and mark them STOPPED ("promoted"). The source must be reachable;
    a mirror that cannot reach lag 0 within --timeout is left unchanged (exit 1).

    \b
    Examples:
      kafka-mirrors promote orders --link dr
      kafka-mirrors promote --all --link dr --timeout 300 --yes
    """
    a = _app(ctx)
    if not math.isfinite(timeout):
        raise UsageError(f"--timeout {timeout} must be a finite number of seconds")
    _confirm("promoted", list(topics or []), all_, link, yes, "Promote")
    rows = service.promote(_link(a, link), list(topics or []), all_, timeout=timeout)
    _finish(a, rows, output, _stopped_text(a))
