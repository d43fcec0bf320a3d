"""The broker-free parts of tests/mirrortools.py: the record generator and the snapshot
comparison that assert_identical reports from."""
import pytest

from tests.mirrortools import DAY_MS, MIB, Stored, compare_snapshots, make_records, wait_until

NOW = 1_700_000_000_000


def test_same_seed_same_records_other_seed_other_records():
    assert make_records(200, seed=3, now_ms=NOW) == make_records(200, seed=3, now_ms=NOW)
    assert make_records(200, seed=3, now_ms=NOW) != make_records(200, seed=4, now_ms=NOW)


def test_records_cover_the_awkward_cases():
    rs = make_records(140, seed=1, now_ms=NOW)
    keys = [r.key for r in rs]
    values = [r.value for r in rs]
    assert None in keys and b"" in keys and any(k for k in keys)
    assert None in values and b"" in values and any(v and len(v) > 100 for v in values)
    headers = [r.headers for r in rs]
    assert [] in headers
    assert any(len([n for n, _ in h if n == "dup"]) >= 2 for h in headers)
    assert any(v is None for h in headers for _, v in h)
    ages = [NOW - r.timestamp_ms for r in rs]
    assert min(ages) >= 0, "no timestamp may lie in the future"
    assert max(ages) <= 3 * DAY_MS and any(a >= DAY_MS for a in ages)
    # no big values unless asked for
    assert max(len(v or b"") for v in values) < MIB


def test_big_every_puts_one_mib_values_at_every_kth_record():
    rs = make_records(30, seed=2, big_every=10, now_ms=NOW)
    big = [i for i, r in enumerate(rs) if r.value is not None and len(r.value) == MIB]
    assert big == [9, 19, 29]


def _s(offset, value=b"v", key=b"k", headers=(), ts=1):
    return Stored(offset, key, value, list(headers), 1, ts)


def test_identical_snapshots_have_no_difference():
    snap = [_s(0), _s(1, headers=[("dup", b"1"), ("dup", None)]), _s(5, value=None)]
    assert compare_snapshots(0, snap, list(snap)) == ([], 0)


def test_each_field_difference_is_named_with_partition_and_offset():
    src = [_s(0), _s(1), _s(2), _s(3)]
    dst = [_s(0), _s(1, value=b"w"), _s(2, headers=[("a", b"1")]), _s(3, key=None, ts=2)]
    msgs, total = compare_snapshots(4, src, dst)
    assert total == 3
    assert msgs[0] == "partition 4 offset 1: value b'v' != b'w'"
    assert msgs[1] == "partition 4 offset 2: headers [] != [('a', b'1')]"
    assert msgs[2] == "partition 4 offset 3: key b'k' != None; timestamp 1 != 2"


def test_header_order_matters():
    src = [_s(0, headers=[("a", b"1"), ("a", b"2")])]
    dst = [_s(0, headers=[("a", b"2"), ("a", b"1")])]
    assert compare_snapshots(0, src, dst)[1] == 1


def test_missing_and_extra_offsets_are_reported_and_only_five_shown():
    src = [_s(o) for o in range(10)]
    dst = [_s(o) for o in (0, 1, 2)] + [_s(12)]
    msgs, total = compare_snapshots(0, src, dst)
    assert total == 8  # offsets 3..9 only on the source, 12 only on the destination
    assert len(msgs) == 5
    assert msgs[0] == "partition 0 offset 3: on the source only"


def test_big_values_are_summarised_not_dumped():
    msgs, _ = compare_snapshots(0, [_s(0, value=b"a" * MIB)], [_s(0, value=b"b" * MIB)])
    assert len(msgs[0]) < 200 and "1048576 bytes sha1" in msgs[0]


def test_wait_until_returns_the_value_or_names_what_it_waited_for():
    calls = iter([0, 0, 7])
    assert wait_until(lambda: next(calls), 5, "three calls", interval=0) == 7
    with pytest.raises(AssertionError, match="waiting for never"):
        wait_until(lambda: False, 0.05, "never", interval=0.01)
