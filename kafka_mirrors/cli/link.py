"""`kafka-mirrors link ...`: named bindings between a source and a destination cluster.

Each command parses, calls one function of kafka_mirrors.links and renders the result
(text, or the documented JSON with --output json)."""
from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from kafka_mirrors import links as service
from kafka_mirrors.cli.application import Application, OutputFormat
from kafka_mirrors.cli.completion import complete_link_names
from kafka_mirrors.errors import UsageError
from kafka_mirrors.registry import LINK_OPTIONS, resolve_registry

app = typer.Typer(help="Create, list, describe, alter and delete cluster links.", no_args_is_help=True)

_OPTIONS_HELP = "\b\nLink options (--config KEY=VALUE):\n" + "\n".join(
    f"  {k:<36} {o.type:<8} default {o.default or chr(34) * 2:<6} {o.help}" for k, o in LINK_OPTIONS.items())

OUTPUT = typer.Option(OutputFormat.text, "--output", "-o", help="Output format (json is stable and documented).")
TIMEOUT = typer.Option(None, "--timeout", metavar="SECONDS", min=0.1,
                       help="Timeout of each cluster request [default: the link's request.timeout.s, 15].")


def _app(ctx: typer.Context) -> Application:
    return ctx.obj if isinstance(ctx.obj, Application) else Application()


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


@app.command("create", epilog=_OPTIONS_HELP)
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Link name (letters, digits, '.', '_', '-')."),
    source: str = typer.Option(..., "--source", metavar="BOOTSTRAP", help="Source cluster bootstrap servers."),
    destination: str = typer.Option(..., "--destination", metavar="BOOTSTRAP",
                                    help="Destination cluster bootstrap servers."),
    source_config: Optional[str] = typer.Option(
        None, "--source-config", metavar="FILE",
        help="Client properties of the source (Kafka's --command-config style, or librdkafka keys)."),
    destination_config: Optional[str] = typer.Option(None, "--destination-config", metavar="FILE",
                                                     help="Client properties of the destination."),
    source_setting: Optional[List[str]] = typer.Option(
        None, "--source-setting", metavar="KEY=VALUE",
        help="Inline client setting of the source (repeatable); values may be ${ENV_VAR} placeholders."),
    destination_setting: Optional[List[str]] = typer.Option(
        None, "--destination-setting", metavar="KEY=VALUE", help="Inline client setting of the destination."),
    config: Optional[List[str]] = typer.Option(None, "--config", "-c", metavar="KEY=VALUE",
                                               help="Link option (repeatable; see below)."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Record the link without contacting the clusters."),
    validate_only: bool = typer.Option(False, "--validate-only", help="Check everything, record nothing."),
    timeout: Optional[float] = TIMEOUT,
) -> None:
    """Create a link: contact both clusters (describe cluster) and record their IDs.

    \b
    Examples:
      kafka-mirrors link create dr --source src:9092 --destination dst:9092
      kafka-mirrors link create dr --source src:9093 --source-config /etc/kafka/admin.properties \\
          --destination dst:9092 --config mirror.topic.prefix=src.
      kafka-mirrors link create dr --source src:9092 --destination dst:9092 \\
          --destination-setting 'sasl.password=${DST_PASSWORD}' --validate-only
    """
    a = _app(ctx)
    if no_validate and validate_only:
        raise UsageError("--no-validate and --validate-only exclude each other")
    registry = resolve_registry(a)
    options = service.parse_options(config or [])
    src = service.cluster_spec(source, source_config, service.parse_pairs(source_setting or [], "--source-setting"),
                               "source")
    dst = service.cluster_spec(destination, destination_config,
                               service.parse_pairs(destination_setting or [], "--destination-setting"), "destination")
    link, notes = service.create_link(registry, name, src, dst, options, validate=not no_validate,
                                      validate_only=validate_only, timeout=timeout)
    for n in notes:
        a.warn(n)
    ids = (f" (source cluster ID {link.source_cluster_id}, destination cluster ID {link.destination_cluster_id})"
           if link.source_cluster_id else " (not validated)")
    verb = "link '{}' is valid; nothing recorded" if validate_only else "created link '{}'"
    a.print(verb.format(name) + ids)


@app.command("list")
def list_(
    ctx: typer.Context,
    check: bool = typer.Option(False, "--check", help="Also contact both clusters of every link."),
    output: OutputFormat = OUTPUT,
    timeout: Optional[float] = TIMEOUT,
) -> None:
    """List links: name, clusters, cluster IDs, number of mirrors ('?' if unknown).

    \b
    Examples:
      kafka-mirrors link list
      kafka-mirrors link list --check --output json
    """
    a = _app(ctx)
    view = service.list_view(resolve_registry(a), check=check, timeout=timeout)

    def text(v: dict) -> None:
        if not v["links"]:
            a.info("no links; create one with 'kafka-mirrors link create NAME --source ... --destination ...'")
            return
        cols = ["NAME", "SOURCE", "SOURCE CLUSTER ID", "DESTINATION", "DESTINATION CLUSTER ID", "MIRRORS"]
        if check:
            cols += ["SOURCE OK", "DESTINATION OK"]
        rows = []
        for r in v["links"]:
            row = [r["name"], r["source"]["bootstrap"], r["source"]["cluster_id"], r["destination"]["bootstrap"],
                   r["destination"]["cluster_id"], "?" if r["mirrors"] is None else r["mirrors"]]
            if check:
                row += ["yes" if r[s]["reachable"] else "NO" for s in ("source", "destination")]
            rows.append(row)
        a.table(cols, rows)

    a.render(output, view, text)


@app.command("describe")
def describe(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Link name.", autocompletion=complete_link_names),
    output: OutputFormat = OUTPUT,
    timeout: Optional[float] = TIMEOUT,
) -> None:
    """Show a link: clusters and their reachability, settings (secrets redacted), options, mirrors.

    \b
    Examples:
      kafka-mirrors link describe dr
      kafka-mirrors link describe dr --output json
    """
    a = _app(ctx)
    view = service.describe_view(resolve_registry(a), name, timeout=timeout)

    def text(v: dict) -> None:
        a.print(f"link {v['name']} (created {v['created_at']})")
        for side in ("source", "destination"):
            s = v[side]
            state = "reachable" if s["reachable"] else f"UNREACHABLE: {s['error']}"
            a.print(f"{side + ':':<13} {s['bootstrap']}  cluster ID {s['cluster_id'] or '-'}  {state}")
            if s["cluster_id_matches"] is False:
                a.print(f"  WARNING: now answers with cluster ID {s['current_cluster_id']}, not the one recorded")
            if s["config_file"]:
                a.print(f"  config file  {s['config_file']}")
            for k, val in sorted(s["config"].items()):
                a.print(f"  {k} = {val}")
        a.print("options:")
        for k, val in v["effective_options"].items():
            shown = ",".join(val) if isinstance(val, list) else json.dumps(val) if not isinstance(val, str) else val
            shown = shown if shown != "" else '""'
            mark = "" if k in v["options"] else "  (default)"
            a.print(f"  {k} = {shown}{mark}")
        if v["mirrors"] is None:
            a.print(f"mirrors: ? ({v['mirrors_error']})")
        elif not v["mirrors"]:
            a.print("mirrors: none")
        else:
            a.print(f"mirrors: {len(v['mirrors'])}")
            a.table(["TOPIC", "STATE"], [[m.get("topic"), m.get("state")] for m in v["mirrors"]])

    a.render(output, view, text)


@app.command("alter")
def alter(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Link name.", autocompletion=complete_link_names),
    config: Optional[List[str]] = typer.Option(None, "--config", "-c", metavar="KEY=VALUE",
                                               help="Set a link option (repeatable)."),
    unset: Optional[List[str]] = typer.Option(None, "--unset", metavar="KEY",
                                              help="Return a link option to its default (repeatable)."),
) -> None:
    """Change link options.

    \b
    Examples:
      kafka-mirrors link alter dr --config consumer.offset.sync.ms=10000
      kafka-mirrors link alter dr --unset mirror.topic.prefix
    """
    a = _app(ctx)
    options = service.parse_pairs(config or [], "--config")
    link = service.alter_link(resolve_registry(a), name, options, list(unset or []))
    changes = [f"{k}={v}" for k, v in options.items()] + [f"{k} unset" for k in unset or []]
    a.print(f"altered link '{link.name}': " + ", ".join(changes))


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Link name.", autocompletion=complete_link_names),
    force: bool = typer.Option(False, "--force", help="Delete even with active or paused mirrors, or when the "
                                                      "destination cannot be checked."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    timeout: Optional[float] = TIMEOUT,
) -> None:
    """Delete a link from the registry (topics and data on the clusters are left alone).

    \b
    Examples:
      kafka-mirrors link delete dr
      kafka-mirrors link delete dr --yes
    """
    a = _app(ctx)
    if not yes and not _stdin_is_terminal():
        # a runbook must not hang on a prompt nobody can answer
        raise UsageError(f"link '{name}' not deleted: confirmation needed but there is no terminal",
                         "pass --yes")

    def confirm(link, blocking) -> bool:
        if yes:
            return True
        return typer.confirm(f"Delete link '{link.name}' ({link.source.bootstrap} -> {link.destination.bootstrap})?",
                             default=False, err=True)

    _, notes = service.delete_link(resolve_registry(a), name, force, confirm, timeout=timeout)
    for n in notes:
        a.warn(n)
    a.print(f"deleted link '{name}'")
