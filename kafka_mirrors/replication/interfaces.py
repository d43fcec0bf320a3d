"""The two small interfaces the per-partition copier talks to (docs/architecture.md section 3).

    source (read_committed) --fetch--> copier --plan--> sink (destination partition)

Everything here is in Kafka's own words: log start offset, last stable offset (LSO),
high watermark, log end offset (LEO). The destination partition's log end offset is the
checkpoint: the next source offset to copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Sequence

Headers = tuple[tuple[str, bytes | None], ...]


class Record(NamedTuple):
    """One source record as a read_committed consumer sees it. Headers keep their order
    and duplicates; key/value None stays None and b"" stays b"". A NamedTuple, not a
    dataclass: one is made per copied record, and a tuple is made several times faster."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # milliseconds since the epoch; written to the mirror as CreateTime
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class SourceOffsets:
    log_start_offset: int
    last_stable_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one fetch returned. `records` are in offset order, all at or after the
    position. `end_offset`, when set, says the fetch reached the end of what
    read_committed can see (the last stable offset at that moment): there is no visible
    record between the last returned record (or the position, if none) and end_offset."""

    records: Sequence[Record]
    end_offset: int | None = None
    # Optional (added by the replication core): the partition's high watermark as the same
    # fetch saw it. The copier acts on end_offset only when nothing unstable lies beyond it
    # (end_offset == high watermark); without this field it asks offsets() when idle.
    high_watermark: int | None = None


class PartitionSource(Protocol):
    def offsets(self) -> SourceOffsets:
        """Fresh ListOffsets: log start offset, last stable offset, high watermark."""

    def seek(self, offset: int) -> None:
        """Next fetch starts at `offset` (clamped by Kafka to the log start offset)."""

    def fetch(self, max_records: int, timeout: float) -> FetchResult:
        """Up to max_records read_committed records from the position on; may return no
        records (idle) within `timeout` seconds."""

    def read_range(self, start: int, end: int) -> list[Record]:
        """The read_committed records with start <= offset < end (for the tail check)."""

    # Optional (the copier uses it at every gap when the source has it; else offsets()):
    def log_start_offset(self) -> int:
        """Fresh ListOffsets earliest only: one request instead of the three of offsets()."""


class Confirmation(NamedTuple):
    """A delivery report: the source offset a write copies and the offset the destination
    assigned (None with an error message when the write failed). One per copied record."""

    expected_offset: int
    assigned_offset: int | None
    error: str | None = None


class Reports(NamedTuple):
    """The delivery reports of fast-path writes taken at once. The sink checks each report
    as it arrives against the source offset its record copies (docs/architecture.md section 3,
    invariant 4) and hands back a tally plus every report that failed the check, so the
    copier does no per-record work for the reports that passed."""

    count: int  # reports taken, good and bad
    last_expected: int | None = None  # the source offset the last of them copies
    mismatches: tuple[Confirmation, ...] = ()  # an error, or an offset other than expected; in order
    bytes: int = 0  # keys and values of the records these reports confirm (0: not counted)

    @staticmethod
    def of(confirmations: Sequence[Confirmation]) -> "Reports":
        """Check a list of single reports (for sinks that collect them one by one)."""
        if not confirmations:
            return NO_REPORTS
        bad = tuple(c for c in confirmations
                    if c.error is not None or c.assigned_offset != c.expected_offset)
        return Reports(len(confirmations), confirmations[-1].expected_offset, bad)


NO_REPORTS = Reports(0)


class PartitionSink(Protocol):
    def log_end_offset(self) -> int:
        """Fresh ListOffsets latest of the destination partition (counts markers)."""

    def log_start_offset(self) -> int: ...

    def produce(self, records: Sequence[Record]) -> int | None:
        """Fast path: append through the idempotent (non-transactional) producer,
        asynchronously. Each record is expected to land at record.offset. `records` may be
        a sequence the source made (a sink may recognise its own kind and skip Record).
        May return the bytes of the records' keys and values (for the metrics)."""

    def confirmations(self) -> Reports:
        """Delivery reports that arrived since the last call, checked (serves the poll loop)."""

    def flush(self, timeout: float) -> Reports:
        """Wait until every produced record is confirmed; return the checked reports."""

    def commit_one(self, record: Record) -> Confirmation:
        """Write `record` alone in a transaction and commit it: its commit marker lands on
        record.offset + 1. Returns once the destination log end offset shows the marker."""

    def markers_supported(self) -> bool:
        """Whether `marker` can take a single offset on this partition now: the destination
        broker refuses the one record a marker-only transaction sends (a compacted topic
        refuses a null key; a CreateTime topic whose message.timestamp.after.max.ms is
        finite refuses a timestamp at the end of time)."""

    def submit_gap(self, offset: int, fillers: int = 0) -> object:
        """Begin writing an aborted transaction that takes offsets `offset` to `offset +
        fillers` and nothing else: `fillers` filler records (one produce batch) and the
        abort marker after them; with no fillers, a marker-only transaction (it adds the
        partition, its one record is refused, see markers_supported): the marker alone
        takes `offset`. A crash anywhere in it leaves the marker where planned (the broker,
        or the next copier's fence, aborts it), with the fillers that landed. Returns at
        once, a handle for gap_result; the copier submits only once every write before
        `offset` is confirmed, and writes nothing more to the partition until it is done."""

    def gap_result(self, job: object) -> Confirmation | None:
        """None while the gap is being written; then its Confirmation for `offset`
        (assigned_offset is `offset` once the log end offset shows the marker, or where a
        record of it wrongly landed), or the error it ended with, raised (the copier backs
        off)."""

    def fill(self, first_offset: int, count: int) -> Confirmation:
        """`count` non-transactional filler records starting at first_offset (used before
        delete_records_before, where they vanish). Waits for their delivery. The
        Confirmation is for the first filler."""

    def delete_records_before(self, offset: int) -> None:
        """DeleteRecords: move the destination's log start offset to `offset`."""

    def read_committed_range(self, start: int, end: int) -> list[Record]:
        """The read_committed records on the destination with start <= offset < end."""

    # Optional (the copier calls it first thing in start() when the sink has it):
    def close_open_transaction(self) -> None:
        """End what an earlier writer of this partition left open, before the copier reads
        its checkpoint: if the destination partition has an open transaction (its last
        stable offset is below its log end offset), initialise the transactional producer
        (same transactional.id: it fences the old one and the broker aborts its
        transaction) and return once the abort marker is on the log. Without this, a
        transaction left open by a crash is aborted only when transaction.timeout.ms
        expires, and its marker would land in the middle of the new copier's writes.
        Must be cheap and harmless when nothing is open (it may be called twice)."""


@dataclass
class PartitionProgress:
    """What the copier reports after each step (for describe and the state store)."""

    next_offset: int = 0  # next source offset to copy == destination log end offset
    records_copied: int = 0
    records_fetched: int = 0
    bytes_fetched: int = 0   # keys and values of the fetched records handed to the sink
    bytes_copied: int = 0    # keys and values of the records copied (Reports.bytes)
    fillers_written: int = 0
    offsets_lost_to_source_retention: int = 0
    last_error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
