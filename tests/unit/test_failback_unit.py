"""Fail back without a broker: the reverse link (made, checked, recorded), the prefix
check of reverse-and-start, the divergent tails of truncate-and-restore, the side topic's
name and headers, which forward mirrors can be failed back, and the CLI refusals that
change nothing."""
import pytest

from kafka_mirrors import failback as fb
from kafka_mirrors.errors import ConflictError, UsageError
from kafka_mirrors.registry import ClusterSpec, Link, Registry
from kafka_mirrors.state import ACTIVE, STOPPED, MirrorRecord

IDS = {"forward_source": "src-id", "forward_destination": "dst-id",
       "reverse_source": "dst-id", "reverse_destination": "src-id"}


def _forward(name="dr", **options):
    return Link(name, ClusterSpec("src:9092", "/etc/src.properties"),
                ClusterSpec("dst:9092", config={"sasl.password": "${DST_PW}"}),
                dict(options), "src-id", "dst-id", "2025-01-01T00:00:00Z")


def _stopped(reason="promoted", parts=None, **extra):
    parts = parts if parts is not None else {"0": 10, "1": 7}
    stopped = {"reason": reason, "partitions": {p: {"destination_log_end_offset": o, "last_known_source_offset": o,
                                                    "records_possibly_lost": 0} for p, o in parts.items()}}
    stopped.update(extra)
    return MirrorRecord(link="dr", topic="s.orders", source_topic="orders", state=STOPPED, reason=reason,
                        partitions=2, stopped=stopped)


# ---------------------------------------------------------------- the reverse link

def test_reverse_link_swaps_clusters_and_drops_one_way_options():
    fwd = _forward(**{"mirror.topic.prefix": "s.", "request.timeout.s": "30", "link.principal": "User:linker",
                      "auto.create.mirror.topics.enable": "true", "consumer.offset.sync.ms": "1000"})
    rev = fb.reverse_link_for(fwd, "dr-reverse")
    assert (rev.name, rev.source, rev.destination) == ("dr-reverse", fwd.destination, fwd.source)
    assert (rev.source_cluster_id, rev.destination_cluster_id) == ("dst-id", "src-id")
    assert rev.options == {"request.timeout.s": "30", "consumer.offset.sync.ms": "1000"}
    rev.source.config["x"] = "y"  # a copy, not the forward link's own settings
    assert "x" not in fwd.destination.config
    assert fb.default_reverse_name("dr") == "dr-reverse"


def test_bad_reverse_link_name_is_a_usage_error():
    with pytest.raises(UsageError, match="bad reverse link name 'no/slash'"):
        fb.reverse_link_for(_forward(), "no/slash")


def test_reverse_link_must_join_the_clusters_the_other_way_round():
    fwd = _forward()
    rev = fb.reverse_link_for(fwd, "dr-reverse")
    assert fb.reverse_link_problem(fwd, rev, IDS) is None
    same_way = Link("same", fwd.source, fwd.destination)
    live = dict(IDS, reverse_source="src-id", reverse_destination="dst-id")
    assert fb.reverse_link_problem(fwd, same_way, live) == (
        "link 'same' is not the reverse of 'dr': its source is cluster src-id, the destination of 'dr' is "
        "cluster dst-id")
    # the forward link's source address now answers as another cluster
    moved = dict(IDS, forward_source="new-id", reverse_destination="new-id")
    assert fb.reverse_link_problem(fwd, rev, moved) == (
        "the source of link 'dr' now answers as cluster new-id, but the link was made with cluster src-id")


def test_resolve_creates_the_reverse_link_once_and_refuses_a_wrong_one(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "links.toml")
    with reg.update() as links:
        links["dr"] = _forward()
    monkeypatch.setattr(fb, "_live_ids", lambda forward, reverse, timeout: dict(IDS))
    link, created = fb.resolve_reverse_link(reg, reg.get("dr"), None)
    assert created and link.name == "dr-reverse"
    assert reg.get("dr-reverse").source.bootstrap == "dst:9092"
    assert reg.get("dr-reverse").destination_cluster_id == "src-id"
    link, created = fb.resolve_reverse_link(reg, reg.get("dr"), "dr-reverse")
    assert not created and link == reg.get("dr-reverse")

    with reg.update() as links:
        links["wrong"] = Link("wrong", ClusterSpec("src:9092"), ClusterSpec("dst:9092"))
    before = reg.path.read_bytes()
    monkeypatch.setattr(fb, "_live_ids", lambda forward, reverse, timeout:
                        dict(IDS, reverse_source="src-id", reverse_destination="dst-id"))
    with pytest.raises(ConflictError, match="link 'wrong' is not the reverse of 'dr'"):
        fb.resolve_reverse_link(reg, reg.get("dr"), "wrong")
    with pytest.raises(UsageError, match="cannot be 'dr' itself"):
        fb.resolve_reverse_link(reg, reg.get("dr"), "dr")
    assert reg.path.read_bytes() == before


# ---------------------------------------------------------------- offsets

def test_stop_points_come_from_the_stopped_record():
    assert fb.stop_points(_stopped()) == {0: 10, 1: 7}
    assert fb.stop_points(MirrorRecord(link="dr", topic="t", source_topic="t")) == {}


@pytest.mark.parametrize("old,new,problems", [
    ({0: 10, 1: 7}, {0: 10, 1: 9}, []),
    ({0: 12, 1: 7}, {0: 15, 1: 7},
     ["partition 0: log end offset 12 is past the stop offset 10 (2 record(s) or markers written after the stop)"]),
    ({0: 10, 1: 5}, {0: 10, 1: 7},
     ["partition 1: log end offset 5 is behind the stop offset 7 (the old topic lost records since)"]),
    ({0: 10, 1: 7, 2: 0}, {0: 10, 1: 7},
     ["the old topic has 3 partitions, the new primary's 2", "partition 2: no stop offset was recorded"]),
    ({0: 10}, {0: 10, 1: 7, 2: 3}, []),  # the new primary grew partitions: the worker adds them
])
def test_prefix_problems(old, new, problems):
    assert fb.prefix_problems({0: 10, 1: 7}, old, new) == problems


def test_divergent_tails_are_the_records_at_or_past_the_stop():
    assert fb.divergent_tails({0: 10, 1: 7, 2: 0}, {0: 10, 1: 9, 2: 4}) == {1: (7, 9), 2: (0, 4)}
    assert fb.divergent_tails({0: 10}, {0: 10}) == {}


def test_side_topic_name_and_headers():
    assert fb.side_topic_name("orders", 1_795_000_000) == "orders.diverged-20261118T110640Z"
    assert len(fb.side_topic_name("x" * 249, 0)) == 249
    headers = [("dup", b"a"), ("dup", None), ("h", b"")]
    assert fb.diverged_headers(headers, "orders", 3, 42) == headers + [
        ("kafka-mirrors.diverged.topic", b"orders"), ("kafka-mirrors.diverged.partition", b"3"),
        ("kafka-mirrors.diverged.offset", b"42")]
    assert fb.diverged_headers(None, "t", 0, 0)[0] == ("kafka-mirrors.diverged.topic", b"t")


# ---------------------------------------------------------------- which mirrors

def test_which_forward_mirrors_can_be_failed_back():
    assert fb.selectable(_stopped(), "reverse-and-start") is None
    assert fb.selectable(_stopped("failed over"), "truncate-and-restore") is None
    assert fb.selectable(_stopped(), "truncate-and-restore") is None  # a promoted topic that diverged later
    why = fb.selectable(_stopped("failed over"), "reverse-and-start")
    assert why.startswith("mirror 's.orders' was failed over, not promoted")
    assert "run 'kafka-mirrors truncate-and-restore s.orders --link dr'" in why
    active = MirrorRecord(link="dr", topic="t", source_topic="t", state=ACTIVE)
    assert fb.selectable(active, "reverse-and-pause") == \
        "mirror 't' is ACTIVE; reverse-and-pause needs STOPPED (promote or fail over first)"
    done = _stopped(reversed={"command": "reverse-and-start", "link": "dr-reverse", "topic": "orders"})
    assert fb.selectable(done, "truncate-and-restore") == (
        "mirror 's.orders' was failed back already (reverse-and-start): 'orders' is a mirror on link 'dr-reverse'")
    assert fb.selectable(_stopped(parts={}), "reverse-and-start") == "mirror 's.orders' has no recorded stop offsets"


# ---------------------------------------------------------------- CLI refusals

@pytest.fixture
def registry_with_link(registry_path):
    reg = Registry(registry_path)
    with reg.update() as links:
        links["dr"] = Link("dr", ClusterSpec("127.0.0.1:1"), ClusterSpec("127.0.0.1:2"))
    return reg


@pytest.mark.parametrize("cmd", [["truncate-and-restore"], ["reverse-and-start"], ["mirror", "reverse-and-pause"]])
def test_no_terminal_without_yes_changes_nothing(cli, registry_with_link, cmd):
    before = registry_with_link.path.read_bytes()
    r = cli(*cmd, "orders", "--link", "dr")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: nothing done ({cmd[-1]}): confirmation needed but there is no terminal; "
                               f"pass --yes")
    assert registry_with_link.path.read_bytes() == before


def test_topics_and_all_together_is_a_usage_error(cli, registry_with_link):
    r = cli("reverse-and-start", "orders", "--all", "--link", "dr", "--yes")
    assert r.exit_code == 2 and "give TOPIC... or --all, not both" in r.stderr
    r = cli("truncate-and-restore", "--link", "dr", "--yes")
    assert r.exit_code == 2 and "nothing to truncate-and-restore: give TOPIC... or --all" in r.stderr
    assert "dr-reverse" not in registry_with_link.links()


def _restore_run(monkeypatch, managed: bool):
    """_restore_one's first run with every cluster call replaced: the order of the steps
    that matter (the old topic's last check, its fence, its deletion) and the notes."""
    from types import SimpleNamespace

    from kafka_mirrors.kafka import topics as kt
    steps = []
    info = SimpleNamespace(partitions=1, topic_id="id-1")
    rec = MirrorRecord(link="dr", topic="orders", source_topic="orders", state=STOPPED, source_topic_id="id-1",
                       stopped={"partitions": {"0": {"destination_log_end_offset": 5}}})

    class ReadOnly:
        def check(self, topic):
            pass

        def managed(self):
            return managed

        def make_read_only(self, topic, recorded=()):
            steps.append(("read-only", topic))
            return list(recorded), SimpleNamespace(warnings=[])

    ctx = SimpleNamespace(read_only=ReadOnly(), notes=[], old=SimpleNamespace(label="old source x"),
                          new=SimpleNamespace(label="new"), reverse=SimpleNamespace(name="dr-back", option=lambda k: "1"),
                          forward=SimpleNamespace(name="dr", source=SimpleNamespace(client_config=lambda: {})),
                          fwd_store=SimpleNamespace(set_state=lambda *a, **k: rec), timeout=1.0,
                          ensure_link=lambda: None)
    monkeypatch.setattr(fb, "_check_not_mirrored", lambda *a: None)
    monkeypatch.setattr(fb, "_describe", lambda admin, topic: info)
    monkeypatch.setattr(fb, "_start_points", lambda *a: (info, info, {0: 9}, {0: 5}))
    monkeypatch.setattr(fb, "_ends", lambda admin, topic, *a, **k: {0: 4} if "diverged" in topic else {0: 9})
    monkeypatch.setattr(fb, "_create_topic", lambda admin, topic, *a, **k: steps.append(("create", topic)))
    monkeypatch.setattr(fb, "copy_tails", lambda *a: {0: 4})
    monkeypatch.setattr(kt, "topic_overrides", lambda *a: {})
    monkeypatch.setattr(fb, "_refuse_if_grown", lambda *a: steps.append(("last check", "orders")))
    monkeypatch.setattr(fb, "_delete_topic", lambda admin, topic: steps.append(("delete", topic)))
    monkeypatch.setattr(fb, "_record_reverse", lambda *a, **k: None)
    monkeypatch.setattr(fb, "_row", lambda rec, ctx, **kw: kw)
    fb._restore_one(ctx, None, rec)
    return [s for s in steps if s[1] == "orders"], ctx.notes


def test_truncate_and_restore_fences_the_old_topic_before_its_last_check_and_deletion(monkeypatch):
    # issue 11: the old topic was checked, the save recorded, then deleted, with no fence in
    # between: a producer still writing there lost what it wrote in that window
    steps, notes = _restore_run(monkeypatch, managed=True)
    assert steps == [("read-only", "orders"), ("last check", "orders"), ("delete", "orders"),
                     ("read-only", "orders"), ("create", "orders")]
    assert not any("cannot be fenced" in n for n in notes)


def test_truncate_and_restore_without_an_authorizer_says_writers_must_be_stopped(monkeypatch):
    steps, notes = _restore_run(monkeypatch, managed=False)
    assert ("last check", "orders") in steps
    assert any("cannot be fenced" in n and "stop them" in n for n in notes), notes
