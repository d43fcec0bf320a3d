"""The link registry file: round trip, validation naming the bad key, atomic locked
writes, corrupt files left alone."""
import os
import stat
import threading

import pytest

from kafka_mirrors.errors import ConfigError, NotFoundError, RegistryError
from kafka_mirrors.registry import ClusterSpec, Link, Registry, default_registry_path, serialize


def _link(name="dr", **options):
    return Link(name, ClusterSpec("src:9092", "/etc/src.properties"),
                ClusterSpec("dst:9092", config={"sasl.password": "${DST_PW}"}),
                dict(options), "src-id", "dst-id", "2025-01-01T00:00:00Z")


def test_round_trip_and_mode(tmp_path):
    reg = Registry(tmp_path / "sub" / "links.toml")
    with reg.update() as links:
        links["dr"] = _link(**{"mirror.topic.prefix": "s."})
    assert reg.get("dr") == _link(**{"mirror.topic.prefix": "s."})
    assert stat.S_IMODE(os.stat(reg.path).st_mode) == 0o600
    text = reg.path.read_text()
    assert text.startswith("version = 1\n")
    assert '"sasl.password" = "${DST_PW}"' in text


def test_typed_options_and_defaults():
    link = _link(**{"consumer.offset.sync.enable": "false", "consumer.offset.groups.include": "a.*, b"})
    assert link.option("consumer.offset.sync.enable") is False
    assert link.option("consumer.offset.groups.include") == ["a.*", "b"]
    assert link.option("request.timeout.s") == 15.0
    assert link.option("replication.factor") == -1


def test_get_unknown_link(tmp_path):
    with pytest.raises(NotFoundError) as e:
        Registry(tmp_path / "links.toml").get("nope")
    assert str(e.value) == "link 'nope' not found; run 'kafka-mirrors link list'"


def test_path_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_MIRRORS_REGISTRY", str(tmp_path / "r.toml"))
    assert Registry(None).path == tmp_path / "r.toml"
    monkeypatch.delenv("KAFKA_MIRRORS_REGISTRY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_registry_path() == tmp_path / "cfg" / "kafka-mirrors" / "links.toml"


GOOD = serialize({"dr": _link()}).decode()


@pytest.mark.parametrize("text,names", [
    ("version = [", "not valid TOML"),
    ("version = 2\n", "version is 2"),
    ('version = "1"\n', "version must be an integer"),
    ("links = {}\n", "version is missing"),
    ("version = 1\nlinks = 3\n", "links must be a table"),
    ("version = 1\nextra = 3\n", "extra is not a known key"),
    (GOOD.replace('bootstrap = "src:9092"', "bootstrap = 9092"), "links.dr.source.bootstrap must be a string"),
    (GOOD.replace('bootstrap = "src:9092"', 'bootsrap = "src:9092"'), "links.dr.source.bootsrap is not a known key"),
    (GOOD.replace('"sasl.password" = "${DST_PW}"', '"sasl.password" = 5'),
     "links.dr.destination.config.sasl.password must be a string"),
    (GOOD + '\n[links.dr.options]\n"no.such" = "1"\n', "links.dr.options.no.such is invalid (unknown link option"),
    (GOOD + '\n[links.dr.options]\n"replication.factor" = "0"\n', "links.dr.options.replication.factor is invalid"),
])
def test_bad_files_name_the_key_and_are_never_overwritten(tmp_path, text, names):
    reg = Registry(tmp_path / "links.toml")
    reg.path.write_text(text)
    before = reg.path.read_bytes()
    with pytest.raises(RegistryError, match=names.replace("(", r"\(").replace("[", r"\[")):
        reg.links()
    with pytest.raises(RegistryError):
        with reg.update() as links:
            links["other"] = _link("other")
    assert reg.path.read_bytes() == before


def test_failed_update_writes_nothing(tmp_path):
    reg = Registry(tmp_path / "links.toml")
    with reg.update() as links:
        links["dr"] = _link()
    before = reg.path.read_bytes()
    with pytest.raises(ConfigError):
        with reg.update() as links:
            links["dr"].options["bogus"] = "1"
    assert reg.path.read_bytes() == before
    with pytest.raises(KeyError):
        with reg.update() as links:
            links["x"] = _link("x")
            raise KeyError("boom")
    assert reg.path.read_bytes() == before


def test_concurrent_updates_in_threads_lose_nothing(tmp_path):
    # each thread builds its own Registry (FileLock instances are per object), as processes do
    path = tmp_path / "links.toml"

    def add(i):
        with Registry(path).update() as links:
            links[f"l{i}"] = _link(f"l{i}")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(Registry(path).links()) == sorted(f"l{i}" for i in range(16))


def test_regex_lists_split_at_commas_outside_quantifiers_and_classes():
    from kafka_mirrors.registry import _parse_regexes
    assert _parse_regexes("a{2,5},b") == ["a{2,5}", "b"]
    assert _parse_regexes("[a,b]x, c ") == ["[a,b]x", "c"]
    # found by the generated bad inputs: split at its comma, 'a{2,1}' passed as 'a{2' and '1}'
    with pytest.raises(ValueError, match=r"'a\{2,1\}' is not a regular expression"):
        _parse_regexes("a{2,1}")
