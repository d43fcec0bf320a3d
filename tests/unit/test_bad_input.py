"""Bad input, generated (issue 11): CLI arguments, registry files and client properties
files that kafka-mirrors must refuse. Every case ends with a one-line error on stderr, a
non-zero exit, no traceback, nothing on stdout, and the registry byte-for-byte unchanged;
topic names and bootstrap addresses that Kafka refuses are usage errors (exit 2).

No broker is needed: every client constructor that would contact a cluster raises
ClusterContacted (an AssertionError: no handler of ours catches it), so a bad input that
reaches a cluster fails the test. Examples per test are fixed (max_examples, derandomized
so CI runs the same inputs every time): 340 in all, under 40 s on a busy 2-core machine.
"""
from __future__ import annotations

import string
import tempfile
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kafka_mirrors.cli import app
from kafka_mirrors.names import TOPIC_MAX_LENGTH, bootstrap_problem, topic_problem
from kafka_mirrors.registry import LINK_OPTIONS, ClusterSpec, Link, serialize

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


class ClusterContacted(AssertionError):
    pass


@pytest.fixture(scope="module", autouse=True)
def no_cluster():
    """Any client given bootstrap servers raises: bad input must be refused before."""
    import confluent_kafka

    from kafka_mirrors.kafka import admin as admin_mod

    def guard(real):
        def make(conf, *a, **kw):
            if "bootstrap.servers" in conf:
                raise ClusterContacted(f"a {real.__name__} was made for {conf['bootstrap.servers']}")
            return real(conf, *a, **kw)
        return make

    with pytest.MonkeyPatch.context() as mp:
        for name in ("Producer", "Consumer"):
            mp.setattr(confluent_kafka, name, guard(getattr(confluent_kafka, name)))
        mp.setattr(admin_mod, "AdminClient", guard(admin_mod.AdminClient))
        yield


WORK = Path(tempfile.mkdtemp(prefix="kafka-mirrors-bad-input-"))
REGISTRY = WORK / "links.toml"
GOOD_LINK = Link("dr", ClusterSpec("src:9092"), ClusterSpec("dst:9093", config={"client.id": "km"}),
                 {"mirror.topic.prefix": "src."}, "src-id", "dst-id", "2025-01-01T00:00:00Z")
GOOD = serialize({"dr": GOOD_LINK})
RUNNER = CliRunner()


def run(args: list[str], registry: bytes = GOOD):
    REGISTRY.write_bytes(registry)
    env = {"NO_COLOR": "1", "COLUMNS": "200", "KAFKA_MIRRORS_REGISTRY": str(REGISTRY)}
    r = RUNNER.invoke(app, args, env=env, catch_exceptions=False)
    assert REGISTRY.read_bytes() == registry, f"registry changed by {args}"
    return r


def assert_refused(r, code: int | None = None) -> str:
    """One error line on stderr (click's usage errors end with theirs), no traceback."""
    err = r.stderr
    assert "Traceback" not in err and "Traceback" not in r.stdout
    assert r.exit_code != 0, (r.exit_code, err, r.stdout)
    if code is not None:
        assert r.exit_code == code, (r.exit_code, err)
    lines = err.splitlines()
    assert lines and err.endswith("\n"), repr(err)
    if lines[-1].startswith("Error: "):  # click: Usage: ..., Try ..., Error: ...
        assert lines[0].startswith("Usage: "), repr(err)
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), repr(err)
    assert r.stdout == "", r.stdout
    return lines[-1]


# ---------------------------------------------------------------- topic names

LEGAL = string.ascii_letters + string.digits + "._-"
bad_topics = st.one_of(
    st.sampled_from(["", ".", ".."]),
    st.text(LEGAL, min_size=TOPIC_MAX_LENGTH + 1, max_size=TOPIC_MAX_LENGTH + 40),
    st.builds(lambda a, c, b: a + c + b, st.text(LEGAL, max_size=20),
              st.characters(exclude_characters=LEGAL, exclude_categories=("Cs",)),
              st.text(max_size=20)),
)


def _topic_commands(topic: str) -> list[list[str]]:
    return [
        ["mirror", "create", "--link", "dr", "--", topic],
        ["mirror", "create", "--link", "dr", "ok", f"--source-topic={topic}"],
        ["mirror", "describe", "--link", "dr", "--", topic],
        ["mirror", "pause", "--link", "dr", "--", topic],
        ["mirror", "resume", "--link", "dr", "--", topic],
        ["promote", "--link", "dr", "--yes", "--", topic],
        ["failover", "--link", "dr", "--yes", "--", topic],
        ["reverse-and-start", "--link", "dr", "--yes", "--", topic],
        ["truncate-and-restore", "--link", "dr", "--yes", "--", topic],
        ["--failover", "--topics", topic or ",", "--bootstrap-server", "dst:9093"],
        ["--create", f"--mirror-topic={topic}", "--link", "dr", "--bootstrap-server", "dst:9093"],
    ]


@settings(max_examples=70, **SETTINGS)
@given(bad_topics, st.integers(0, len(_topic_commands("x")) - 1))
def test_topic_names_kafka_refuses_are_usage_errors(topic, which):
    assert topic_problem(topic)
    args = _topic_commands(topic)[which]
    line = assert_refused(run(args), 2)
    assert "topic name" in line or "--topics" in line


def test_legal_topic_names_pass():
    for t in ("a", "orders", "a.b_c-d", "x" * TOPIC_MAX_LENGTH, "..."):
        assert topic_problem(t) is None


# ---------------------------------------------------------------- bootstrap addresses

hosts = st.one_of(st.text(string.ascii_lowercase + string.digits + "-.", min_size=1, max_size=20)
                  .filter(lambda h: h.strip(".-")), st.sampled_from(["[::1]", "127.0.0.1", "localhost"]))
bad_ports = st.one_of(st.just(0), st.integers(65536, 10 ** 12))
bad_addresses = st.one_of(
    hosts,                                                     # no port
    st.builds(lambda h: h + ":", hosts),                       # an empty port
    st.builds(lambda h, p: f"{h}:{p}", hosts, bad_ports),      # a port outside 1-65535
    st.builds(lambda h, p: f"{h}:{p}", hosts, st.text(string.ascii_letters + "+ ", min_size=1, max_size=5)),
)


@settings(max_examples=60, **SETTINGS)
@given(bad_addresses, st.sampled_from(["source", "destination", "both-listed", "confluent"]),
       st.booleans())
def test_bootstrap_addresses_kafka_refuses_are_usage_errors(address, where, validate):
    assert bootstrap_problem(address)
    src, dst = "src:9092", "dst:9093"
    if where == "source":
        src = address
    elif where == "destination":
        dst = address
    else:
        dst = f"dst:9093,{address}"
    if where == "confluent":
        args = ["--failover", "--topics", "orders", "--bootstrap-server", address]
    else:
        args = ["link", "create", "new", f"--source={src}", f"--destination={dst}"] + \
            ([] if validate else ["--no-validate"])
    line = assert_refused(run(args), 2)
    assert "bootstrap.servers" in line


def test_bootstrap_addresses_kafka_takes_pass():
    for ok in ("h:1", "h:65535", "a:9092, b:9093", "[::1]:9092", "SASL_SSL://broker-1.example.com:9093"):
        assert bootstrap_problem(ok) is None, ok


# ---------------------------------------------------------------- registry files

GOOD_DOC = tomllib.loads(GOOD.decode())
PATHS = {  # a key of the file -> the type it must have
    ("version",): int, ("links",): dict, ("links", "dr"): dict,
    ("links", "dr", "created_at"): str, ("links", "dr", "source_cluster_id"): str,
    ("links", "dr", "destination_cluster_id"): str,
    ("links", "dr", "source"): dict, ("links", "dr", "destination"): dict,
    ("links", "dr", "source", "bootstrap"): str, ("links", "dr", "destination", "bootstrap"): str,
    ("links", "dr", "destination", "config"): dict, ("links", "dr", "destination", "config", "client.id"): str,
    ("links", "dr", "options"): dict, ("links", "dr", "options", "mirror.topic.prefix"): str,
}
REQUIRED = [("version",), ("links", "dr", "created_at"), ("links", "dr", "source"), ("links", "dr", "destination"),
            ("links", "dr", "source", "bootstrap"), ("links", "dr", "destination", "bootstrap")]
toml_values = st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(allow_nan=False), st.booleans(),
                        st.text(max_size=8), st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=5), st.integers(),
                                        max_size=2), st.datetimes())


def _doc():
    return tomllib.loads(GOOD.decode())


def _at(doc, path):
    for k in path[:-1]:
        doc = doc[k]
    return doc


def _wrong_type(path_value):
    path, value = path_value
    typ = PATHS[path]
    assume(not isinstance(value, typ) or (typ is int and isinstance(value, bool)))
    doc = _doc()
    _at(doc, path)[path[-1]] = value
    return tomli_w.dumps(doc).encode()


def _missing(path):
    doc = _doc()
    del _at(doc, path)[path[-1]]
    return tomli_w.dumps(doc).encode()


def _unknown_key(path_key):
    path, key = path_key
    doc = _doc()
    table = _at(doc, path + ("x",))
    assume(key not in table)
    table[key] = "x"
    return tomli_w.dumps(doc).encode()


def _bad_value(kv):
    (path, value) = kv
    doc = _doc()
    _at(doc, path)[path[-1]] = value
    return tomli_w.dumps(doc).encode()


def _version(v):
    doc = _doc()
    doc["version"] = v
    return tomli_w.dumps(doc).encode()


def _broken(cut_insert):
    cut, junk = cut_insert
    raw = GOOD[:cut] + junk.encode("utf-8", "surrogatepass") + GOOD[cut:]
    try:
        tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return raw
    assume(False)


bad_registries = st.one_of(
    st.builds(_wrong_type, st.tuples(st.sampled_from(sorted(PATHS)), toml_values)),
    st.builds(_missing, st.sampled_from(REQUIRED)),
    st.builds(_unknown_key, st.tuples(st.sampled_from([(), ("links", "dr"), ("links", "dr", "source")]),
                                      st.text(string.ascii_lowercase + "_", min_size=1, max_size=10))),
    st.builds(_version, st.integers(-2 ** 63, 2 ** 63 - 1).filter(lambda v: v != 1)),
    st.builds(_broken, st.tuples(st.integers(0, len(GOOD)),
                                 st.sampled_from(["[", "\"", "=", "[[", "\n[links.dr]\n", "\x00", "\ufeff=",
                                                  "= =", "\nversion = 1\n", "'''"]))),
    st.builds(lambda b: b, st.binary(min_size=1, max_size=40).filter(lambda b: b.strip() and _unparsable(b))),
    st.builds(_bad_value, st.tuples(st.sampled_from([
        ("links", "dr", "source", "bootstrap"), ("links", "dr", "destination", "bootstrap")]),
        bad_addresses)),
    st.builds(_bad_value, st.tuples(st.just(("links", "dr", "options", "replication.factor")),
                                    st.sampled_from(["0", "-2", "x", "1.5", ""]))),
)


def _unparsable(b: bytes) -> bool:
    try:
        tomllib.loads(b.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return True
    return False


REGISTRY_COMMANDS = [
    ["link", "list"], ["link", "describe", "dr"], ["link", "alter", "dr", "-c", "mirror.topic.prefix=x."],
    ["link", "create", "new", "--source", "a:1", "--destination", "b:2", "--no-validate"],
    ["link", "delete", "dr", "--yes", "--force"], ["mirror", "create", "orders", "--link", "dr"],
    ["mirror", "list"], ["mirror", "pause", "orders", "--link", "dr"], ["describe"], ["run", "--link", "dr"],
    ["--failover", "--topics", "orders", "--bootstrap-server", "dst:9093"],
]


@settings(max_examples=80, **SETTINGS)
@given(bad_registries, st.sampled_from(REGISTRY_COMMANDS))
def test_bad_registry_files_are_refused_and_left_alone(raw, args):
    line = assert_refused(run(args, raw))
    assert "registry" in line


# ---------------------------------------------------------------- client properties files

SECRET = "s3cret-Value"
bad_property_lines = st.one_of(
    st.sampled_from([f"{k}=com.example.Thing" for k in ("sasl.login.callback.handler.class",
                                                         "sasl.client.callback.handler.class", "sasl.login.class",
                                                         "ssl.engine.factory.class", "config.providers")]),
    st.sampled_from(["ssl.truststore.location=/etc/kafka/trust.jks\nssl.truststore.type=JKS",
                     "ssl.keystore.location=/etc/kafka/key.jks",
                     "ssl.truststore.location=/etc/kafka/trust.p12\nssl.truststore.type=PKCS12"]),
    st.builds(lambda k: f"zz.{k}=1", st.text(string.ascii_lowercase + ".", min_size=1, max_size=12)),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["security.protocol", "socket.timeout.ms", "acks", "compression.type",
                                                         # read only under SASL, as in the Java client
                                                         "security.protocol=SASL_PLAINTEXT\nsasl.mechanism"]),
              st.text(string.ascii_letters, min_size=1, max_size=8).map(lambda v: "Q" + v)),
    st.builds(lambda v: f"sasl.jaas.config={v}", st.text(string.ascii_letters + "=\";. ", min_size=1, max_size=30)
              .filter(lambda v: "LoginModule" not in v)),
    st.just(f"sasl.jaas.config=org.example.UnknownLoginModule required username=\"u\" password=\"{SECRET}\";"),
    st.builds(lambda p: f"security.protocol=SSL\nssl.ca.location=/nonexistent/{p}.pem",
              st.text(string.ascii_lowercase, min_size=1, max_size=8)),
)
filler = st.sampled_from(["", "# a comment", "! another", "client.id=kafka-mirrors-test",
                          f"sasl.password={SECRET}", "  "])


@settings(max_examples=60, **SETTINGS)
@given(st.lists(filler, max_size=3), bad_property_lines, st.lists(filler, max_size=3),
       st.sampled_from(["--source-config", "--destination-config"]), st.booleans())
def test_bad_client_properties_files_are_refused(before, bad, after, flag, validate):
    props = WORK / "client.properties"
    props.write_text("\n".join(before + [bad] + after) + "\n")
    args = ["link", "create", "new", "--source", "src:9092", "--destination", "dst:9093", flag, str(props)]
    args += [] if validate else ["--no-validate"]
    r = run(args)
    assert_refused(r, 2)
    assert SECRET not in r.stderr


@settings(max_examples=10, **SETTINGS)
@given(st.binary(min_size=1, max_size=30))
def test_unreadable_properties_bytes_never_crash(raw):
    props = WORK / "raw.properties"
    props.write_bytes(raw)
    r = run(["link", "create", "new", "--source", "src:9092", "--destination", "dst:9093",
             "--source-config", str(props), "--no-validate"], GOOD)
    if r.exit_code != 0:  # many byte strings are a valid (if odd) properties file
        assert_refused(r)


# ---------------------------------------------------------------- other arguments

bad_link_names = st.one_of(st.just(""), st.text(min_size=1, max_size=12).filter(
    lambda n: not n[0].isascii() or not n[0].isalnum() or any(c not in LEGAL for c in n)),
    st.text(LEGAL, min_size=101, max_size=110).map(lambda n: "a" + n))
bad_options = st.one_of(
    st.builds(lambda k: f"{k}=1", st.text(string.ascii_lowercase + ".", min_size=1, max_size=20)
              .filter(lambda k: k not in LINK_OPTIONS)),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["replication.factor", "consumer.offset.sync.ms",
                                                         "topic.config.sync.ms", "request.timeout.s"]),
              st.sampled_from(["", "x", "-5", "0", "nan", "1e999", "maybe", "0x10"])),
    # "0" and "1" are a boolean's false and true, as in Kafka's own properties
    st.builds(lambda v: f"consumer.offset.sync.enable={v}", st.sampled_from(["", "x", "-5", "nan", "maybe", "0x10"])),
    st.builds(lambda v: f"mirror.compression.type={v}", st.sampled_from(["", "lz5", "brotli", "producer", "1"])),
    st.builds(lambda v: f"consumer.offset.groups.include={v}", st.sampled_from(["(", "[a", "*", "a{2,1}"])),
    st.text(string.ascii_lowercase + ". \n", min_size=1, max_size=10).filter(lambda p: "=" not in p),
)


def _other_commands(name: str, option: str) -> list[list[str]]:
    return [
        ["link", "create", "--source", "a:1", "--destination", "b:2", "--no-validate", "--", name],
        ["link", "create", "new", "--source", "a:1", "--destination", "b:2", "--no-validate", "-c", option],
        ["link", "alter", "dr", "-c", option],
        ["link", "create", "new", "--source", "a:1", "--destination", "b:2", "--no-validate",
         f"--source-setting={option.replace('=', '')}"],
    ]


@settings(max_examples=60, **SETTINGS)
@given(bad_link_names, bad_options, st.integers(0, 3))
def test_bad_link_names_options_and_settings_are_usage_errors(name, option, which):
    args = _other_commands(name, option)[which]
    assert_refused(run(args), 2)
