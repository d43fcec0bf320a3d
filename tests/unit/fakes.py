"""In-memory fakes of one Kafka partition log and of the PartitionSource / PartitionSink
the copier talks to.

FakePartitionLog behaves like a Kafka partition where it matters to offsets: it assigns
offsets itself (a writer cannot choose them), a transaction marker takes one offset,
records of aborted transactions stay in the log but read_committed never shows them,
read_committed shows nothing at or beyond the last stable offset (the first offset of the
earliest open transaction), DeleteRecords moves the log start offset (and refuses to go
past the high watermark), and compaction removes records leaving gaps.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from kafka_mirrors.replication.interfaces import Confirmation, FetchResult, Headers, Record, Reports, SourceOffsets

FILLER_HEADER = "kafka-mirrors.filler"


class SimulatedCrash(Exception):
    """The process died in the middle of a sink call."""


@dataclass
class _Entry:
    offset: int
    record: Record | None  # None: a transaction marker (control record)
    txn: int | None = None  # the transaction it belongs to; None: not transactional


class FakePartitionLog:
    def __init__(self, log_start_offset: int = 0):
        self._entries: list[_Entry] = []
        self._offsets: list[int] = []  # parallel to _entries, for bisect
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_start_offset
        self._open: dict[int, int] = {}  # transaction -> its first offset
        self._aborted: set[int] = set()
        self._next_txn = 1

    # -- writes -------------------------------------------------------------------------

    def append(self, key: bytes | None = None, value: bytes | None = None, timestamp: int = 0,
               headers: Headers = (), txn: int | None = None) -> int:
        offset = self.log_end_offset
        if txn is not None:
            assert txn in self._open or txn not in self._aborted, "write to a finished transaction"
            self._open.setdefault(txn, offset)
        record = Record(offset, key, value, timestamp, tuple(headers))
        self._entries.append(_Entry(offset, record, txn))
        self._offsets.append(offset)
        self.log_end_offset = offset + 1
        return offset

    def append_like(self, record: Record, txn: int | None = None) -> int:
        """Append the content of `record`; its offset is ignored, the log assigns one."""
        return self.append(record.key, record.value, record.timestamp, record.headers, txn)

    def begin(self) -> int:
        txn = self._next_txn
        self._next_txn += 1
        return txn

    def add_to(self, txn: int) -> None:
        """AddPartitionsToTxn with no record appended (Kafka writes the marker anyway)."""
        self._open.setdefault(txn, self.log_end_offset)

    def commit(self, txn: int) -> int:
        return self._end(txn, aborted=False)

    def abort(self, txn: int) -> int:
        return self._end(txn, aborted=True)

    def _end(self, txn: int, *, aborted: bool) -> int:
        # like Kafka, an ending transaction that never wrote here leaves no marker
        if txn not in self._open:
            return self.log_end_offset
        del self._open[txn]
        if aborted:
            self._aborted.add(txn)
        offset = self.log_end_offset
        self._entries.append(_Entry(offset, None, txn))
        self._offsets.append(offset)
        self.log_end_offset = offset + 1
        return offset

    def abort_open(self) -> list[int]:
        """What the broker does to transactions of a fenced (or timed-out) producer."""
        return [self.abort(txn) for txn in sorted(self._open)]

    def delete_records_before(self, offset: int) -> None:
        if offset > self.high_watermark:
            raise ValueError(f"OFFSET_OUT_OF_RANGE: DeleteRecords to {offset} beyond the high watermark {self.high_watermark}")
        if offset <= self.log_start_offset:
            return
        cut = bisect.bisect_left(self._offsets, offset)
        del self._entries[:cut]
        del self._offsets[:cut]
        self.log_start_offset = offset

    def compact(self, offsets) -> list[int]:
        """Remove the (data) records at `offsets`, leaving gaps. Markers stay."""
        doomed = set(offsets)
        removed = [e.offset for e in self._entries if e.offset in doomed and e.record is not None]
        gone = set(removed)
        self._entries = [e for e in self._entries if e.offset not in gone]
        self._offsets = [e.offset for e in self._entries]
        return removed

    # -- reads --------------------------------------------------------------------------

    @property
    def high_watermark(self) -> int:
        return self.log_end_offset  # one replica: everything appended is replicated

    @property
    def last_stable_offset(self) -> int:
        return min(self._open.values(), default=self.high_watermark)

    def visible(self, start: int, end: int) -> list[Record]:
        """What a read_committed consumer sees with start <= offset < end."""
        end = min(end, self.last_stable_offset)
        i = bisect.bisect_left(self._offsets, max(start, self.log_start_offset))
        out = []
        entries = self._entries
        while i < len(entries) and entries[i].offset < end:
            e = entries[i]
            if e.record is not None and (e.txn is None or e.txn not in self._aborted):
                out.append(e.record)
            i += 1
        return out

    def read_committed(self) -> list[Record]:
        return self.visible(self.log_start_offset, self.log_end_offset)

    def read_uncommitted(self) -> list[Record]:
        return [e.record for e in self._entries if e.record is not None and e.offset < self.high_watermark]

    def data_offsets(self) -> list[int]:
        return [e.offset for e in self._entries if e.record is not None]


class FakeSource:
    """PartitionSource over a FakePartitionLog. With an rng, fetches return a random number
    of records (possibly none while more exist: a fetch that timed out), and the end of the
    log is reported only when `report_end` says so."""

    def __init__(self, log: FakePartitionLog, *, rng: random.Random | None = None, report_end: bool = True,
                 cheap_log_start: bool = True):
        self.log = log
        if not cheap_log_start:
            self.log_start_offset = None  # like an adapter without the optional method
        self.position = 0
        self.rng = rng
        self.report_end = report_end
        self.fetches = 0
        self.offsets_calls = 0

    def offsets(self) -> SourceOffsets:
        self.offsets_calls += 1
        return SourceOffsets(self.log.log_start_offset, self.log.last_stable_offset, self.log.high_watermark)

    def seek(self, offset: int) -> None:
        self.position = offset

    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    def fetch(self, max_records: int, timeout: float) -> FetchResult:
        self.fetches += 1
        log = self.log
        self.position = max(self.position, log.log_start_offset)  # out of range: earliest
        lso = log.last_stable_offset
        limit = max_records if self.rng is None else self.rng.randint(0, max_records)
        # read one more than the limit to know whether the end was reached
        ahead = log.visible(self.position, lso)
        records = ahead[:limit]
        at_end = len(ahead) <= limit
        if records:
            self.position = records[-1].offset + 1
        if at_end:
            self.position = max(self.position, lso)
            report = self.report_end if self.rng is None else (self.report_end and self.rng.random() < 0.7)
            hw = log.high_watermark if self.rng is None or self.rng.random() < 0.5 else None
            return FetchResult(records, lso if report else None, hw if report else None)
        return FetchResult(records, None)

    def read_range(self, start: int, end: int) -> list[Record]:
        return self.log.visible(start, end)


class FakeSink:
    """PartitionSink over a FakePartitionLog. produce() is asynchronous: records are
    delivered (appended, offsets assigned by the log) when confirmations() or flush() is
    called, so a foreign write can slip in between, as on a real cluster. With an rng,
    confirmations() delivers only a random prefix of what is queued."""

    def __init__(self, log: FakePartitionLog, *, rng: random.Random | None = None, compacted: bool = False):
        self.log = log
        self.rng = rng
        self.filler_key = b"__kafka-mirrors-filler" if compacted else None
        self.queued: list[Record] = []
        self.reports: list[Confirmation] = []
        self.misreport: dict[int, int] = {}  # expected offset -> offset to claim instead
        self.crash_in_commit_one = False
        self.crash_in_marker = False
        self.markers = True  # markers_supported()
        self.calls: list[str] = []
        self.chunks: list = []  # what each produce() call was given
        self.fenced = 0
        self.open_gap: list | None = None  # submitted, not written: [offset, result calls to wait, fillers]

    def _filler(self, offset: int) -> Record:
        return Record(offset, self.filler_key, None, 0, ((FILLER_HEADER, b"1"),))

    def _deliver(self, n: int) -> None:
        for record in self.queued[:n]:
            assigned = self.log.append_like(record)
            assigned = self.misreport.get(record.offset, assigned)
            self.reports.append(Confirmation(record.offset, assigned))
        del self.queued[:n]

    def _no_async_writes(self, what: str) -> None:
        # the copier must flush the idempotent producer before switching producers
        assert not self.queued, f"{what} while {len(self.queued)} produced records are not delivered"

    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    def produce(self, records) -> None:
        self.calls.append("produce")
        self.chunks.append(records)
        self.queued.extend(records)

    def confirmations(self) -> Reports:
        n = len(self.queued) if self.rng is None else self.rng.randint(0, len(self.queued))
        self._deliver(n)
        out, self.reports = self.reports, []
        return Reports.of(out)

    def flush(self, timeout: float) -> Reports:
        self._deliver(len(self.queued))
        out, self.reports = self.reports, []
        return Reports.of(out)

    def commit_one(self, record: Record) -> Confirmation:
        self.calls.append("commit_one")
        self._no_async_writes("commit_one")
        txn = self.log.begin()
        assigned = self.log.append_like(record, txn)
        if self.crash_in_commit_one:
            raise SimulatedCrash(f"crashed before committing offset {assigned}")
        self.log.commit(txn)
        return Confirmation(record.offset, self.misreport.get(record.offset, assigned))

    def markers_supported(self) -> bool:
        return self.markers

    def submit_gap(self, offset: int, fillers: int = 0) -> list:
        """Written later, as by the real sink's gap thread: at the gap_result call that
        finds its turn (the first without an rng, a random one with), so the copier steps
        while it is in flight."""
        self.calls.append("submit_gap")
        self._no_async_writes("submit_gap")
        assert self.open_gap is None, "a second gap of the partition before the first was done"
        self.open_gap = job = [offset, 1 if self.rng is None else self.rng.randint(0, 3), fillers]
        return job

    def gap_result(self, job: list) -> Confirmation | None:
        assert job is self.open_gap
        if job[1] > 0:
            job[1] -= 1
            return None
        self.open_gap = None
        return self.abort_fillers(job[0], job[2]) if job[2] else self.marker(job[0])

    def marker(self, offset: int) -> Confirmation:
        """The marker-only transaction itself (what the gap thread writes)."""
        self.calls.append("marker")
        self._no_async_writes("marker")
        assert self.markers, "marker() on a sink that said it cannot write one"
        txn = self.log.begin()
        self.log.add_to(txn)
        if self.crash_in_marker:
            raise SimulatedCrash(f"crashed inside the marker-only transaction for offset {offset}")
        assigned = self.log.abort(txn)
        return Confirmation(offset, self.misreport.get(offset, assigned))

    def abort_fillers(self, first_offset: int, count: int) -> Confirmation:
        """The aborted filler transaction itself (what the gap thread writes)."""
        self.calls.append("abort_fillers")
        self._no_async_writes("abort_fillers")
        assert count >= 1
        txn = self.log.begin()
        assigned = [self.log.append_like(self._filler(first_offset + i), txn) for i in range(count)]
        self.log.abort(txn)
        return Confirmation(first_offset, assigned[0])

    def fill(self, first_offset: int, count: int) -> Confirmation:
        self.calls.append("fill")
        self._no_async_writes("fill")
        assert count >= 1
        assigned = [self.log.append_like(self._filler(first_offset + i)) for i in range(count)]
        return Confirmation(first_offset, assigned[0])

    def delete_records_before(self, offset: int) -> None:
        self.calls.append("delete_records_before")
        self.log.delete_records_before(offset)

    def read_committed_range(self, start: int, end: int) -> list[Record]:
        return self.log.visible(start, end)

    def close_open_transaction(self) -> None:
        self.fenced += 1
        self.log.abort_open()

    def crash(self) -> None:
        """The producer dies: a random prefix of what was in flight lands, the rest never."""
        n = len(self.queued) if self.rng is None else self.rng.randint(0, len(self.queued))
        self._deliver(n)
        self.queued.clear()
        self.reports.clear()


def is_filler(record: Record) -> bool:
    return any(name == FILLER_HEADER for name, _ in record.headers)
