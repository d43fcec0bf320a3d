"""Gap transactions off the copy thread (docs/architecture.md, section 3).

A gap on the mirror (offsets the source shows nothing at) is taken by an aborted
transaction: a marker-only transaction for a gap of one (one record the destination
refuses, then abort: the marker alone takes the offset), or g - 1 fillers and the abort
marker for a gap of g. Either is four or five round trips (~15 ms). Written on the copy
thread, one after another, they held every partition of the worker back: a transactional
source topic (one commit marker per source transaction) copied at ~67 source
transactions a second per worker.

Here a copier only submits the gap (SinkProducers.submit_gap) and steps on; its
partition writes nothing more until the job is done, and the other partitions go on. Each
slot has one thread, made when the slot has a gap to write and gone after IDLE_EXIT_S
without one (at most SLOTS threads). It writes all the gaps of its slot that wait for
the same producer in ONE transaction: a transaction's abort marker lands on every
partition it added, one per partition. The slot is the unit the fence covers (its next
owner fences both of its producers), so a batch never mixes slots, nor producers: the
marker producer's (its records are always refused, see SinkProducers) and the filler
producer's (its records land) are separate transactions, as is a producer made again
after its slot was dropped.

Per batch:
    the gate (may this worker write the partition now; SinkProducers.still_writing)
    -> begin, per partition one refused record or its fillers, flush, abort
    -> log end offsets, one ListOffsets for the batch, until each shows its marker:
       offset + fillers + 1 exactly (more: another writer, before or after ours)
The copier submits a gap only once every write before it is confirmed, so the log end
offset before it is its offset (delivery reports proved it; a foreign write in between
shows in the count after). A job's outcome is a Confirmation (checked by the copier as the
synchronous transaction's was) or an exception: KafkaException (fenced, timed out, fatal:
the copy thread drops the slot's producers, job.fenced) or KafkaMirrorsError (backs the
mirror off). A crash at any point leaves what the synchronous one left: a transaction
that holds each partition, aborted by the broker or by the next owner's fence, its marker
(and the fillers that landed) where planned.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Sequence

from confluent_kafka import KafkaException, Producer

from kafka_mirrors.errors import KafkaOperationError
from kafka_mirrors.replication.interfaces import Confirmation

log = logging.getLogger("kafka_mirrors.kafka")

IDLE_EXIT_S = 5.0  # a slot's gap thread ends after this long with nothing to write
FLUSH_S = 30.0


class GapJob:
    """One partition's part of a gap transaction: `fillers` aborted records from `offset`
    on (0: a marker-only transaction), the abort marker right after them. Made and read
    on the copy thread; done, result and error are set once, by the slot's thread
    (result or error first, then done)."""

    __slots__ = ("topic", "partition", "offset", "fillers", "key", "slot", "producer", "lock",
                 "done", "result", "error", "fenced")

    def __init__(self, topic: str, partition: int, offset: int, slot: int, producer: Producer,
                 fillers: int = 0, key: bytes | None = None, lock: threading.Lock | None = None):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.fillers = fillers
        self.key = key  # of each filler (a compacted mirror refuses null keys)
        self.slot = slot
        self.producer = producer
        # held for the transaction: the copy thread's one-record commits use the slot's
        # filler producer too, and a producer has one transaction at a time
        self.lock = lock or threading.Lock()
        self.done = False
        self.result: Confirmation | None = None
        self.error: BaseException | None = None
        self.fenced = False  # the error came from the producer: the slot is made and fenced again

    @property
    def end(self) -> int:
        """The log end offset once its marker is on the log."""
        return self.offset + self.fillers + 1

    def finish(self, result: Confirmation) -> None:
        if not self.done:
            self.result = result
            self.done = True

    def fail(self, error: BaseException, fenced: bool = False) -> None:
        if not self.done:
            self.error = error
            self.fenced = fenced
            self.done = True

    def __repr__(self) -> str:
        return f"GapJob({self.topic}-{self.partition}@{self.offset}+{self.fillers}, done={self.done})"


class GapWriter:
    """The slots' gap threads. log_end_offsets(tps) -> {tp: offset} asks the destination
    (thread-safe: OffsetReader.offsets); gate(topic, partition) raises if this worker may
    not write the partition now (its slot, its lease, its fresh view of the state store)."""

    def __init__(self, label: str, log_end_offsets: Callable[[Sequence[tuple[str, int]]], dict],
                 gate: Callable[[str, int], None], refusals: frozenset, filler_header: str,
                 end_of_time_ms: int, wait_s: float):
        self.label = label
        self._log_end_offsets = log_end_offsets
        self._gate = gate
        self._refusals = refusals
        self._header = filler_header
        self._end_of_time_ms = end_of_time_ms
        self._wait_s = wait_s
        self._cond = threading.Condition()
        self._queues: dict[int, collections.deque[GapJob]] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._closed = False
        self.transactions = 0  # gap transactions begun (each holds one batch)

    def submit(self, job: GapJob) -> None:
        with self._cond:
            if self._closed:
                raise KafkaOperationError(f"{self.label}: the gap writer is closed")
            self._queues.setdefault(job.slot, collections.deque()).append(job)
            if job.slot in self._threads:
                self._cond.notify_all()
                return
            t = threading.Thread(target=self._run, args=(job.slot,), name=f"gaps-{job.slot}", daemon=True)
            self._threads[job.slot] = t
            t.start()

    def threads(self) -> int:
        with self._cond:
            return len(self._threads)

    def busy_slots(self) -> set[int]:
        """Slots with a gap queued or being written (their producers are not idle)."""
        with self._cond:
            return set(self._threads)

    def close(self) -> None:
        """Queued jobs fail (nothing of theirs was written); a batch being written finishes
        in its thread (bounded by its flush, abort and wait timeouts)."""
        with self._cond:
            self._closed = True
            for q in self._queues.values():
                for job in q:
                    job.fail(KafkaOperationError(f"{self.label}: shutting down before the gap transaction "
                                                 f"for {job.topic}-{job.partition} was begun"))
            self._queues.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------ the slot's thread

    def _take(self, slot: int) -> list[GapJob] | None:
        with self._cond:
            deadline = time.monotonic() + IDLE_EXIT_S
            while not self._queues.get(slot) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            q = self._queues.get(slot)
            if not q:
                self._threads.pop(slot, None)
                self._queues.pop(slot, None)
                return None
            first = q[0].producer
            batch: list[GapJob] = []
            seen: set[tuple[str, int]] = set()
            rest: collections.deque[GapJob] = collections.deque()
            for job in q:
                key = (job.topic, job.partition)
                # one producer's transaction, one gap per partition in it
                if job.producer is first and key not in seen:
                    batch.append(job)
                    seen.add(key)
                else:
                    rest.append(job)
            self._queues[slot] = rest
            return batch

    def _run(self, slot: int) -> None:
        while True:
            batch = self._take(slot)
            if batch is None:
                return
            try:
                self.write(batch)
            except KafkaException as exc:
                for job in batch:
                    job.fail(exc, fenced=True)
            except BaseException as exc:  # noqa: BLE001 - each job's copier sees it
                for job in batch:
                    job.fail(exc)

    def write(self, batch: list[GapJob]) -> None:
        """One aborted transaction for the batch (one slot, one producer)."""
        todo = []
        for job in batch:
            try:
                self._gate(job.topic, job.partition)
            except Exception as exc:  # noqa: BLE001 - that job alone: nothing written
                job.fail(exc)
                continue
            todo.append(job)
        if not todo:
            return
        p = todo[0].producer
        # per job: (expected offset, assigned offset or None, error or None) of each record
        reports: dict[int, list] = {id(job): [] for job in todo}

        def reporter(job: GapJob, expected: int):
            out = reports[id(job)]

            def report(err, msg):
                out.append((expected, None if err is not None else msg.offset(), err))
            return report
        with todo[0].lock:
            self._transaction(p, todo, reporter)
        self._check(todo, reports)

    def _transaction(self, p: Producer, todo: list[GapJob], reporter) -> None:
        """Begin, produce, flush, abort. `todo` is left holding the jobs whose records were
        (at least partly) produced: a produce refused locally in the middle (librdkafka
        takes no more records once a refusal put the transaction in an abortable state,
        or its queue is full) fails the jobs not begun, and the transaction is aborted all
        the same, so the markers of those begun land where planned (a job that produced
        only some of its fillers leaves the rest of its gap for the restart to plan)."""
        for job in todo:
            # again, after the lock, without waiting: the copy thread that renews the gate
            # may be waiting for this lock (commit_one)
            self._gate(job.topic, job.partition, False)
        self.transactions += 1
        p.begin_transaction()
        now_ms = int(time.time() * 1000)
        begun = 0
        try:
            for job in todo:
                begun += 1
                if job.fillers:
                    for i in range(job.fillers):
                        p.produce(job.topic, None, job.key, partition=job.partition, timestamp=now_ms,
                                  headers=[(self._header, b"1")], on_delivery=reporter(job, job.offset + i))
                else:
                    p.produce(job.topic, None, None, partition=job.partition, timestamp=self._end_of_time_ms,
                              headers=[(self._header, b"marker")], on_delivery=reporter(job, job.offset))
        except Exception as exc:  # noqa: BLE001 - the jobs not begun fail; the begun are aborted below
            for job in todo[begun:]:
                job.fail(KafkaOperationError(f"{job.topic}-{job.partition}: the gap transaction at offset "
                                             f"{job.offset} was not begun ({exc})"))
            # the job whose produce raised may have produced part of its records: its
            # reports say what (a marker-only job with none fails as "no delivery report")
            del todo[begun:]
        # flush before the abort: an abort purges what was not sent, and a partition whose
        # record was never sent may not have been added to the transaction
        p.flush(FLUSH_S)
        p.abort_transaction(FLUSH_S)

    def _check(self, todo: list[GapJob], reports: dict[int, list]) -> None:
        waiting = []
        for job in todo:
            got = reports[id(job)]
            if job.fillers:
                bad = [r for r in got if r[2] is not None or r[1] != r[0]]
                if bad:
                    expected, assigned, err = bad[0]
                    job.finish(Confirmation(expected, assigned, err.str() if err is not None else None))
                elif len(got) != job.fillers:
                    job.fail(KafkaOperationError(f"{job.topic}-{job.partition}: {len(got)} delivery reports for "
                                                 f"{job.fillers} fillers at offset {job.offset} within {FLUSH_S:g} s"))
                else:
                    waiting.append(job)
                continue
            if not got:
                job.fail(KafkaOperationError(f"{job.topic}-{job.partition}: no delivery report for the record "
                                             f"of the marker-only transaction at offset {job.offset} within "
                                             f"{FLUSH_S:g} s"))
                continue
            expected, assigned, err = got[0]
            if err is None:
                job.finish(Confirmation(job.offset, assigned, "the destination kept the record of a "
                                        "marker-only transaction (was its message.timestamp.type or "
                                        "after.max.ms changed?)"))
            elif err.code() not in self._refusals:
                job.fail(KafkaOperationError(f"{job.topic}-{job.partition}: the record of the marker-only "
                                             f"transaction at offset {job.offset} was not refused as planned: "
                                             f"{err.str()}"))
            else:
                waiting.append(job)
        self._wait_markers(waiting)

    def _wait_markers(self, jobs: list[GapJob]) -> None:
        """The coordinator writes the abort markers after EndTxn returns: wait until each
        partition's log end offset reached its job's end, which it must then be."""
        deadline = time.monotonic() + self._wait_s
        delay = 0.001
        while jobs:
            ends = self._log_end_offsets([(j.topic, j.partition) for j in jobs])
            left = []
            for job in jobs:
                end = ends[(job.topic, job.partition)]
                if end < job.end:
                    left.append(job)
                elif end == job.end:
                    job.finish(Confirmation(job.offset, job.offset))
                else:
                    job.finish(Confirmation(job.offset, None, f"the destination log end offset is {end} after "
                                            f"the aborted transaction for offsets {job.offset}..{job.end - 1} "
                                            f"(another writer?)"))
            jobs = left
            if not jobs:
                return
            if time.monotonic() > deadline:
                for job in jobs:
                    job.fail(KafkaOperationError(f"{job.topic}-{job.partition}: transaction marker not visible "
                                                 f"at offset {job.end - 1} within {self._wait_s:g} s"))
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
