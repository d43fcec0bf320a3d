"""Link operations: what `kafka-mirrors link ...` does, between the registry and the two
clusters. Each function takes parsed arguments and returns a Link or a view (plain dicts
and lists, the documented JSON shape); the CLI only parses and renders.
"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any, Callable, Iterable

from kafka_mirrors import clientconfig, state
from kafka_mirrors.errors import ConflictError, KafkaMirrorsError, KafkaUnavailableError, NotFoundError, UsageError
from kafka_mirrors.kafka.admin import Admin
from kafka_mirrors.names import check_bootstrap
from kafka_mirrors.registry import LINK_NAME, LINK_OPTIONS, ClusterSpec, Link, Registry, now_iso, validate_option

DEFAULT_TIMEOUT = 15.0
# a link cannot be deleted while one of its mirrors is in one of these states: the
# worker is (or may be) still writing for it, or a promote/failover is half done
BLOCKING_STATES = ("ACTIVE", "PAUSED", "PENDING_STOPPED")


def parse_pairs(pairs: Iterable[str], flag: str) -> dict[str, str]:
    """KEY=VALUE arguments as a dict; UsageError naming the bad one."""
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = key if clientconfig.is_secret_key(key) else item
            raise UsageError(f"bad {flag} '{shown}': expected KEY=VALUE")
        out[key] = value
    return out


def parse_options(pairs: Iterable[str]) -> dict[str, str]:
    options = parse_pairs(pairs, "--config")
    for k, v in options.items():
        validate_option(k, v)
    return options


def cluster_spec(bootstrap: str, config_file: str | None, settings: dict[str, str], side: str) -> ClusterSpec:
    bootstrap = bootstrap.strip()
    if not bootstrap:
        raise UsageError(f"--{side} needs bootstrap servers (host:port[,host:port...])")
    check_bootstrap(bootstrap, f"--{side}")
    if "bootstrap.servers" in settings:
        raise UsageError(f"give the {side} bootstrap servers with --{side}, not as a setting")
    path = None
    if config_file:
        p = Path(config_file).expanduser()
        clientconfig.load_properties(p)  # fails now, naming the file, if it is missing or unreadable
        path = str(p.resolve())
    return ClusterSpec(bootstrap, path, dict(settings))


def _addresses(bootstrap: str) -> set[str]:
    return {a.strip().lower().removeprefix("plaintext://").removeprefix("ssl://")
            for a in bootstrap.split(",") if a.strip()}


def check_settings(spec: ClusterSpec, side: str, strict_env: bool) -> list[str]:
    """Translate and hand the settings to librdkafka (no connection). Returns notes."""
    notes: list[str] = []
    conf = spec.client_config(notes, missing_env="error" if strict_env else "keep")
    clientconfig.check_librdkafka(conf, f"the {side} cluster")
    if not strict_env:
        notes += [f"environment variable '{v}' is not set here; it must be where the link is used"
                  for v in clientconfig.unset_variables(spec.settings())]
    return [f"{side}: {n}" for n in notes]


def probe(spec: ClusterSpec, side: str, timeout: float) -> str:
    """The cluster ID of one side (a describe cluster call), or a typed error."""
    admin = Admin(spec.client_config(), f"{side} cluster {spec.bootstrap}", timeout)
    return admin.probe_cluster_id()


def probe_both(link_or_specs, timeout: float) -> dict[str, dict[str, Any]]:
    """Reachability of both sides, checked at the same time so the whole takes one timeout."""
    src, dst = link_or_specs
    out: dict[str, dict[str, Any]] = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {side: pool.submit(probe, spec, side, timeout) for side, spec in
                   (("source", src), ("destination", dst))}
        for side, f in futures.items():
            try:
                out[side] = {"reachable": True, "cluster_id": f.result(), "error": None, "exc": None}
            except KafkaMirrorsError as exc:
                out[side] = {"reachable": False, "cluster_id": None, "error": str(exc), "exc": exc}
    return out


def create_link(registry: Registry, name: str, source: ClusterSpec, destination: ClusterSpec,
                options: dict[str, str], validate: bool = True, validate_only: bool = False,
                timeout: float | None = None) -> tuple[Link, list[str]]:
    """Check everything, then record the link. Returns it and notes for the operator."""
    if not LINK_NAME.match(name):
        raise UsageError(f"bad link name '{name}': use letters, digits, '.', '_' and '-' (at most 100)")
    for k, v in options.items():
        validate_option(k, v)
    if name in registry.links():
        raise ConflictError(f"link '{name}' already exists",
                            f"run 'kafka-mirrors link describe {name}', or pick another name")
    if _addresses(source.bootstrap) & _addresses(destination.bootstrap):
        raise UsageError("source and destination are the same cluster "
                         f"({', '.join(sorted(_addresses(source.bootstrap) & _addresses(destination.bootstrap)))})",
                         "a link joins two different clusters")
    notes = check_settings(source, "source", validate) + check_settings(destination, "destination", validate)
    link = Link(name, source, destination, dict(options), created_at=now_iso())
    if validate:
        if timeout is None:
            timeout = link.option("request.timeout.s")
        seen = probe_both((source, destination), timeout)
        for side in ("source", "destination"):
            if not seen[side]["reachable"]:
                exc = seen[side]["exc"]
                if isinstance(exc, KafkaUnavailableError):
                    exc.hint = (exc.hint + "; " if exc.hint else "") + "or pass --no-validate to record the link anyway"
                raise exc
        link.source_cluster_id = seen["source"]["cluster_id"]
        link.destination_cluster_id = seen["destination"]["cluster_id"]
        if link.source_cluster_id == link.destination_cluster_id:
            raise UsageError(f"source and destination are the same cluster (cluster ID {link.source_cluster_id})",
                             "a link joins two different clusters")
    if validate_only:
        return link, notes
    with registry.update() as links:
        if name in links:  # created by another process since the check above
            raise ConflictError(f"link '{name}' already exists",
                                f"run 'kafka-mirrors link describe {name}', or pick another name")
        links[name] = link
    if link.has_inline_secret():
        notes.append(f"the link keeps secrets inline; {registry.path} is readable by its owner only "
                     "(prefer a properties file or ${ENV_VAR} placeholders)")
    return link, notes


def _mirrors(link: Link, timeout: float) -> tuple[list[dict] | None, str | None]:
    try:
        return list(state.list_mirrors(link, timeout)), None
    except KafkaMirrorsError as exc:
        return None, str(exc)


def _timeout(link: Link, timeout: float | None) -> float:
    return timeout if timeout is not None else link.option("request.timeout.s")


def _cluster_view(spec: ClusterSpec, recorded_id: str | None) -> dict[str, Any]:
    return {"bootstrap": spec.bootstrap, "cluster_id": recorded_id, "config_file": spec.config_file,
            "config": clientconfig.redact(spec.config)}


def list_view(registry: Registry, check: bool = False, timeout: float | None = None) -> dict[str, Any]:
    links = registry.links()

    def one(link: Link) -> dict[str, Any]:
        t = _timeout(link, timeout)
        mirrors, _ = _mirrors(link, t)
        row: dict[str, Any] = {
            "name": link.name,
            "source": {"bootstrap": link.source.bootstrap, "cluster_id": link.source_cluster_id},
            "destination": {"bootstrap": link.destination.bootstrap, "cluster_id": link.destination_cluster_id},
            "mirrors": None if mirrors is None else len(mirrors),
            "created_at": link.created_at,
        }
        if check:
            seen = probe_both((link.source, link.destination), t)
            for side in ("source", "destination"):
                row[side]["reachable"] = seen[side]["reachable"]
                row[side]["error"] = seen[side]["error"]
        return row

    names = sorted(links)
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(names)))) as pool:
        rows = list(pool.map(lambda n: one(links[n]), names))
    return {"links": rows}


def describe_view(registry: Registry, name: str, timeout: float | None = None) -> dict[str, Any]:
    link = registry.get(name)
    t = _timeout(link, timeout)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        f_mirrors = pool.submit(_mirrors, link, t)
        seen = probe_both((link.source, link.destination), t)
        mirrors, mirrors_error = f_mirrors.result()
    view: dict[str, Any] = {
        "name": link.name,
        "created_at": link.created_at,
        "source": _cluster_view(link.source, link.source_cluster_id),
        "destination": _cluster_view(link.destination, link.destination_cluster_id),
        "options": dict(sorted(link.options.items())),
        "effective_options": link.effective_options(),
        "mirrors": None if mirrors is None else sorted(mirrors, key=lambda m: str(m.get("topic"))),
        "mirrors_error": mirrors_error,
    }
    for side, recorded in (("source", link.source_cluster_id), ("destination", link.destination_cluster_id)):
        s = seen[side]
        view[side]["reachable"] = s["reachable"]
        view[side]["current_cluster_id"] = s["cluster_id"]
        view[side]["error"] = s["error"]
        # a bootstrap address now answering with another cluster ID is worth shouting about
        view[side]["cluster_id_matches"] = None if not (s["cluster_id"] and recorded) else s["cluster_id"] == recorded
    return view


def alter_link(registry: Registry, name: str, set_options: dict[str, str], unset: list[str]) -> Link:
    if not set_options and not unset:
        raise UsageError("nothing to change", "pass --config KEY=VALUE or --unset KEY")
    for k, v in set_options.items():
        validate_option(k, v)
    for k in unset:
        if k not in LINK_OPTIONS:
            validate_option(k, "")  # raises naming the unknown key
        if k in set_options:
            raise UsageError(f"link option '{k}' is both set and unset")
    with registry.update() as links:
        if name not in links:
            raise NotFoundError(f"link '{name}' not found", "run 'kafka-mirrors link list'")
        link = links[name]
        for k in unset:
            link.options.pop(k, None)
        link.options.update(set_options)
        return link


def delete_link(registry: Registry, name: str, force: bool, confirm: Callable[[Link, list], bool],
                timeout: float | None = None) -> tuple[Link, list[str]]:
    """Remove a link from the registry. Refuses while it has mirrors still replicating
    (or when that cannot be checked) unless force; asks `confirm` before removing."""
    link = registry.get(name)
    notes: list[str] = []
    mirrors, err = _mirrors(link, _timeout(link, timeout))
    if mirrors is None:
        if not force:
            raise ConflictError(f"cannot delete link '{name}': the destination could not be checked for its "
                                f"mirrors ({err})", "run again with --force to delete it anyway")
        notes.append(f"the destination could not be checked for mirrors of link '{name}'")
        mirrors = []
    blocking = [m for m in mirrors if str(m.get("state")) in BLOCKING_STATES]
    if blocking:
        topics = ", ".join(str(m.get("topic")) for m in blocking[:5]) + (", ..." if len(blocking) > 5 else "")
        if not force:
            raise ConflictError(f"link '{name}' has {len(blocking)} active or paused mirror(s): {topics}",
                                "promote, fail over or delete them first, or pass --force")
        notes.append(f"link '{name}' still had {len(blocking)} active or paused mirror(s): {topics}")
    if not confirm(link, blocking):
        raise ConflictError(f"link '{name}' not deleted")
    with registry.update() as links:
        if name not in links:
            raise NotFoundError(f"link '{name}' not found", "run 'kafka-mirrors link list'")
        del links[name]
    return link, notes

