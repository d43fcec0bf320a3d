"""`kafka-cluster-links`: Confluent Platform's link tool, flag for flag, onto our links, so
the first line of a Confluent runbook works:

    kafka-cluster-links --create --link L --config-file F [--config K=V,...] --bootstrap-server DEST
    kafka-cluster-links --list [--link L] --bootstrap-server DEST
    kafka-cluster-links --describe [--link L] --bootstrap-server DEST
    kafka-cluster-links --delete --link L [--force] --bootstrap-server DEST

As in Confluent's tool, `--bootstrap-server` (with `--command-config`) is the destination
cluster, and `--config-file` names the source: its `bootstrap.servers`, the client
settings to reach it and the link configs (linkconfigs.py sorts them; a Confluent link
config we have no counterpart for is refused by name). `--create` is `link create`
(both clusters contacted, their IDs recorded), `--list`/`--describe` read the links whose
destination is that cluster, `--delete` is `link delete --yes`. Output lines have the
shape of Confluent's. Exit codes: 0 ok, 1 failed, 2 usage.
"""
from __future__ import annotations

import sys
from pathlib import Path

from kafka_mirrors.cli import confluent
from kafka_mirrors.cli.application import Application
from kafka_mirrors.errors import UsageError
from kafka_mirrors.names import check_bootstrap

ACTIONS = ("--create", "--list", "--describe", "--delete")
HINT = "the flags are listed by 'kafka-cluster-links --help'"
# Confluent flags with no counterpart here, and why
UNSUPPORTED_FLAGS = {
    "--acl-filters-json": "ACL sync is not supported",
    "--acl-filters-json-file": "ACL sync is not supported",
    "--topic-filters-json": "use --config auto.create.mirror.topics.filters=JSON",
    "--include-topics": "list the mirror topics with 'kafka-mirrors --list --link L --bootstrap-server DEST'",
    "--source-cluster-id": "the source's cluster ID is read from the source itself",
    "--cluster-id": "the source's cluster ID is read from the source itself",
}

HELP = """\
Usage (Confluent's kafka-cluster-links; --bootstrap-server is the DESTINATION cluster):
  kafka-cluster-links --create --link L --config-file F [--config K=V,...] [--validate-only]
                      [--exclude-validate-link] [--consumer-group-filters-json-file F] --bootstrap-server DEST
  kafka-cluster-links --list [--link L] --bootstrap-server DEST
  kafka-cluster-links --describe [--link L] --bootstrap-server DEST
  kafka-cluster-links --delete --link L [--force] --bootstrap-server DEST

Options:
  --bootstrap-server HOST:PORT[,...]  the link's destination cluster
  --command-config FILE               client properties for the destination (Kafka's format)
  --link L                            the link's name
  --config-file F                     the source: bootstrap.servers, its client settings
                                      (security.protocol, sasl.*, ssl.*) and link configs
  --config K=V,...                    more of the same; wins over --config-file
  --consumer-group-filters-json-file  Confluent's {{"groupFilters": [...]}}
  --validate-only                     check both clusters and the configs; record nothing
  --exclude-validate-link             record the link without contacting the clusters
  --force                             delete even with active or paused mirrors
  --registry FILE                     link registry [default: $KAFKA_MIRRORS_REGISTRY]

Link configs that map: {mapped}, and kafka-mirrors' own link options
('kafka-mirrors link create --help'); others are refused by name.
Mirrors are made with 'kafka-mirrors --create --mirror-topic T --link L --bootstrap-server DEST'.
Exit codes: 0 ok, 1 failed, 2 usage.
"""


class _Parser(confluent._Parser):
    hint = HINT


def _parser() -> _Parser:
    p = _Parser(prog="kafka-cluster-links", add_help=False, allow_abbrev=False)
    for a in ACTIONS:
        p.add_argument(a, dest="act_" + a[2:], action="store_true")
    for flag in ("--bootstrap-server", "--command-config", "--link", "--config-file", "--registry",
                 "--consumer-group-filters-json-file", "--consumer-group-filters-json"):
        p.add_argument(flag, default=None)
    p.add_argument("--config", action="append", default=[])
    for flag in ("--validate-only", "--exclude-validate-link", "--force"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--help", "-h", action="store_true")
    return p


def parse(args: list[str]):
    """The parsed flags, every rule checked; None when help was asked for."""
    ns, extra = _parser().parse_known_args(args)
    if ns.help:
        return None
    if extra:
        flag = extra[0].split("=")[0]
        if flag in UNSUPPORTED_FLAGS:
            raise UsageError(f"{flag} is not supported by kafka-cluster-links here: {UNSUPPORTED_FLAGS[flag]}")
        if flag.startswith("-"):
            raise UsageError(f"unknown flag '{flag}'", HINT)
        raise UsageError(f"unexpected argument '{extra[0]}'", "name the link with --link L")
    actions = [a for a in ACTIONS if getattr(ns, "act_" + a[2:])]
    if len(actions) != 1:
        raise UsageError("no action flag given" if not actions else f"give one action flag, not "
                         f"{' and '.join(actions)}", f"give one of {', '.join(ACTIONS)}")
    ns.action = actions[0]
    if not ns.bootstrap_server or not ns.bootstrap_server.strip():
        raise UsageError(f"{ns.action} needs --bootstrap-server (the destination cluster)",
                         "e.g. --bootstrap-server dst:9092")
    ns.bootstrap_server = ns.bootstrap_server.strip()
    check_bootstrap(ns.bootstrap_server, "--bootstrap-server")

    def only(flag: str, value, allowed: tuple[str, ...]) -> None:
        if value and ns.action not in allowed:
            raise UsageError(f"{flag} does not go with {ns.action}", f"it goes with {' '.join(allowed)}")

    for flag in ("--config-file", "--config", "--validate-only", "--exclude-validate-link",
                 "--consumer-group-filters-json-file", "--consumer-group-filters-json"):
        only(flag, getattr(ns, flag[2:].replace("-", "_")), ("--create",))
    only("--force", ns.force, ("--delete",))
    if ns.action in ("--create", "--delete") and not ns.link:
        raise UsageError(f"{ns.action} needs --link L")
    if ns.action == "--create" and not ns.config_file and not ns.config:
        raise UsageError("--create needs --config-file F naming the source cluster (bootstrap.servers=...)")
    if ns.validate_only and ns.exclude_validate_link:
        raise UsageError("--validate-only and --exclude-validate-link exclude each other")
    return ns


# ---------------------------------------------------------------- actions

def _source_props(ns) -> dict[str, str]:
    """--config-file, then each --config, then the consumer group filters flag."""
    from kafka_mirrors import clientconfig, linkconfigs
    props: dict[str, str] = {}
    if ns.config_file:
        props.update(clientconfig.load_properties(Path(ns.config_file).expanduser()))
    for value in ns.config:
        props.update(linkconfigs.split_pairs(value))
    filters = ns.consumer_group_filters_json
    if ns.consumer_group_filters_json_file:
        path = Path(ns.consumer_group_filters_json_file).expanduser()
        try:
            filters = path.read_text()
        except OSError as exc:
            raise UsageError(f"--consumer-group-filters-json-file {path}: {exc.strerror}") from None
    if filters is not None:
        props["consumer.offset.group.filters"] = filters
    return props


def _create(a: Application, registry, ns) -> int:
    from kafka_mirrors import linkconfigs, links
    lc = linkconfigs.split(_source_props(ns))
    if not lc.source_bootstrap:
        raise UsageError("the source cluster is not named: bootstrap.servers is in neither --config-file nor "
                         "--config", "add bootstrap.servers=SRC:9092 to the link's config file")
    src = links.cluster_spec(lc.source_bootstrap, None, lc.client_settings, "source")
    dst = links.cluster_spec(ns.bootstrap_server, ns.command_config, {}, "destination")
    link, notes = links.create_link(registry, ns.link, src, dst, lc.options, validate=not ns.exclude_validate_link,
                                    validate_only=ns.validate_only)
    for n in notes:
        a.warn(n)
    verb = "validation" if ns.validate_only else "creation"
    confluent._out(f"Cluster link '{link.name}' {verb} successfully completed.")
    return 0


def _chosen(registry, ns) -> list:
    """The links --link names, or every link whose destination is --bootstrap-server."""
    dest = confluent.Destination(ns.bootstrap_server, ns.command_config)
    if ns.link:
        return [confluent._checked_link(registry, dest, ns.link)]
    if not registry.links():
        return []
    return confluent._links_on(registry, dest)


def _link_line(name: str, source_id, destination_id, reachable: bool) -> str:
    # kafka-mirrors links have no separate ID: the name is the ID
    return (f"Link name: '{name}', link ID: '{name}', remote cluster ID: '{source_id or '-'}', "
            f"local cluster ID: '{destination_id or '-'}', remote cluster available: "
            f"'{'true' if reachable else 'false'}', link state: '{'ACTIVE' if reachable else 'SOURCE_UNAVAILABLE'}'")


def _list(a: Application, registry, ns) -> int:
    from kafka_mirrors import links
    names = {lk.name for lk in _chosen(registry, ns)}
    if not names:
        return 0
    for row in links.list_view(registry, check=True)["links"]:
        if row["name"] in names:
            confluent._out(_link_line(row["name"], row["source"]["cluster_id"], row["destination"]["cluster_id"],
                                      row["source"]["reachable"]))
    return 0


def _describe(a: Application, registry, ns) -> int:
    """The list line, then one tab-indented line per config: the source's bootstrap
    servers and client settings (secrets redacted) and every link option."""
    from kafka_mirrors import links
    for lk in _chosen(registry, ns):
        v = links.describe_view(registry, lk.name)
        confluent._out(_link_line(v["name"], v["source"]["cluster_id"], v["destination"]["cluster_id"],
                                  v["source"]["reachable"]))
        configs = {"bootstrap.servers": v["source"]["bootstrap"], **v["source"]["config"]}
        for k, val in v["effective_options"].items():
            configs[k] = ",".join(val) if isinstance(val, list) else str(val).lower() if isinstance(val, bool) \
                else str(val)
        for k in sorted(configs):
            confluent._out(f"\t{k}={configs[k]}")
        if v["source"]["error"]:
            a.warn(f"link '{v['name']}': SOURCE_UNAVAILABLE: {v['source']['error']}")
    return 0


def _delete(a: Application, registry, ns) -> int:
    from kafka_mirrors import links
    link = _chosen(registry, ns)[0]
    _, notes = links.delete_link(registry, link.name, ns.force, lambda *_: True)
    for n in notes:
        a.warn(n)
    confluent._out(f"Cluster link '{link.name}' deletion successfully completed.")
    return 0


RUN = {"--create": _create, "--list": _list, "--describe": _describe, "--delete": _delete}


def _run(a: Application, args: list[str]) -> int:
    from kafka_mirrors.linkconfigs import supported_keys
    from kafka_mirrors.registry import resolve_registry
    ns = parse(args)
    if ns is None:
        confluent._out(HELP.format(mapped=", ".join(supported_keys())).rstrip("\n"))
        return 0
    if ns.registry:
        a.registry_path = Path(ns.registry)
    return RUN[ns.action](a, resolve_registry(a), ns)


def run(args: list[str]) -> int:
    return confluent.guarded(lambda a: _run(a, list(args)))


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
