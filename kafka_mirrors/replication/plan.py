"""Write planning for the per-partition copier (docs/architecture.md section 3), as pure functions.

Kafka gives clients no way to choose the offset of a write, so every offset the source
shows nothing at (a transaction marker, an aborted record, a compacted record, a record
deleted by retention) must be consumed on the destination by something a read_committed
reader does not see. `dense_run_end` finds where the fast path (plain produce) ends;
`plan_gap` turns one gap into the writes of the DESIGN table:

    held record r, gap of 1 after it     -> PRODUCE_HELD r, MARKER        (markers: True)
                                         -> COMMIT_HELD    r alone in a committed transaction
    held record r, gap of g >= 2         -> PRODUCE_HELD r, ABORT_FILLERS g-1 (+ abort marker)
    source log start moved past the gap  -> SKIP_LOST      fillers, then DeleteRecords
    gap with no record before it to carry a marker:
        g >= 2                           -> ABORT_FILLERS g-1
        g == 1                           -> MARKER                         (markers: True)
                                         -> LONE_OFFSET    (the copier decides, see there)

MARKER is a transaction that holds the partition but appends no record to it (its one
write is refused by the destination broker), aborted: its marker alone takes the offset.
A crash inside it leaves exactly that marker, so it is what a gap of 1 uses wherever the
sink can write one (`markers`); with COMMIT_HELD, the fallback, a crash that aborts it
leaves r invisible under the copy (the copier's next start then fails the partition).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

from kafka_mirrors.replication.interfaces import Record

PRODUCE_HELD = "produce_held"
COMMIT_HELD = "commit_held"
ABORT_FILLERS = "abort_fillers"
SKIP_LOST = "skip_lost"
LONE_OFFSET = "lone_offset"
MARKER = "marker"


class Action(NamedTuple):
    kind: str
    offset: int  # the destination offset the action starts at
    count: int = 0  # fillers (ABORT_FILLERS) or offsets skipped (SKIP_LOST)


def dense_run_end(records: Sequence[Record], start: int) -> int:
    """The index just past the run of consecutive offsets that begins at records[start].

    Offsets strictly increase, so offset - index never decreases and is constant exactly
    on a dense run: one comparison settles the common all-dense fetch, a binary search
    finds the end of a run otherwise (no per-record work on the hot path)."""
    last = len(records) - 1
    base = records[start].offset - start
    if records[last].offset - last == base:
        return last + 1
    lo, hi = start, last  # records[lo] is in the run, records[hi] is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if records[mid].offset - mid == base:
            lo = mid
        else:
            hi = mid
    return hi


def plan_gap(next_offset: int, following: int, *, holding: bool, source_log_start: int,
             markers: bool | Callable[[], bool] = False) -> list[Action]:
    """The writes that take the destination from `next_offset` to `following`, the next
    offset known to come after (a visible record, or the source's last stable offset).

    holding: a record is held back at next_offset (the gap starts after it); otherwise the
    gap starts at next_offset itself. source_log_start: the source's log start offset now;
    offsets of the gap below it were deleted by retention and are skipped (and counted).
    markers: the sink can take a single offset with a marker-only transaction (MARKER);
    a callable is asked only when a gap of exactly 1 needs the answer."""
    def use_markers() -> bool:
        return bool(markers()) if callable(markers) else bool(markers)

    actions: list[Action] = []
    position = next_offset
    if holding:
        gap_start = position + 1
        gap = following - gap_start
        if source_log_start > gap_start:
            # Part of the gap is retention, not markers: copy r plainly and skip the rest.
            actions.append(Action(PRODUCE_HELD, position))
        elif gap == 0:
            return [Action(PRODUCE_HELD, position)]
        elif gap == 1:
            if use_markers():
                return [Action(PRODUCE_HELD, position), Action(MARKER, gap_start)]
            return [Action(COMMIT_HELD, position)]
        else:
            return [Action(PRODUCE_HELD, position), Action(ABORT_FILLERS, gap_start, gap - 1)]
        position = gap_start
    if source_log_start > position:
        skip_to = min(source_log_start, following)
        actions.append(Action(SKIP_LOST, position, skip_to - position))
        position = skip_to
    gap = following - position
    if gap >= 2:
        actions.append(Action(ABORT_FILLERS, position, gap - 1))
    elif gap == 1:
        actions.append(Action(MARKER if use_markers() else LONE_OFFSET, position))
    return actions
