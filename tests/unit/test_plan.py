"""The write plan for gaps (DESIGN.md section 4 table) and the dense-run finder."""
from __future__ import annotations

import random

import pytest

from kafka_mirrors.replication.interfaces import Record
from kafka_mirrors.replication.plan import (
    ABORT_FILLERS,
    COMMIT_HELD,
    LONE_OFFSET,
    MARKER,
    PRODUCE_HELD,
    SKIP_LOST,
    Action,
    dense_run_end,
    plan_gap,
)


def records(*offsets: int) -> list[Record]:
    return [Record(o, None, b"v", 0) for o in offsets]


def test_dense_run_end_whole_fetch_dense():
    assert dense_run_end(records(5, 6, 7, 8), 0) == 4
    assert dense_run_end(records(5), 0) == 1


def test_dense_run_end_stops_at_each_gap():
    rs = records(0, 1, 2, 4, 5, 9, 20, 21)
    assert dense_run_end(rs, 0) == 3
    assert dense_run_end(rs, 3) == 5
    assert dense_run_end(rs, 5) == 6
    assert dense_run_end(rs, 6) == 8


def test_dense_run_end_matches_a_linear_scan():
    rng = random.Random(7)
    for _ in range(300):
        offsets, o = [], rng.randint(0, 5)
        for _ in range(rng.randint(1, 60)):
            offsets.append(o)
            o += 1 if rng.random() < 0.8 else rng.randint(2, 4)
        rs = records(*offsets)
        start = rng.randrange(len(rs))
        end = start + 1
        while end < len(rs) and rs[end].offset == rs[end - 1].offset + 1:
            end += 1
        assert dense_run_end(rs, start) == end


@pytest.mark.parametrize(
    "next_offset, following, holding, log_start, expected",
    [
        # held record at 10, commit marker at 11
        (10, 12, True, 0, [Action(COMMIT_HELD, 10)]),
        # held record at 10, aborted transaction 11..13 + marker 14: 4 offsets = 3 fillers + abort marker
        (10, 15, True, 0, [Action(PRODUCE_HELD, 10), Action(ABORT_FILLERS, 11, 3)]),
        # held record at 10, next record right after it
        (10, 11, True, 0, [Action(PRODUCE_HELD, 10)]),
        # nothing held: a gap of 2 can be an aborted transaction of 1 filler
        (10, 12, False, 0, [Action(ABORT_FILLERS, 10, 1)]),
        # nothing held: a single empty offset cannot carry a marker alone
        (10, 11, False, 0, [Action(LONE_OFFSET, 10)]),
        # empty destination, source log start 100, first record at 100
        (0, 100, False, 100, [Action(SKIP_LOST, 0, 100)]),
        # retention ate 11..49 after the held record 10; 50 is a marker before record 51
        (10, 51, True, 50, [Action(PRODUCE_HELD, 10), Action(SKIP_LOST, 11, 39), Action(LONE_OFFSET, 50)]),
        # retention ate up to 60 and more: skip only up to the next known offset
        (10, 40, False, 60, [Action(SKIP_LOST, 10, 30)]),
        # log start moved only onto the held record's successor: plain plan
        (10, 12, True, 11, [Action(COMMIT_HELD, 10)]),
        # nothing held, retention to 20, then an aborted transaction 20..22
        (10, 23, False, 20, [Action(SKIP_LOST, 10, 10), Action(ABORT_FILLERS, 20, 2)]),
    ],
)
def test_plan_gap_follows_the_design_table(next_offset, following, holding, log_start, expected):
    assert plan_gap(next_offset, following, holding=holding, source_log_start=log_start) == expected


@pytest.mark.parametrize(
    "next_offset, following, holding, log_start, expected",
    [
        # held record at 10, commit marker at 11: r the fast path, a marker-only transaction at 11
        (10, 12, True, 0, [Action(PRODUCE_HELD, 10), Action(MARKER, 11)]),
        # nothing held: a single empty offset takes a marker alone
        (10, 11, False, 0, [Action(MARKER, 10)]),
        (10, 51, True, 50, [Action(PRODUCE_HELD, 10), Action(SKIP_LOST, 11, 39), Action(MARKER, 50)]),
        # gaps of 2 and more are unchanged: fillers and their abort marker
        (10, 15, True, 0, [Action(PRODUCE_HELD, 10), Action(ABORT_FILLERS, 11, 3)]),
        (10, 12, False, 0, [Action(ABORT_FILLERS, 10, 1)]),
    ],
)
def test_plan_gap_with_markers(next_offset, following, holding, log_start, expected):
    assert plan_gap(next_offset, following, holding=holding, source_log_start=log_start,
                    markers=True) == expected


@pytest.mark.parametrize("markers", [False, True])
def test_plan_gap_always_covers_the_gap_exactly(markers):
    """Whatever the inputs, the planned writes take the destination exactly to `following`;
    with markers, no record is ever written inside a transaction that could be aborted."""
    rng = random.Random(11)
    for _ in range(2000):
        nxt = rng.randint(0, 50)
        holding = rng.random() < 0.5
        following = nxt + (1 if holding else 0) + rng.randint(0, 6)
        log_start = rng.randint(0, following)
        position = nxt
        for a in plan_gap(nxt, following, holding=holding, source_log_start=log_start, markers=markers):
            assert a.offset == position
            if markers:
                assert a.kind not in (COMMIT_HELD, LONE_OFFSET)
            if a.kind == PRODUCE_HELD:
                position += 1
            elif a.kind == COMMIT_HELD:
                position += 2
            elif a.kind == ABORT_FILLERS:
                assert a.count >= 1
                position += a.count + 1
            elif a.kind == SKIP_LOST:
                assert a.count >= 1 and a.offset + a.count <= max(log_start, a.offset)
                position += a.count
            elif a.kind in (LONE_OFFSET, MARKER):
                position += 1
        assert position == following


def test_plan_gap_asks_whether_markers_can_be_written_only_for_a_gap_of_one():
    asked = []

    def markers():
        asked.append(1)
        return True
    assert plan_gap(10, 15, holding=True, source_log_start=0, markers=markers) == \
        [Action(PRODUCE_HELD, 10), Action(ABORT_FILLERS, 11, 3)]
    assert plan_gap(10, 11, holding=True, source_log_start=0, markers=markers) == [Action(PRODUCE_HELD, 10)]
    assert not asked  # a configs lookup per gap of 2 or more would cost the copy thread
    assert plan_gap(10, 11, holding=False, source_log_start=0, markers=markers) == [Action(MARKER, 10)]
    assert asked == [1]
