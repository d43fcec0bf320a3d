"""The local link registry: one TOML file naming each link's two clusters, their client
settings (a properties file path, inline settings, ${ENV_VAR} placeholders), the link
options and the cluster IDs seen at creation.

    version = 1
    [links.dr]
    created_at = "2025-01-01T00:00:00Z"
    source_cluster_id = "..."
    destination_cluster_id = "..."
    [links.dr.source]
    bootstrap = "src:9092"
    config_file = "/etc/kafka/src-client.properties"
    [links.dr.destination]
    bootstrap = "dst:9092"
    config = { "sasl.password" = "${DST_PASSWORD}" }
    [links.dr.options]
    "mirror.topic.prefix" = "src."

Every read validates the whole file and names the first bad key. Writes happen under a
cross-process file lock (read-modify-write, so concurrent CLI processes never lose each
other's updates), go to a 0600 temporary file in the same directory and replace the
registry atomically. A file that does not parse is reported and never overwritten.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import tomli_w
from filelock import FileLock, Timeout

from kafka_mirrors import clientconfig
from kafka_mirrors.errors import ConfigError, NotFoundError, RegistryError
from kafka_mirrors.names import bootstrap_problem

VERSION = 1
LOCK_TIMEOUT = 30.0
LINK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# ---- link options ------------------------------------------------------------------

def _parse_bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_int(minimum: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        n = int(v.strip())
        if n < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return n
    return parse


def _parse_port(v: str) -> int:
    n = int(v.strip())
    if not 0 <= n <= 65535:
        raise ValueError("expected a port 1-65535, or 0 for none")
    return n


def _parse_replication_factor(v: str) -> int:
    n = int(v.strip())
    if n == 0 or n < -1:
        raise ValueError("expected -1 (the destination's default) or an integer >= 1")
    return n


def _parse_positive_float(v: str) -> float:
    x = float(v.strip())
    if not x > 0:
        raise ValueError("expected a number of seconds > 0")
    return x


COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")


def _parse_compression(v: str) -> str:
    s = v.strip().lower()
    if s not in COMPRESSION_TYPES:
        raise ValueError(f"expected one of {', '.join(COMPRESSION_TYPES)}")
    return s


def _split_regexes(v: str) -> list[str]:
    """Split a comma-separated list of regexes, but not at a comma inside {m,n} or [...]:
    'a{2,5},b' is two patterns, not three (and 'a{2,1}' is one bad one, not two good ones)."""
    parts, cur, braces, brackets, escaped = [], [], 0, 0, False
    for ch in v:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[":
            brackets += 1
        elif ch == "]" and brackets:
            brackets -= 1
        elif ch == "{" and not brackets:
            braces += 1
        elif ch == "}" and braces and not brackets:
            braces -= 1
        elif ch == "," and not braces and not brackets:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _parse_regexes(v: str) -> list[str]:
    out = _split_regexes(v)
    for p in out:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"'{p}' is not a regular expression: {exc}") from None
    return out


@dataclass(frozen=True)
class LinkOption:
    type: str
    default: str
    help: str
    parse: Callable[[str], Any]


LINK_OPTIONS: dict[str, LinkOption] = {
    "mirror.topic.prefix": LinkOption("str", "", "prefix of mirror topic names on the destination", str),
    "replication.factor": LinkOption("int", "-1", "replication factor of mirror topics (-1 = destination default)",
                                     _parse_replication_factor),
    "mirror.compression.type": LinkOption(
        "str", "lz4", "compression of the batches the worker writes to mirror topics (none, gzip, snappy, lz4, "
        "zstd); the records and offsets are the same whatever it is", _parse_compression),
    "request.timeout.s": LinkOption("float", "15", "timeout of each admin request, in seconds", _parse_positive_float),
    "consumer.offset.sync.enable": LinkOption("bool", "true", "copy committed consumer-group offsets", _parse_bool),
    "consumer.offset.sync.ms": LinkOption("int", "5000", "interval of the consumer offset copy", _parse_int(1)),
    "consumer.offset.groups.include": LinkOption("regexes", ".*", "consumer groups whose offsets are copied",
                                                 _parse_regexes),
    "consumer.offset.groups.exclude": LinkOption("regexes", "", "consumer groups never copied", _parse_regexes),
    "auto.create.mirror.topics.enable": LinkOption("bool", "false", "mirror matching source topics automatically",
                                                   _parse_bool),
    "auto.create.mirror.topics.include": LinkOption("regexes", "", "source topics mirrored automatically",
                                                    _parse_regexes),
    "auto.create.mirror.topics.exclude": LinkOption("regexes", "", "source topics never mirrored automatically",
                                                    _parse_regexes),
    "topic.config.sync.ms": LinkOption("int", "30000", "interval of the topic config sync", _parse_int(1)),
    "link.principal": LinkOption("str", "", "principal the link writes as on the destination (e.g. User:linker)",
                                 str),
    "worker.session.timeout.ms": LinkOption(
        "int", "10000", "session timeout of the link's workers in their group (a worker cut off longer "
        "than this loses its partitions to the others)", _parse_int(6000)),
    "metrics.port": LinkOption("int", "0", "port of the worker's Prometheus metrics (0 = none; --metrics-port wins)",
                               _parse_port),
}


def validate_option(key: str, value: str) -> Any:
    """The typed value of one link option; ConfigError naming the key if unknown or bad."""
    spec = LINK_OPTIONS.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, LINK_OPTIONS, n=1)
        raise ConfigError(f"unknown link option '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                          "run 'kafka-mirrors link create --help' for the list")
    if not isinstance(value, str):
        raise ConfigError(f"link option '{key}' must be a string")
    try:
        return spec.parse(value)
    except ValueError as exc:
        msg = str(exc) if str(exc).startswith(("expected", "'")) else \
            f"expected {'an' if spec.type[0] in 'aeiou' else 'a'} {spec.type}"
        raise ConfigError(f"link option '{key}' has a bad value '{value}': {msg}") from None


def validate_options(options: dict[str, str]) -> None:
    for k, v in options.items():
        validate_option(k, v)


# ---- the model ---------------------------------------------------------------------

@dataclass
class ClusterSpec:
    bootstrap: str
    config_file: str | None = None  # absolute path of a Kafka-style or librdkafka properties file
    config: dict[str, str] = field(default_factory=dict)  # inline settings, may hold ${ENV_VAR}

    def settings(self) -> dict[str, str]:
        """The raw settings (file first, inline on top), placeholders still in place."""
        merged = clientconfig.load_properties(self.config_file) if self.config_file else {}
        merged.update(self.config)
        return merged

    def client_config(self, notes: list[str] | None = None, missing_env: str = "error") -> dict[str, str]:
        """The complete librdkafka config: bootstrap.servers plus the translated settings,
        placeholders resolved (ConfigError naming the variable if unset)."""
        where = f"cluster {self.bootstrap}"
        settings = clientconfig.resolve_placeholders(self.settings(), where, missing_env)
        conf = clientconfig.translate(settings, notes)
        conf["bootstrap.servers"] = self.bootstrap
        return conf

    def to_toml(self) -> dict:
        out: dict[str, Any] = {"bootstrap": self.bootstrap}
        if self.config_file:
            out["config_file"] = self.config_file
        if self.config:
            out["config"] = dict(self.config)
        return out


@dataclass
class Link:
    name: str
    source: ClusterSpec
    destination: ClusterSpec
    options: dict[str, str] = field(default_factory=dict)
    source_cluster_id: str | None = None
    destination_cluster_id: str | None = None
    created_at: str = field(default_factory=lambda: now_iso())

    def option(self, key: str) -> Any:
        """The typed value of a link option, or its default."""
        spec = LINK_OPTIONS[key]
        return validate_option(key, self.options.get(key, spec.default))

    def effective_options(self) -> dict[str, Any]:
        return {k: self.option(k) for k in sorted(LINK_OPTIONS)}

    def has_inline_secret(self) -> bool:
        return clientconfig.has_inline_secret(self.source.config) or \
            clientconfig.has_inline_secret(self.destination.config)

    def to_toml(self) -> dict:
        out: dict[str, Any] = {"created_at": self.created_at}
        if self.source_cluster_id:
            out["source_cluster_id"] = self.source_cluster_id
        if self.destination_cluster_id:
            out["destination_cluster_id"] = self.destination_cluster_id
        out["source"] = self.source.to_toml()
        out["destination"] = self.destination.to_toml()
        if self.options:
            out["options"] = dict(sorted(self.options.items()))
        return out


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---- reading and validating the file ---------------------------------------------------

def _bad(path: Path, key: str, what: str) -> RegistryError:
    return RegistryError(f"registry {path}: {key} {what}",
                         "fix the file by hand or move it aside (it was not changed)")


def _expect(path: Path, table: dict, key: str, where: str, typ: type, required: bool):
    if key not in table:
        if required:
            raise _bad(path, f"{where}.{key}" if where else key, "is missing")
        return None
    value = table[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        tname = {str: "a string", int: "an integer", dict: "a table"}[typ]
        raise _bad(path, f"{where}.{key}" if where else key, f"must be {tname}")
    return value


def _check_keys(path: Path, table: dict, allowed: set[str], where: str) -> None:
    for k in table:
        if k not in allowed:
            raise _bad(path, f"{where}.{k}" if where else k, "is not a known key")


def _cluster_from_toml(path: Path, t: Any, where: str) -> ClusterSpec:
    if not isinstance(t, dict):
        raise _bad(path, where, "must be a table")
    _check_keys(path, t, {"bootstrap", "config_file", "config"}, where)
    bootstrap = _expect(path, t, "bootstrap", where, str, True)
    if not bootstrap.strip():
        raise _bad(path, f"{where}.bootstrap", "is empty")
    problem = bootstrap_problem(bootstrap)
    if problem:
        raise _bad(path, f"{where}.bootstrap", f"is invalid ({problem})")
    config_file = _expect(path, t, "config_file", where, str, False)
    config = _expect(path, t, "config", where, dict, False) or {}
    for k, v in config.items():
        if not isinstance(v, str):
            raise _bad(path, f"{where}.config.{k}", "must be a string")
    return ClusterSpec(bootstrap, config_file, dict(config))


def _link_from_toml(path: Path, name: str, t: Any) -> Link:
    where = f"links.{name}"
    if not isinstance(t, dict):
        raise _bad(path, where, "must be a table")
    if not LINK_NAME.match(name):
        raise _bad(path, where, "is not a valid link name")
    _check_keys(path, t, {"created_at", "source_cluster_id", "destination_cluster_id", "source", "destination",
                          "options"}, where)
    options = _expect(path, t, "options", where, dict, False) or {}
    for k, v in options.items():
        if not isinstance(v, str):
            raise _bad(path, f"{where}.options.{k}", "must be a string")
        try:
            validate_option(k, v)
        except ConfigError as exc:
            raise _bad(path, f"{where}.options.{k}", f"is invalid ({exc.message})") from None
    return Link(
        name=name,
        source=_cluster_from_toml(path, t.get("source"), f"{where}.source") if "source" in t
        else _raise(_bad(path, f"{where}.source", "is missing")),
        destination=_cluster_from_toml(path, t.get("destination"), f"{where}.destination") if "destination" in t
        else _raise(_bad(path, f"{where}.destination", "is missing")),
        options=dict(options),
        source_cluster_id=_expect(path, t, "source_cluster_id", where, str, False),
        destination_cluster_id=_expect(path, t, "destination_cluster_id", where, str, False),
        created_at=_expect(path, t, "created_at", where, str, True),
    )


def _raise(exc: Exception):
    raise exc


def parse_registry(path: Path, raw: bytes) -> dict[str, Link]:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RegistryError(f"registry {path} is not UTF-8 text",
                            "fix the file by hand or move it aside (it was not changed)") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"registry {path} is not valid TOML: {exc}",
                            "fix the file by hand or move it aside (it was not changed)") from None
    if not doc:
        return {}
    _check_keys(path, doc, {"version", "links"}, "")
    version = _expect(path, doc, "version", "", int, True)
    if version != VERSION:
        raise _bad(path, "version", f"is {version}; this kafka-mirrors reads version {VERSION}")
    links = _expect(path, doc, "links", "", dict, False) or {}
    return {name: _link_from_toml(path, name, t) for name, t in links.items()}


def serialize(links: dict[str, Link]) -> bytes:
    doc = {"version": VERSION, "links": {n: links[n].to_toml() for n in sorted(links)}}
    return tomli_w.dumps(doc).encode("utf-8")


def default_registry_path() -> Path:
    env = os.environ.get("KAFKA_MIRRORS_REGISTRY")
    if env:
        return Path(env)
    if sys.platform == "win32":  # pragma: no cover
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "kafka-mirrors" / "links.toml"


class Registry:
    """The link registry file. Reads need no lock (writes replace the file atomically);
    `update()` is the only way to change it."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_registry_path()
        self.path = self.path.expanduser()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # ---- reading
    def _read(self) -> tuple[bytes | None, dict[str, Link]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, {}
        except IsADirectoryError:
            raise RegistryError(f"registry {self.path} is a directory", "pass a file path with --registry") from None
        except OSError as exc:
            raise RegistryError(f"cannot read registry {self.path}: {exc.strerror}") from None
        return raw, parse_registry(self.path, raw)

    def links(self) -> dict[str, Link]:
        return self._read()[1]

    def get(self, name: str) -> Link:
        links = self.links()
        if name not in links:
            raise NotFoundError(f"link '{name}' not found", "run 'kafka-mirrors link list'")
        return links[name]

    # ---- writing
    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Link]]:
        """Read-modify-write under the file lock; the yielded dict is written back
        atomically when the block ends without an exception (and only if it changed)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise RegistryError(f"cannot create the registry directory {self.path.parent}: {exc.strerror}") from None
        lock = FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(f"registry {self.path} stayed locked for {LOCK_TIMEOUT:g} s",
                                f"another kafka-mirrors is writing it; if none is, remove {self.lock_path}") from None
        except OSError as exc:
            raise RegistryError(f"cannot lock registry {self.path}: {exc.strerror}") from None
        try:
            raw, links = self._read()
            yield links
            for name, link in links.items():
                if name != link.name:
                    raise RegistryError(f"internal error: link stored as '{name}' is named '{link.name}'")
                validate_options(link.options)
            new = serialize(links)
            if new != raw:
                self._write_atomically(new)
        finally:
            lock.release()

    def _write_atomically(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            # mkstemp creates the file 0600: inline secrets never sit in a readable file
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename durable
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def resolve_registry(app) -> Registry:
    """The registry of an Application (cli/application.py): --registry, else
    $KAFKA_MIRRORS_REGISTRY, else the user config dir."""
    return Registry(getattr(app, "registry_path", None))
