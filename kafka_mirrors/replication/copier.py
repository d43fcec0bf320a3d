"""The per-partition copier: copies one source partition to the same partition of the
mirror topic, record for record at identical offsets (docs/architecture.md section 3). Pure logic:
it talks to a PartitionSource and a PartitionSink only, never to Kafka.

    start():  fence old writer -> checkpoint = destination log end offset
              -> tail check -> head alignment -> source.seek(checkpoint)
    step():   verify delivery reports -> fetch -> plan -> write -> (idle: foreign-write
              check, retention follow-up) -> verify delivery reports
                 fetch ──► dense runs ──► produce (async, fast path)
                       └─► gaps ──► plan_gap ──► marker / aborted fillers / fill+delete
                                                 (commit_one where no marker can be written)
              a marker or aborted fillers are submitted (sink.submit_gap) and written by
              another thread; the partition sends nothing more until they are on the log
    stop():   flush and verify what is in flight; the held-back record stays unwritten

The last record seen is held back until the offset after it is known (the next record or
the source's last stable offset), because a gap after a record decides how that record
must be written. Every delivery report is checked against the offset it copies; any
mismatch fails the partition (PartitionFailed) and nothing more is written.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from kafka_mirrors.errors import ReplicationError
from kafka_mirrors.replication.interfaces import (
    Confirmation,
    FetchResult,
    PartitionProgress,
    PartitionSink,
    PartitionSource,
    Record,
    Reports,
)
from kafka_mirrors.replication.plan import (
    ABORT_FILLERS,
    COMMIT_HELD,
    LONE_OFFSET,
    MARKER,
    PRODUCE_HELD,
    SKIP_LOST,
    dense_run_end,
    plan_gap,
)

# Fillers written before a DeleteRecords go in chunks so a large head gap shows progress
# and a crash part-way resumes from the destination log end offset like any other write.
FILL_CHUNK = 100_000
# a step plans no more gaps (each a transaction on the destination) once they took this
# long: the copy thread looks at its commands (a stop, a failover's) between steps
GAP_BUDGET_S = 0.1


class PartitionFailed(ReplicationError):
    """The copy of this partition broke an invariant at `offset`; the mirror must go to
    FAILED with this reason. Never retried: retrying could hide a divergence."""

    def __init__(self, offset: int, reason: str, label: str = ""):
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason
        self.label = label


class PartitionStalled(ReplicationError):
    """Writes were not confirmed in time (destination slow or unreachable). Nothing is
    known to be wrong: drop this copier and its sink's producers, back off, and start a
    new copier, which resumes from the destination log end offset."""


class PartitionCopier:
    def __init__(
        self,
        source: PartitionSource,
        sink: PartitionSink,
        *,
        label: str,
        logger: logging.Logger,
        max_batch: int = 5000,
        tail_check: int = 16,
        max_in_flight: int | None = None,
        write_timeout: float = 30.0,
        retention_check_interval: float = 30.0,
        idle_check_interval: float = 1.0,
        gap_budget: float = GAP_BUDGET_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._source = source
        self._sink = sink
        self._label = label
        self._log = logger
        self._max_batch = max_batch
        self._tail_check = tail_check
        self._max_in_flight = max_in_flight if max_in_flight is not None else 4 * max_batch
        self._write_timeout = write_timeout
        self._retention_check_interval = retention_check_interval
        # Idle steps come many times a second (the worker steps every partition in turn);
        # the checks that cost a ListOffsets request run at most once per interval.
        self._idle_check_interval = idle_check_interval
        self._last_idle_check = float("-inf")
        self._last_offsets_probe = float("-inf")
        self._clock = clock
        self._gap_budget = gap_budget
        # records fetched and not planned yet: a step stops planning once its gaps took
        # gap_budget, and the next step plans these before it fetches again
        self._leftover: Sequence[Record] = ()
        # a gap transaction (a marker-only one, or aborted fillers), written off the copy
        # thread (sink.submit_gap): _gap_at, its first offset (planned; submitted once every
        # write before it is confirmed), _gap_fillers its fillers (0: a marker alone);
        # _gap_job, the sink's handle once submitted. Nothing more is sent for the
        # partition until it is done.
        self._gap_at: int | None = None
        self._gap_fillers = 0
        self._gap_job: object | None = None

        self._started = False
        self._failed: PartitionFailed | None = None
        # _next: the destination offset the next planned write lands on (a held record
        # sits exactly there). _confirmed: the destination log end offset as far as
        # delivery reports prove it.
        self._next = 0
        self._confirmed = 0
        self._held: Record | None = None
        # planned, not yet handed to sink.produce: consecutive chunks of records, each a
        # (held,) tuple or a slice of what the source returned (never copied record by record)
        self._batch: list[Sequence[Record]] = []
        self._in_flight = 0
        self._last_retention_check = float("-inf")
        self._progress = PartitionProgress()

    # -- public API -------------------------------------------------------------------

    @property
    def progress(self) -> PartitionProgress:
        self._progress.next_offset = self._confirmed
        return self._progress

    def start(self) -> PartitionProgress:
        close_open = getattr(self._sink, "close_open_transaction", None)
        if close_open is not None:
            close_open()
        checkpoint = self._sink.log_end_offset()
        offsets = self._source.offsets()
        self._next = self._confirmed = checkpoint
        if checkpoint > offsets.high_watermark:
            self._fail(
                offsets.high_watermark,
                f"the destination holds offsets up to {checkpoint - 1} but the source's high "
                f"watermark is {offsets.high_watermark} (source truncated or re-created, or "
                f"another writer on the mirror?)",
            )
        self._check_tail(checkpoint)

        log_start = offsets.log_start_offset
        if log_start > checkpoint:
            # An empty destination over a source whose head was deleted before mirroring
            # began has lost nothing; a destination that had started copying has.
            self._skip(checkpoint, log_start, lost=checkpoint > 0)
        else:
            self._follow_retention(log_start)
        self._last_retention_check = self._clock()
        self._source.seek(self._next)
        self._started = True
        self._log.info(
            "[%s] starting at offset %d (source log start %d, last stable offset %d)",
            self._label, self._next, log_start, offsets.last_stable_offset,
        )
        return self.progress

    def step(self, timeout: float) -> PartitionProgress:
        if self._failed is not None:
            raise self._failed
        if not self._started:
            raise RuntimeError("PartitionCopier.step() before start()")
        self._take_confirmations()
        if self._gap_at is not None and not self._gap_done():
            return self.progress  # waiting for the gap transaction (or for the writes before it)
        if self._in_flight > self._max_in_flight:
            self._send_and_flush()

        if self._leftover:
            records, self._leftover = self._leftover, ()
            self._plan_records(records)
            self._send()
            self._take_confirmations()
            return self.progress
        result = self._source.fetch(self._max_batch, timeout)
        records = result.records
        if records:
            self._progress.records_fetched += len(records)
            self._plan_records(records)
            self._send()
        else:
            self._plan_idle(result)
            self._send()
            self._idle_checks()
        self._take_confirmations()
        return self.progress

    def busy(self) -> bool:
        """Work that needs no new source record: writes in flight or planned, a record held,
        a gap transaction planned or being written."""
        return bool(self._in_flight or self._batch or self._held is not None or self._leftover
                    or self._gap_at is not None)

    def gap_planned(self) -> bool:
        """A gap transaction is planned or being written: stepping the partition does
        nothing but look whether it (or the writes before it) is done."""
        return self._gap_at is not None

    def settle(self) -> int:
        """For a stop that must not wait: plan and send nothing more (the planned batch
        and the held record stay unwritten; a new copier resumes from the destination
        log end offset) and take the delivery reports that came, checked as always
        (PartitionFailed on a mismatch). Returns the writes still in flight: the stop is
        complete at 0."""
        self._batch = []
        self._leftover = ()
        if self._gap_job is None:
            self._gap_at = None  # planned, not begun: nothing of it was written
        if self._failed is None and self._started:
            self._take_confirmations()
            if self._gap_job is not None:
                self._settle_gap()
        return self._in_flight + (self._gap_job is not None)

    def stop(self, timeout: float) -> PartitionProgress:
        if self._failed is None and self._started:
            self._send()
            self._flush(timeout)
        return self.progress

    # -- planning -----------------------------------------------------------------------

    def _plan_records(self, records: Sequence[Record]) -> None:
        """Plan the records; once the gaps among them took longer than the gap budget
        (each a transaction, ~15 ms), what is left waits in _leftover for the next step,
        so a step that acknowledges a stop is never seconds long (5,000 records of a
        transactional topic hold ~2,000 gaps: 30 s in one step)."""
        n = len(records)
        pos = 0
        held = self._held
        deadline = None
        while pos < n:
            if deadline is not None and self._clock() >= deadline:
                self._leftover = records[pos:]
                return
            run_end = dense_run_end(records, pos)
            first = records[pos].offset
            expected = held.offset + 1 if held is not None else self._next
            if first == expected:
                if held is not None:
                    self._batch.append((held,))
            elif first > expected:
                if deadline is None:
                    deadline = self._clock() + self._gap_budget
                self._plan_gap(first)  # may hand the batch to the sink: re-read self._batch
                if self._gap_at is not None:
                    # nothing after the gap is sent before its marker is on the log
                    self._leftover = records[pos:]
                    return
            else:
                self._fail(
                    first,
                    f"the source returned offset {first} again, behind the copy at {expected}",
                )
            if run_end - pos > 1:
                # every record of the run but the last is followed by a known record
                self._batch.append(records[pos:run_end - 1])
            held = self._held = records[run_end - 1]
            self._next = held.offset
            pos = run_end

    def _plan_idle(self, result: FetchResult) -> None:
        """The fetch found nothing new: decide whether the held record (and the gap after
        it) can be written now.

        Only when nothing unstable lies beyond the source's last stable offset (LSO equal
        to the high watermark). If an open transaction starts at the LSO, its fate and the
        records other producers interleave with it decide the gap: a one-record aborted
        transaction followed by a visible record leaves a single empty offset, and only a
        record we still hold can carry the marker that fills it. So wait for it to end."""
        held = self._held
        end_offset = result.end_offset
        expected = held.offset + 1 if held is not None else self._next
        if end_offset is not None and end_offset == expected and held is None:
            return  # caught up and nothing held: the common idle step costs no request
        high_watermark = result.high_watermark
        if end_offset is None or high_watermark is None:
            now = self._clock()
            if now - self._last_offsets_probe < self._idle_check_interval:
                return
            self._last_offsets_probe = now
            offsets = self._source.offsets()
            # the high watermark asked right after this last stable offset, never one
            # cached from an earlier fetch response: LSO == HW must hold at one moment
            high_watermark = offsets.high_watermark
            if end_offset is None:
                # The fetch did not say it reached the end; an LSO right behind what we
                # have seen proves it anyway. Anything else proves nothing.
                if offsets.last_stable_offset != expected:
                    return
                end_offset = expected
        if end_offset == high_watermark:
            self._plan_end(end_offset)

    def _plan_end(self, end_offset: int) -> None:
        """The source says nothing visible lies between what we have seen and end_offset."""
        held = self._held
        if held is not None:
            if end_offset == held.offset + 1:
                self._batch.append((held,))
                self._held = None
                self._next = end_offset
            elif end_offset > held.offset + 1:
                self._plan_gap(end_offset)
        elif end_offset > self._next:
            self._plan_gap(end_offset)

    def _plan_gap(self, following: int) -> None:
        """Write the held record (if any) and fill every offset up to `following`."""
        held = self._held
        markers = getattr(self._sink, "markers_supported", None)
        actions = plan_gap(
            self._next, following, holding=held is not None,
            source_log_start=self._source_log_start(),
            markers=markers if markers is not None else False,  # asked only for a gap of 1
        )
        self._log.debug("[%s] gap before %d: %s", self._label, following, actions)
        for action in actions:
            kind = action.kind
            if kind == PRODUCE_HELD:
                self._batch.append((held,))
                self._next = held.offset + 1
            elif kind == COMMIT_HELD:
                self._send_and_flush()
                self._verify(self._sink.commit_one(held))
                self._progress.records_copied += 1
                self._count("transactions_committed")
                self._next = self._confirmed = held.offset + 2
            elif kind in (MARKER, ABORT_FILLERS):
                # written off the copy thread once the held record (if any), sent to the
                # fast path just before, is confirmed: see _gap_done
                self._gap_at, self._gap_fillers = action.offset, action.count if kind == ABORT_FILLERS else 0
                break  # nothing else is planned before it is on the log: the gap is the last action
            elif kind == SKIP_LOST:
                self._send_and_flush()
                self._skip(action.offset, action.offset + action.count, lost=True)
            elif kind == LONE_OFFSET:
                self._send_and_flush()
                self._lone_offset(action.offset)
        self._held = None
        self._next = following

    def _gap_done(self) -> bool:
        """The planned gap transaction: submitted once every write before it is confirmed
        (it must land right after them), then checked when its job is done, as the
        synchronous one was. True once its marker is on the log (the copy goes on)."""
        if self._gap_job is None:
            self._send()
            if self._in_flight:
                return False
            if self._confirmed != self._gap_at:
                self._fail(self._gap_at, f"the writes before the gap transaction at offset {self._gap_at} "
                                         f"were confirmed up to {self._confirmed}")
            self._gap_job = self._sink.submit_gap(self._gap_at, self._gap_fillers)
        try:
            c = self._sink.gap_result(self._gap_job)
        except BaseException:
            # it ended without its marker known to be where planned: the mirror backs off
            # and its next start plans the gap again from the log end offset
            self._gap_at = self._gap_job = None
            raise
        if c is None:
            return False
        return self._gap_landed(c)

    def _gap_landed(self, c: Confirmation) -> bool:
        offset, fillers = self._gap_at, self._gap_fillers
        self._gap_at = self._gap_job = None
        self._verify(c)
        if fillers:
            self._progress.fillers_written += fillers
            self._count("transactions_aborted")
        else:
            self._count("marker_transactions")
        self._confirmed = max(self._confirmed, offset + fillers + 1)
        return True

    def _settle_gap(self) -> None:
        """settle(): the gap transaction being written is waited for (it is a write in
        flight); its outcome is checked as always. Any other error ends it: what the abort
        left (its marker and fillers, or nothing) is what a new copier plans from."""
        try:
            c = self._sink.gap_result(self._gap_job)
        except Exception as exc:  # noqa: BLE001 - the stop is complete; the next start re-plans
            self._gap_at = self._gap_job = None
            self._log.debug("[%s] the gap transaction ended with %s", self._label, exc)
            return
        if c is not None:
            self._gap_landed(c)

    def _source_log_start(self) -> int:
        log_start = getattr(self._source, "log_start_offset", None)
        return log_start() if log_start is not None else self._source.offsets().log_start_offset

    def _lone_offset(self, offset: int) -> None:
        """One invisible source offset with no record of ours before it to carry a marker
        (compaction removed the record after one already written), on a sink that cannot
        write a marker-only transaction (MARKER, where the destination would keep its
        record). Without one a single offset cannot be spent invisibly, so: at the
        destination's head, filler + DeleteRecords; elsewhere a filler that read_committed
        consumers DO see, said loudly and counted."""
        self._write_fill(offset, 1)
        if self._sink.log_start_offset() == offset:
            self._sink.delete_records_before(offset + 1)
            self._count("retention_deletes")
            return
        self._count("visible_fillers")
        self._log.warning(
            "[%s] offset %d: a single empty source offset (a compacted record, or a one-record "
            "aborted transaction interleaved with other producers) follows a record already "
            "written; wrote a filler there that read_committed consumers see",
            self._label, offset,
        )

    # -- writes -------------------------------------------------------------------------

    def _skip(self, start: int, end: int, *, lost: bool) -> None:
        """Fillers on [start, end) then DeleteRecords to end: the offsets vanish and the
        destination's log start offset follows the source's."""
        if lost:
            self._progress.offsets_lost_to_source_retention += end - start
            self._log.warning(
                "[%s] offsets %d..%d (%d) were deleted by source retention before they were "
                "copied; they are lost to the mirror",
                self._label, start, end - 1, end - start,
            )
        position = start
        while position < end:
            count = min(FILL_CHUNK, end - position)
            self._write_fill(position, count)
            position += count
            self._sink.delete_records_before(position)
        self._count("retention_deletes")

    def _write_fill(self, start: int, count: int) -> None:
        self._verify(self._sink.fill(start, count))
        self._progress.fillers_written += count
        self._next = self._confirmed = start + count

    def _send(self) -> None:
        batch = self._batch
        if batch:
            self._batch = []
            produce = self._sink.produce
            sent_bytes = 0
            for chunk in batch:
                sent_bytes += produce(chunk) or 0
                self._in_flight += len(chunk)
            self._progress.bytes_fetched += sent_bytes
            self._count("batches")

    def _send_and_flush(self) -> None:
        self._send()
        self._flush(self._write_timeout)

    def _flush(self, timeout: float) -> None:
        if self._in_flight:
            self._check(self._sink.flush(timeout))
            if self._in_flight:
                raise PartitionStalled(
                    f"{self._in_flight} writes from offset {self._confirmed} not confirmed "
                    f"within {timeout:g}s"
                )

    def _take_confirmations(self) -> None:
        if self._in_flight:
            reports = self._sink.confirmations()
            if reports.count:
                self._check(reports)

    def _check(self, reports: Reports) -> None:
        # the sink compared each report with the offset it copies; a mismatch fails here
        for c in reports.mismatches:
            self._verify(c)
        count = reports.count
        if count:
            self._in_flight -= count
            self._progress.records_copied += count
            self._progress.bytes_copied += reports.bytes
            self._confirmed = max(self._confirmed, reports.last_expected + 1)

    def _verify(self, c: Confirmation) -> None:
        if c.error is not None:
            self._fail(c.expected_offset, f"delivery failed: {c.error}")
        if c.assigned_offset != c.expected_offset:
            if c.assigned_offset < c.expected_offset:
                # one report stands for a run of writes: some before it never landed
                self._fail(
                    c.expected_offset,
                    f"delivery landed at {c.assigned_offset}: "
                    f"{c.expected_offset - c.assigned_offset} earlier write(s) of the batch did "
                    f"not land (refused by the destination, e.g. a record larger than the "
                    f"topic's max.message.bytes?)",
                )
            self._fail(
                c.expected_offset,
                f"delivery landed at {c.assigned_offset} (another writer?)",
            )

    # -- checks -------------------------------------------------------------------------

    def _check_tail(self, checkpoint: int) -> None:
        """The last offsets before the checkpoint must hold what the source shows there.
        Catches a one-record transaction that a crash left to be aborted: its marker
        moved the log end offset, but the record is invisible to read_committed."""
        start = max(0, checkpoint - self._tail_check)
        if start >= checkpoint:
            return
        copied = {r.offset: r for r in self._sink.read_committed_range(start, checkpoint)}
        for record in self._source.read_range(start, checkpoint):
            mirrored = copied.get(record.offset)
            if mirrored is None:
                self._fail(
                    record.offset,
                    "on the source but not visible on the destination below its log end "
                    f"offset {checkpoint} (a transaction aborted by a crash?)",
                )
            if not _same(record, mirrored):
                self._fail(record.offset, "the destination record differs from the source record")

    def _idle_checks(self) -> None:
        if self._in_flight or self._batch or self._gap_at is not None:
            return
        now = self._clock()
        if now - self._last_idle_check < self._idle_check_interval:
            return
        self._last_idle_check = now
        log_end = self._sink.log_end_offset()
        if log_end > self._next:
            self._fail(
                self._next,
                f"the destination log end offset is {log_end}, the copy is only at "
                f"{self._next}: another writer wrote into the mirror",
            )
        if log_end < self._next:
            self._fail(
                log_end,
                f"the destination log end offset went back to {log_end} from {self._next} "
                "(truncated or re-created?)",
            )
        if now - self._last_retention_check >= self._retention_check_interval:
            self._last_retention_check = now
            self._follow_retention(self._source_log_start())

    def _follow_retention(self, source_log_start: int) -> None:
        """DeleteRecords on the destination up to the source's log start offset, as far as
        the copy has reached (offsets beyond are handled when the fetch gets there)."""
        target = min(source_log_start, self._confirmed)
        if target > self._sink.log_start_offset():
            self._sink.delete_records_before(target)
            self._count("retention_deletes")

    def _fail(self, offset: int, reason: str) -> None:
        error = PartitionFailed(offset, reason, self._label)
        self._failed = error
        self._progress.last_error = str(error)
        self._batch = []
        self._log.error("[%s] partition failed: %s", self._label, error)
        raise error

    def _count(self, name: str) -> None:
        counters = self._progress.counters
        counters[name] = counters.get(name, 0) + 1


def _same(a: Record, b: Record) -> bool:
    # adapters may hand headers back as lists; compare their content, not their type
    return (
        a.key == b.key
        and a.value == b.value
        and a.timestamp == b.timestamp
        and tuple(map(tuple, a.headers)) == tuple(map(tuple, b.headers))
    )
