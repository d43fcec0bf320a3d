"""`kafka-mirrors reverse-and-start|reverse-and-pause|truncate-and-restore` (also under
`mirror`): fail back after a promote or a failover. Each parses, calls one function of
kafka_mirrors.failback and renders one row per topic; any failed topic makes the exit code
1. They change what the old source cluster holds, so they confirm in a terminal unless
--yes (truncate-and-restore deletes and re-creates topics)."""
from __future__ import annotations

from typing import List, Optional

import typer

from kafka_mirrors import failback as service
from kafka_mirrors.cli.application import Application, OutputFormat, topic_names
from kafka_mirrors.cli.completion import complete_link_names
from kafka_mirrors.cli.dr import _finish as finish_rows
from kafka_mirrors.cli.link import _stdin_is_terminal
from kafka_mirrors.errors import UsageError

TOPICS = typer.Argument(None, metavar="TOPIC...", help="Mirror topic(s) of the forward link (promoted or failed over).",
                        callback=topic_names)
LINK = typer.Option(..., "--link", "-l", help="The forward link (old source -> new primary).",
                    autocompletion=complete_link_names)
REVERSE = typer.Option(None, "--reverse-link", metavar="NAME",
                       help="The link new primary -> old source [default: LINK-reverse; created if missing].")
ALL = typer.Option(False, "--all", help="Every mirror of the link the command applies to.")
OUTPUT = typer.Option(OutputFormat.text, "--output", "-o", help="text or json.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def _app(ctx: typer.Context) -> Application:
    return ctx.obj if isinstance(ctx.obj, Application) else Application()


def _registry(a: Application):
    from kafka_mirrors.registry import resolve_registry
    return resolve_registry(a)


def _confirm(verb: str, topics: List[str], all_: bool, link: str, yes: bool, question: str) -> None:
    if yes:
        return
    if not _stdin_is_terminal():
        # a runbook must not hang on a prompt nobody can answer
        raise UsageError(f"nothing done ({verb}): confirmation needed but there is no terminal", "pass --yes")
    which = "every stopped mirror" if all_ else ", ".join(topics)
    if not typer.confirm(question.format(which=which, link=link), default=False, err=True):
        raise typer.Exit(1)


def _finish(a: Application, view: dict, output: OutputFormat) -> None:
    def text(v: dict) -> None:
        rev = v["reverse_link"]
        if rev["created"]:
            a.print(f"created reverse link '{rev['name']}' ({rev['source']} -> {rev['destination']})")
        table = []
        for r in v["topics"]:
            if not r["ok"]:
                continue
            for p, o in sorted(r["partitions"].items(), key=lambda kv: int(kv[0])):
                row = [r["mirror_topic"], p, o["stop_offset"], o["old_log_end_offset"],
                       o["new_primary_log_end_offset"]]
                if "records_saved" in o:
                    row.append(o["records_saved"])
                table.append(row)
        if table:
            cols = ["TOPIC", "PARTITION", "STOP OFFSET", "OLD LOG END OFFSET", "NEW PRIMARY LOG END OFFSET"]
            if len(table[0]) > len(cols):
                cols.append("RECORDS SAVED")
            a.table(cols, table)
        for r in v["topics"]:
            if not r["ok"]:
                continue
            if r.get("side_topic"):
                a.print(f"{r['mirror_topic']}: {r['records_saved']} record(s) past the stop offsets saved to "
                        f"'{r['side_topic']}'")
            elif "side_topic" in r:
                a.print(f"{r['mirror_topic']}: nothing past the stop offsets; no side topic")
            how = ("re-created empty; the worker copies it from the new primary's log start offset"
                   if r["action"] == "re-created" else "continuing at its log end offset; no record is copied again")
            a.print(f"{r['mirror_topic']}: now a mirror of '{r['source_topic']}' on link '{r['reverse_link']}' "
                    f"({r['state']}), {how}")
        for n in v["next"]:
            a.print(f"next: {n}")

    finish_rows(a, view["topics"], output, text, view)


_REVERSE_Q = ("Make {which} of link '{link}' mirrors again, the other way round? The old source topics stop "
              "taking writes of their own")


def reverse_and_start(ctx: typer.Context, topics: Optional[List[str]] = TOPICS, link: str = LINK,
                      reverse_link: Optional[str] = REVERSE, all_: bool = ALL, yes: bool = YES,
                      output: OutputFormat = OUTPUT) -> None:
    """After a promote: make each old source topic a mirror of the new primary (ACTIVE on
    the reverse link), continuing at its log end offset. No record is copied again.

    The old topic must be exactly a prefix of the new primary's: per partition its log
    end offset equals the offset recorded at promote. If not, nothing changes for that
    topic; use truncate-and-restore. Then run the reverse link's worker.

    \b
    Examples:
      kafka-mirrors reverse-and-start orders --link dr --yes
      kafka-mirrors reverse-and-start --all --link dr --reverse-link dr-back --yes
      kafka-mirrors run --link dr-reverse
    """
    a = _app(ctx)
    _confirm("reverse-and-start", list(topics or []), all_, link, yes, _REVERSE_Q)
    view = service.reverse(_registry(a), link, list(topics or []), all_, reverse_link, start=True)
    _finish(a, view, output)


def reverse_and_pause(ctx: typer.Context, topics: Optional[List[str]] = TOPICS, link: str = LINK,
                      reverse_link: Optional[str] = REVERSE, all_: bool = ALL, yes: bool = YES,
                      output: OutputFormat = OUTPUT) -> None:
    """As reverse-and-start, but the reverse mirrors are recorded PAUSED: nothing is
    copied until 'kafka-mirrors mirror resume TOPIC --link REVERSE'.

    \b
    Examples:
      kafka-mirrors reverse-and-pause orders --link dr --yes
      kafka-mirrors mirror resume orders --link dr-reverse
    """
    a = _app(ctx)
    _confirm("reverse-and-pause", list(topics or []), all_, link, yes, _REVERSE_Q)
    view = service.reverse(_registry(a), link, list(topics or []), all_, reverse_link, start=False)
    _finish(a, view, output)


def truncate_and_restore(ctx: typer.Context, topics: Optional[List[str]] = TOPICS, link: str = LINK,
                         reverse_link: Optional[str] = REVERSE, all_: bool = ALL, yes: bool = YES,
                         output: OutputFormat = OUTPUT) -> None:
    """After a failover: save the records each old source topic holds past the failover
    point to a side topic '<topic>.diverged-<UTC time>' on the old source cluster, then
    make the topic a mirror of the new primary on the reverse link.

    Kafka cannot cut a log's tail: a topic with such records is DELETED and re-created
    empty (same partitions and configs), and the worker copies it again from the new
    primary. A topic without them is kept and continues at its log end offset.

    \b
    Examples:
      kafka-mirrors truncate-and-restore orders --link dr
      kafka-mirrors truncate-and-restore --all --link dr --yes --output json
      kafka-mirrors run --link dr-reverse
    """
    a = _app(ctx)
    _confirm("truncate-and-restore", list(topics or []), all_, link, yes,
             "Save the divergent records of {which} of link '{link}' to side topics, then DELETE and re-create "
             "those topics on the old source cluster as mirrors of the new primary?")
    view = service.truncate_and_restore(_registry(a), link, list(topics or []), all_, reverse_link)
    _finish(a, view, output)
