"""Confluent-style flags, so runbooks written for Confluent Platform's `kafka-mirrors` run
unchanged:

    kafka-mirrors --create --mirror-topic T --link L [--source-topic S] [--dry-run] --bootstrap-server DEST
    kafka-mirrors --list [--link L] [--output json] --bootstrap-server DEST
    kafka-mirrors --describe [--topics T,U | --links L[,M]] [--pending-stopped-only] [--output json] ...
    kafka-mirrors --promote|--failover [--dry-run] [--output json] (--topics T,U | --link L) --bootstrap-server DEST
    kafka-mirrors --pause|--unpause (--topics T,U | --link L) --bootstrap-server DEST
    kafka-mirrors --reverse-and-start|--reverse-and-pause|--truncate-and-restore (--topics T,U | --link L) ...

The entry point (cli/__init__.py) hands every argv whose first flag is not one of the
native root options here. `--bootstrap-server` is always the DESTINATION, as in Confluent's
tool: it must name the link's destination (same host:port, or another broker of the same
cluster, compared by cluster ID through `--command-config`), or the command fails saying
which address is right, having changed nothing. (truncate-and-restore also accepts the
link's source: Confluent runs it against the cluster whose topic is truncated, our old
source.) With `--topics` and no `--link`, the link is found among the registry's links
whose destination that is. With `--link` and no
`--topics`, the action applies to every mirror of the link.

Nothing here prompts: Confluent's tool does not, and runbooks must run unattended (our
truncate-and-restore saves the records it removes to a side topic first). Each action
maps onto one service function; batch actions print one row per topic and exit 1 if any
topic failed. `--dry-run` (create, promote, failover) checks everything and prints what
would be done, writing nothing. `--output json` (create, list, describe, promote,
failover) prints one JSON array with the field names of Confluent's REST and CLI JSON
(`link_name`, `mirror_topic_name`, `mirror_status`, `mirror_lags`, ...), documented in
docs/runbook.md. Exit codes as everywhere: 0 ok, 1 failed, 2 usage.
"""
from __future__ import annotations

import math

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from kafka_mirrors.cli.application import Application
from kafka_mirrors.errors import KafkaMirrorsError, NotFoundError, UsageError
from kafka_mirrors.names import check_bootstrap, check_topic

ACTIONS = ("--create", "--list", "--describe", "--promote", "--failover", "--pause", "--unpause",
           "--reverse-and-start", "--reverse-and-pause", "--truncate-and-restore")
# actions that act on mirrors named by --topics or on every mirror of --link
BATCH = ("--promote", "--failover", "--pause", "--unpause", "--reverse-and-start", "--reverse-and-pause",
         "--truncate-and-restore")
DRY_RUN = ("--create", "--promote", "--failover")
JSON_OUTPUT = ("--create", "--list", "--describe", "--promote", "--failover")
# the root options of the native command line: argv starting with one of these stays native
NATIVE_ROOT = ("--help", "-h", "--version", "--install-completion", "--show-completion")
HELP_HINT = "the Confluent-style flags are listed by 'kafka-mirrors --list --help'"
# how long the cluster-ID comparison may wait for the --bootstrap-server address
PROBE_TIMEOUT_S = 10.0

HELP = """\
Usage (Confluent-style flags; --bootstrap-server is the DESTINATION cluster):
  kafka-mirrors --create --mirror-topic T --link L [--source-topic S] [--config K=V ...] [--dry-run]
                --bootstrap-server DEST
  kafka-mirrors --list [--link L] [--output json] --bootstrap-server DEST
  kafka-mirrors --describe [--topics T,U | --links L,M] [--pending-stopped-only] [--output json]
                --bootstrap-server DEST
  kafka-mirrors --promote (--topics T,U | --link L) [--timeout SECONDS] [--dry-run] [--output json]
                --bootstrap-server DEST
  kafka-mirrors --failover (--topics T,U | --link L) [--dry-run] [--output json] --bootstrap-server DEST
  kafka-mirrors --pause | --unpause (--topics T,U | --link L) --bootstrap-server DEST
  kafka-mirrors --reverse-and-start | --reverse-and-pause (--topics T,U | --link L) --bootstrap-server DEST
  kafka-mirrors --truncate-and-restore (--topics T,U | --link L) --bootstrap-server OLD_SOURCE|DEST

Options:
  --bootstrap-server HOST:PORT[,...]  the link's destination (or another broker of that cluster)
  --command-config FILE               client properties for that cluster (Kafka's format)
  --topics T,U                        mirror topics (names on the destination)
  --link L / --links L,M              the cluster link(s); with --link alone an action applies
                                      to every mirror of the link
  --timeout SECONDS                   how long promote waits for lag 0 [default: 60]
  --reverse-link R                    the link from the new primary back to the old source
                                      [default: L-reverse, created when missing]
  --dry-run                           check and print what would be done; change nothing
  --output text|json                  json: one array, Confluent's field names [default: text]
  --registry FILE                     link registry [default: $KAFKA_MIRRORS_REGISTRY]
  --yes                               accepted for symmetry; nothing in this mode prompts

Promote and failover return when the workers have stopped (no "scheduled" state to poll).
--reverse-and-start/--reverse-and-pause promote a mirror that is still one, then make the
old source topic a mirror over the reverse link; --truncate-and-restore (after a failover)
first saves the old topic's records past the failover point to a side topic.
Links are made with 'kafka-cluster-links --create' or 'kafka-mirrors link create'; the
native commands are listed by
'kafka-mirrors --help'. Exit codes: 0 ok, 1 failed (or any topic of a batch failed), 2 usage.
"""


# ---------------------------------------------------------------- routing and parsing

def is_confluent_style(args: list[str]) -> bool:
    """True when argv belongs to this parser: its first token (after the global
    `--registry FILE`) is a flag other than the native root options. Native command lines
    always name a subcommand first."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--registry":
            i += 2
            continue
        if a.startswith("--registry="):
            i += 1
            continue
        return a.startswith("-") and a not in NATIVE_ROOT
    return False


class _Parser(argparse.ArgumentParser):
    hint = HELP_HINT

    def error(self, message: str):  # argparse would print usage and exit; we raise one line
        if message.startswith("argument "):
            flag, _, what = message[len("argument "):].partition(": ")
            flag = flag.split("/")[0]
            if "expected one argument" in what:
                raise UsageError(f"{flag} needs a value", self.hint)
            raise UsageError(f"{flag}: {what}", self.hint)
        raise UsageError(message, self.hint)


def _parser() -> _Parser:
    p = _Parser(prog="kafka-mirrors", add_help=False, allow_abbrev=False)
    for a in ACTIONS:
        p.add_argument(a, dest="act_" + a[2:].replace("-", "_"), action="store_true")
    for flag in ("--bootstrap-server", "--command-config", "--topics", "--link", "--links", "--mirror-topic",
                 "--source-topic", "--timeout", "--registry", "--reverse-link", "--output"):
        p.add_argument(flag, default=None)
    p.add_argument("--config", action="append", default=[])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--pending-stopped-only", action="store_true")
    p.add_argument("--yes", "-y", action="store_true")
    p.add_argument("--help", "-h", action="store_true")
    return p


@dataclass
class Request:
    action: str                          # one of ACTIONS
    bootstrap: str
    command_config: str | None = None
    topics: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    mirror_topic: str | None = None
    source_topic: str | None = None
    pending_stopped_only: bool = False
    timeout: float = 60.0
    registry: str | None = None
    reverse_link: str | None = None
    configs: list[str] = field(default_factory=list)
    dry_run: bool = False
    output: str = "text"

    @property
    def sides(self) -> tuple[str, ...]:
        """Which cluster of the link --bootstrap-server may name. Confluent runs
        truncate-and-restore against the cluster whose topic is truncated: our old source."""
        return ("destination", "source") if self.action == "--truncate-and-restore" else ("destination",)


def _split(value: str | None, flag: str) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise UsageError(f"{flag} '{value}' holds an empty name", f"e.g. {flag} a,b")
    out = []
    for v in items:
        if v not in out:
            out.append(v)
    return out


def parse(args: list[str]) -> Request | None:
    """The request argv describes, every rule checked; None when help was asked for."""
    ns, extra = _parser().parse_known_args(args)
    if ns.help:
        return None
    if extra:
        bad = extra[0]
        if bad.startswith("-"):
            raise UsageError(f"unknown flag '{bad.split('=')[0]}'", HELP_HINT)
        raise UsageError(f"unexpected argument '{bad}'", "name mirror topics with --topics a,b")
    actions = [a for a in ACTIONS if getattr(ns, "act_" + a[2:].replace("-", "_"))]
    if not actions:
        raise UsageError("no action flag given", f"give one of {', '.join(ACTIONS)}")
    if len(actions) > 1:
        raise UsageError(f"give one action flag, not {' and '.join(actions)}")
    action = actions[0]
    if not ns.bootstrap_server or not ns.bootstrap_server.strip():
        raise UsageError(f"{action} needs --bootstrap-server (the destination cluster)",
                         "e.g. --bootstrap-server dst:9092")
    check_bootstrap(ns.bootstrap_server.strip(), "--bootstrap-server")
    links = _split(ns.link, "--link") + [x for x in _split(ns.links, "--links") if x not in _split(ns.link, "--link")]
    for flag, names in (("--topics", _split(ns.topics, "--topics")), ("--mirror-topic", [ns.mirror_topic]),
                        ("--source-topic", [ns.source_topic])):
        for name in names:
            if name is not None:
                check_topic(name, flag)
    req = Request(action=action, bootstrap=ns.bootstrap_server.strip(), command_config=ns.command_config,
                  topics=_split(ns.topics, "--topics"), links=links, mirror_topic=ns.mirror_topic,
                  source_topic=ns.source_topic, pending_stopped_only=ns.pending_stopped_only,
                  registry=ns.registry, reverse_link=ns.reverse_link, configs=list(ns.config),
                  dry_run=ns.dry_run, output=ns.output or "text")

    def only(flag: str, value, allowed: tuple[str, ...]) -> None:
        if value and action not in allowed:
            raise UsageError(f"{flag} does not go with {action}", f"it goes with {' '.join(allowed)}")

    only("--mirror-topic", ns.mirror_topic, ("--create",))
    only("--source-topic", ns.source_topic, ("--create",))
    only("--config", ns.config, ("--create",))
    only("--pending-stopped-only", ns.pending_stopped_only, ("--describe",))
    only("--timeout", ns.timeout, ("--promote", "--reverse-and-start", "--reverse-and-pause"))
    only("--reverse-link", ns.reverse_link, ("--reverse-and-start", "--reverse-and-pause", "--truncate-and-restore"))
    only("--topics", req.topics, ("--describe",) + BATCH)
    only("--dry-run", ns.dry_run, DRY_RUN)
    only("--output", ns.output, JSON_OUTPUT)
    if req.output not in ("text", "json"):
        raise UsageError(f"--output '{req.output}' is not a format", "use --output text or --output json")
    if ns.timeout is not None:
        try:
            req.timeout = float(ns.timeout)
        except ValueError:
            raise UsageError(f"--timeout '{ns.timeout}' is not a number of seconds") from None
        if not math.isfinite(req.timeout) or req.timeout < 0:
            raise UsageError(f"--timeout '{ns.timeout}' must be a finite number of seconds, 0 or more")
    if action == "--create":
        if not ns.mirror_topic:
            raise UsageError("--create needs --mirror-topic T", "e.g. --create --mirror-topic orders --link dr")
        if len(links) != 1:
            raise UsageError("--create needs exactly one --link L")
    elif action in BATCH:
        if not req.topics and not links:
            raise UsageError(f"{action} needs --topics T,U or --link L",
                             "--link alone applies it to every mirror of the link")
        if len(links) > 1:
            raise UsageError(f"{action} takes one --link, not {', '.join(links)}")
    elif action == "--list" and len(links) > 1:
        raise UsageError("--list takes one --link")
    return req


# ---------------------------------------------------------------- the destination check

def _addresses(bootstrap: str) -> set[str]:
    out = set()
    for a in bootstrap.split(","):
        a = a.strip().lower()
        if "://" in a:
            a = a.split("://", 1)[1]
        if a:
            out.add(a)
    return out


def _probe_cluster_id(conf: dict, label: str, timeout: float) -> str:
    from kafka_mirrors.kafka.admin import Admin
    return Admin(conf, label, timeout).probe_cluster_id()


def _spec(link, side: str):
    return link.destination if side == "destination" else link.source


def _recorded_id(link, side: str) -> str | None:
    return link.destination_cluster_id if side == "destination" else link.source_cluster_id


class Destination:
    """The cluster --bootstrap-server names, with the --command-config settings; tells
    whether it is a given side of a link (same address, else same cluster ID)."""

    def __init__(self, bootstrap: str, command_config: str | None):
        from kafka_mirrors import clientconfig
        self.bootstrap = bootstrap
        self.addresses = _addresses(bootstrap)
        self.settings: dict | None = None
        if command_config:
            # must exist and parse, like the --command-config of Kafka's own tools
            props = clientconfig.load_properties(Path(command_config).expanduser())
            props = clientconfig.resolve_placeholders(props, f"--command-config {command_config}")
            self.settings = clientconfig.translate(props)
        self._ids: dict[str, str | None] = {}
        self.probe_error: str | None = None

    def _key(self, link, side: str) -> str:
        return "command-config" if self.settings is not None else f"{link.name}:{side}"

    def cluster_id(self, link, side: str = "destination") -> str | None:
        """The cluster ID behind --bootstrap-server (None when it cannot be reached). With
        no --command-config, the client settings of that side of the link are used."""
        key = self._key(link, side)
        if key not in self._ids:
            if self.settings is not None:
                conf = dict(self.settings)
            else:
                conf = {k: v for k, v in _spec(link, side).client_config().items() if k != "bootstrap.servers"}
            conf["bootstrap.servers"] = self.bootstrap
            try:
                self._ids[key] = _probe_cluster_id(conf, f"cluster {self.bootstrap}",
                                                   min(PROBE_TIMEOUT_S, float(link.option("request.timeout.s"))))
            except KafkaMirrorsError as exc:
                self._ids[key], self.probe_error = None, str(exc)
        return self._ids[key]

    def same_addresses(self, link, side: str = "destination") -> bool:
        return bool(self.addresses & _addresses(_spec(link, side).bootstrap))

    def is_side(self, link, side: str) -> bool:
        if self.same_addresses(link, side):
            return True
        cid = self.cluster_id(link, side)
        if cid is None:
            return False
        recorded = _recorded_id(link, side)
        if recorded is None:  # a link recorded with --no-validate: ask that cluster
            spec = _spec(link, side)
            try:
                recorded = _probe_cluster_id(spec.client_config(), f"{side} cluster {spec.bootstrap}",
                                             float(link.option("request.timeout.s")))
            except KafkaMirrorsError:
                return False
        return cid == recorded

    def matches(self, link, sides: tuple[str, ...] = ("destination",)) -> bool:
        # addresses first: a cluster-ID probe costs a round trip (or a timeout)
        return any(self.same_addresses(link, s) for s in sides) or any(self.is_side(link, s) for s in sides)

    def mismatch(self, link, sides: tuple[str, ...] = ("destination",)) -> UsageError:
        if sides == ("destination",):
            where = ""
            if self.same_addresses(link, "source") or (
                    link.source_cluster_id and self._ids.get(self._key(link, "destination")) == link.source_cluster_id):
                where = ", it is the link's source"
            elif self.probe_error:
                where = f" (and comparing cluster IDs failed: {self.probe_error})"
            return UsageError(
                f"--bootstrap-server {self.bootstrap} is not the destination of link '{link.name}' "
                f"({link.destination.bootstrap}){where}; nothing changed",
                f"in the Confluent-style flags --bootstrap-server names the destination: pass "
                f"--bootstrap-server {link.destination.bootstrap}")
        why = f" (comparing cluster IDs failed: {self.probe_error})" if self.probe_error else ""
        return UsageError(
            f"--bootstrap-server {self.bootstrap} is neither the destination of link '{link.name}' "
            f"({link.destination.bootstrap}) nor its source ({link.source.bootstrap}){why}; nothing changed",
            f"pass --bootstrap-server {link.source.bootstrap} (the old source, where the topic is restored)")


# ---------------------------------------------------------------- links and mirrors

def _mirrors_of(registry, link) -> dict[str, dict]:
    """{mirror topic: list row} of one link, read from its destination's state store."""
    from kafka_mirrors import mirrors
    view = mirrors.list_view(registry, link.name)
    return {m["topic"]: m for m in view["mirrors"]}


def _checked_link(registry, dest: Destination, name: str, sides: tuple[str, ...] = ("destination",)):
    link = registry.get(name)
    if not dest.matches(link, sides):
        raise dest.mismatch(link, sides)
    return link


def _links_on(registry, dest: Destination, sides: tuple[str, ...] = ("destination",)) -> list:
    """Every registry link whose destination (or, for truncate-and-restore, source) is
    the --bootstrap-server cluster."""
    all_links = registry.links()
    links = [all_links[n] for n in sorted(all_links)]
    by_address = [lk for lk in links if any(dest.same_addresses(lk, s) for s in sides)]
    if by_address:
        return by_address
    # another broker of the cluster: compare with the cluster IDs recorded at link creation
    found = []
    for lk in links:
        if any(_recorded_id(lk, s) and dest.cluster_id(lk, s) == _recorded_id(lk, s) for s in sides):
            found.append(lk)
    if not found:
        why = f" (comparing cluster IDs failed: {dest.probe_error})" if dest.probe_error else ""
        raise UsageError(f"no link has destination {dest.bootstrap}{why}",
                         "run 'kafka-mirrors link list'; in the Confluent-style flags --bootstrap-server "
                         "names the destination cluster")
    return found


def _resolve(name: str, link, mirrors: dict[str, dict]) -> str | None:
    if name in mirrors:
        return name
    prefixed = (link.option("mirror.topic.prefix") or "") + name
    return prefixed if prefixed in mirrors else None


def _targets(registry, dest: Destination, req: Request) -> list[tuple[object, list[str], dict[str, dict]]]:
    """[(link, mirror topics or [] for all, that link's mirrors)]. Every named topic must be
    a mirror of the given link (or of exactly one link on this destination): else an
    error before anything changes."""
    if req.links:
        checked = [_checked_link(registry, dest, n, req.sides) for n in req.links]  # all checked first
        pairs = [(lk, _mirrors_of(registry, lk)) for lk in checked]
        if not req.topics:
            return [(lk, [], ms) for lk, ms in pairs]
        out = []
        for lk, ms in pairs:
            topics = []
            for t in req.topics:
                r = _resolve(t, lk, ms)
                if r is None and len(pairs) == 1:
                    raise NotFoundError(f"topic '{t}' is not a mirror of link '{lk.name}'; nothing changed",
                                        f"run 'kafka-mirrors --list --link {lk.name} --bootstrap-server "
                                        f"{dest.bootstrap}'")
                if r is not None:
                    topics.append(r)
            out.append((lk, topics, ms))
        missing = [t for t in req.topics if not any(_resolve(t, lk, ms) for lk, ms in pairs)]
        if missing:
            raise NotFoundError(f"topic '{missing[0]}' is not a mirror of link(s) "
                                f"{', '.join(lk.name for lk, _ in pairs)}; nothing changed")
        return [o for o in out if o[1]]
    candidates = [(lk, _mirrors_of(registry, lk)) for lk in _links_on(registry, dest, req.sides)]
    if not req.topics:
        return [(lk, [], ms) for lk, ms in candidates]
    chosen: dict[str, tuple[object, list[str], dict]] = {}
    for t in req.topics:
        owners = [(lk, ms, r) for lk, ms in candidates if (r := _resolve(t, lk, ms)) is not None]
        if not owners:
            raise NotFoundError(f"topic '{t}' is not a mirror of any link with destination {dest.bootstrap}; "
                                f"nothing changed",
                                f"run 'kafka-mirrors --list --bootstrap-server {dest.bootstrap}'")
        if len(owners) > 1:
            raise UsageError(f"topic '{t}' is a mirror of links {', '.join(o[0].name for o in owners)} on "
                             f"{dest.bootstrap}", "pass --link L to say which")
        lk, ms, r = owners[0]
        chosen.setdefault(lk.name, (lk, [], ms))[1].append(r)
    return [chosen[n] for n in sorted(chosen)]


# ---------------------------------------------------------------- actions

def _out(line: str) -> None:
    """One line of data on stdout, as Confluent's tool prints it: tabs kept and never
    wrapped, so runbooks can cut and grep it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _json(rows: list[dict]) -> None:
    Application().json(rows)


def _create(a: Application, registry, dest: Destination, req: Request) -> int:
    from kafka_mirrors import mirrors
    link = _checked_link(registry, dest, req.links[0])
    prefix = link.option("mirror.topic.prefix") or ""
    name = req.mirror_topic
    if prefix:
        # Confluent's mirror topic is the full destination name: the prefix plus the source topic
        if not name.startswith(prefix):
            raise UsageError(f"--mirror-topic '{name}' must start with link '{link.name}'s mirror.topic.prefix "
                             f"'{prefix}'", f"e.g. --mirror-topic {prefix}{name}")
        name = name[len(prefix):]
    dry = {"validate_only": True} if req.dry_run else {}
    done = mirrors.create_mirrors(link, [name], req.source_topic, req.configs, **dry)
    if req.output == "json":
        _json([{"link_name": link.name, "mirror_topic_name": m.topic, "source_topic_name": m.source_topic,
                "num_partitions": m.partitions, "dry_run": req.dry_run} for m in done])
        return 0
    for m in done:
        if req.dry_run:
            _out(f"Topic {m.topic} would be created as a mirror of {m.source_topic} on link {link.name} "
                 f"({m.partitions} partition(s)); dry run, nothing changed.")
        else:
            _out(f"Created topic {m.topic}.")
    return 0


def _list(a: Application, registry, dest: Destination, req: Request) -> int:
    links = [_checked_link(registry, dest, req.links[0])] if req.links else _links_on(registry, dest)
    rows = [m for lk in links for m in _mirrors_of(registry, lk).values()]
    if req.output == "json":
        _json(sorted(({"link_name": m["link"], "mirror_topic_name": m["topic"], "source_topic_name": m["source_topic"],
                       "mirror_status": m["state"]} for m in rows),
                     key=lambda r: (r["mirror_topic_name"], r["link_name"])))
        return 0
    for n in sorted({m["topic"] for m in rows}):
        _out(n)
    return 0


def _ms(since: float | None, now: float) -> str:
    return "-" if since is None else str(max(0, int((now - since) * 1000)))


def _dash(v) -> str:
    return "-" if v is None else str(v)


def _describe(a: Application, registry, dest: Destination, req: Request) -> int:
    from kafka_mirrors import mirrors
    from kafka_mirrors.state import PENDING_STOPPED
    now = time.time()
    shown = 0
    found: list[dict] = []
    for link, topics, _ in _targets(registry, dest, req):
        view = mirrors.describe_view(registry, link.name, now=now)
        for lv in view["links"]:
            if lv["source_error"]:
                a.warn(f"link '{lv['link']}': SOURCE_UNAVAILABLE: {lv['source_error']}")
            for m in lv["mirrors"]:
                if topics and m["topic"] not in topics:
                    continue
                if req.pending_stopped_only and m["state"] != PENDING_STOPPED:
                    continue
                shown += 1
                if req.output == "json":
                    found.append(_describe_json(m))
                    continue
                at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m["updated_at"] or 0))
                line = (f"Topic: {m['topic']}\tLinkName: {m['link']}\tSourceTopic: {m['source_topic']}\t"
                        f"State: {m['status']}\tSourceTopicId: {_dash(m['source_topic_id'])}\tStateTime: {at}")
                if m["reason"]:
                    line += f"\tReason: {m['reason']}"
                _out(line)
                for p in m["partitions"]:
                    _out(f"\tPartition: {p['partition']}\tState: {m['state']}\t"
                            f"LocalLogEndOffset: {_dash(p['destination_log_end_offset'])}\t"
                            f"LastFetchSourceHighWatermark: {_dash(p['source_high_watermark'])}\t"
                            f"Lag: {_dash(p['lag'])}\tTimeSinceLastFetchMs: {_ms(p['progress_updated_at'], now)}")
    if req.output == "json":
        _json(sorted(found, key=lambda r: (r["mirror_topic_name"], r["link_name"])))
    elif not shown:
        _out("No mirror topics found.")
    return 0


def _describe_json(m: dict) -> dict:
    """One mirror as Confluent's REST describes it (mirror_lags per partition), with our
    destination log end offset and reason beside."""
    return {"link_name": m["link"], "mirror_topic_name": m["topic"], "source_topic_name": m["source_topic"],
            "source_topic_id": m["source_topic_id"], "mirror_status": m["status"], "state": m["state"],
            "reason": m["reason"], "state_time_ms": int((m["updated_at"] or 0) * 1000),
            "mirror_lags": [{"partition": p["partition"], "lag": p["lag"],
                             "last_source_fetch_offset": p["source_high_watermark"],
                             "local_log_end_offset": p["destination_log_end_offset"]} for p in m["partitions"]]}


def _stopped_lines(a: Application, link, r: dict) -> None:
    lost = r.get("records_possibly_lost")
    if lost is None:
        lost_text = "unknown"
    else:  # with no live worker the last reported source offset may be stale: a lower bound
        lost_text = str(lost) if r.get("workers") else f"at least {lost}"
    if r.get("dry_run") and r.get("reason") == "promoted":
        _out(f"Topic {r['topic']}'s mirror on link {link.name} would be promoted: {r['state']} -> STOPPED once "
             f"its lag is 0 (lag now: {lost}); dry run, nothing changed")
    elif r.get("dry_run"):
        _out(f"Topic {r['topic']}'s mirror on link {link.name} would be failed over: {r['state']} -> STOPPED; "
             f"records possibly lost now: {lost_text}; dry run, nothing changed")
    else:
        _out(f"Stopped topic {r['topic']}'s mirror on link {link.name}: {r['state']} ({r.get('reason')}); "
             f"records possibly lost: {lost_text}")
    for p, o in sorted((r.get("partitions") or {}).items(), key=lambda kv: int(kv[0])):
        _out(f"\tPartition: {p}\tLocalLogEndOffset: {o['destination_log_end_offset']}\t"
                f"LastKnownSourceOffset: {_dash(o['last_known_source_offset'])}\t"
                f"RecordsPossiblyLost: {_dash(o['records_possibly_lost'])}")
    if not r.get("workers"):
        a.warn(f"no live worker was copying {r['topic']}")
    for w in r.get("workers_not_acked") or []:
        a.warn(f"worker {w} did not acknowledge the stop of {r['topic']}; make sure it is stopped")


def _state_line(verb: str):
    def line(a: Application, link, r: dict) -> None:
        _out(f"{verb} topic {r['topic']}'s mirror on link {link.name}: {r.get('state')}")
    return line


def _failback_line(a: Application, link, r: dict) -> None:
    what = f"{r.get('state')} ({r.get('action')})"
    line = (f"Reversed topic {r['topic']}'s mirror on link {link.name}: {r['mirror_topic']} on "
            f"{link.source.bootstrap} is now a mirror on link {r['reverse_link']}: {what}")
    if r.get("side_topic"):
        line += f"; {r.get('records_saved', 0)} record(s) past the stop offset saved to topic {r['side_topic']}"
    elif "side_topic" in r:
        line += "; no record past the stop offset"
    _out(line)
    for p, o in sorted((r.get("partitions") or {}).items(), key=lambda kv: int(kv[0])):
        cols = [f"Partition: {p}", f"StopOffset: {_dash(o.get('stop_offset'))}",
                f"OldLogEndOffset: {_dash(o.get('old_log_end_offset'))}",
                f"NewPrimaryLogEndOffset: {_dash(o.get('new_primary_log_end_offset'))}"]
        if "records_saved" in o:
            cols.append(f"RecordsSaved: {o['records_saved']}")
        _out("\t" + "\t".join(cols))


def _failback():
    try:
        from kafka_mirrors import failback
    except ImportError:  # pragma: no cover - a tree without the fail-back service
        raise UsageError("fail back is not available in this kafka-mirrors") from None
    return failback


def _reverse(a: Application, registry, link, topics: list[str], req: Request, mirrors: dict[str, dict]) -> list[dict]:
    """Confluent's reverse-and-start/-pause turns a mirror that is still a mirror into a
    regular topic and reverses it in one command: promote those first (a mirror that
    cannot be promoted is a failed row and is not reversed), then reverse."""
    from kafka_mirrors import dr
    from kafka_mirrors.state import ACTIVE, PAUSED
    rows: list[dict] = []
    if topics:
        to_promote = [t for t in topics if mirrors.get(t, {}).get("state") in (ACTIVE, PAUSED)]
    else:
        to_promote = sorted(t for t, m in mirrors.items() if m.get("state") in (ACTIVE, PAUSED))
    failed = set()
    if to_promote:
        for r in dr.promote(link, to_promote, False, timeout=req.timeout):
            if r.get("ok"):
                _stopped_lines(a, link, r)
            else:
                failed.add(r["topic"])
                rows.append(r)
    if topics:
        names = [t for t in topics if t not in failed]
        if not names:
            return rows
        view = _failback().reverse(registry, link.name, names, False, req.reverse_link,
                                   start=req.action == "--reverse-and-start")
    else:
        view = _failback().reverse(registry, link.name, [], True, req.reverse_link,
                                   start=req.action == "--reverse-and-start")
    _failback_notes(a, view)
    return rows + view["topics"]


def _failback_notes(a: Application, view: dict) -> None:
    rev = view.get("reverse_link") or {}
    if rev.get("created"):
        a.info(f"created link {rev['name']} ({rev['source']} -> {rev['destination']})")
    for note in view.get("notes") or []:
        a.note(note)
    for cmd in view.get("next") or []:
        a.info(f"next: {cmd}")


def _call(a: Application, registry, action: str, link, topics: list[str], req: Request,
          mirrors: dict[str, dict]) -> list[dict]:
    from kafka_mirrors import dr
    all_ = not topics
    if req.dry_run:
        from kafka_mirrors import dryrun
        return dryrun.stop_plan(link, topics, all_, action[2:])
    if action == "--pause":
        return dr.pause(link, topics, all_)
    if action == "--unpause":
        return dr.resume(link, topics, all_)
    if action == "--promote":
        return dr.promote(link, topics, all_, timeout=req.timeout)
    if action == "--failover":
        return dr.failover(link, topics, all_)
    if action in ("--reverse-and-start", "--reverse-and-pause"):
        return _reverse(a, registry, link, topics, req, mirrors)
    view = _failback().truncate_and_restore(registry, link.name, topics, all_, req.reverse_link)
    _failback_notes(a, view)
    return view["topics"]


RENDER = {
    "--pause": _state_line("Paused"),
    "--unpause": _state_line("Resumed"),
    "--promote": _stopped_lines,
    "--failover": _stopped_lines,
    "--reverse-and-start": _failback_line,
    "--reverse-and-pause": _failback_line,
    "--truncate-and-restore": _failback_line,
}


def _batch(a: Application, registry, dest: Destination, req: Request) -> int:
    failed = 0
    rows_seen = 0
    found: list[dict] = []
    for link, topics, mirrors in _targets(registry, dest, req):
        rows = _call(a, registry, req.action, link, topics, req, mirrors)
        for r in rows:
            rows_seen += 1
            if req.output == "json":
                found.append({"link_name": link.name, "mirror_topic_name": r["topic"], **r})
            if not r.get("ok"):
                failed += 1
                a.err.print(f"error: {r.get('error')}")
            elif req.output != "json":
                RENDER[req.action](a, link, r)
    if req.output == "json":
        _json(found)
    elif not rows_seen:
        a.info(f"no mirror in a state {req.action} applies to")
    return 1 if failed else 0


def execute(a: Application, req: Request) -> int:
    from kafka_mirrors.registry import resolve_registry
    registry = resolve_registry(a)
    dest = Destination(req.bootstrap, req.command_config)
    if req.action == "--create":
        return _create(a, registry, dest, req)
    if req.action == "--list":
        return _list(a, registry, dest, req)
    if req.action == "--describe":
        return _describe(a, registry, dest, req)
    return _batch(a, registry, dest, req)


def run(args: list[str]) -> int:
    """Parse, execute, and turn every error into one stderr line and an exit code."""
    return guarded(lambda a: _run(a, list(args)))


def _run(a: Application, args: list[str]) -> int:
    req = parse(args)
    if req is None:
        _out(HELP.rstrip("\n"))
        return 0
    if req.registry:
        a.registry_path = Path(req.registry)
    return execute(a, req)


def guarded(body) -> int:
    """The error boundary of the flag-style tools: body(Application) returns the exit
    code; a KafkaMirrorsError becomes one stderr line and its exit code."""
    a = Application()
    try:
        return body(a)
    except KafkaMirrorsError as exc:
        try:
            a.fail(exc)
        except typer.Exit as e:
            return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        a.err.print("interrupted")
        return 130
