"""The worker's catch-up progress on real brokers (issue 12): a mirror whose initial copy
is far behind (more than 10,000 records) gets a progress bar with ETA when the worker's
stderr is a terminal, and plain log lines otherwise; with `--log-format json` every line
the worker writes is one JSON object, the catching-up lines carrying the figures as
fields. Each worker is stopped with SIGTERM (exit 0) and, should the test fail, by the
fixtures."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import mirrortools as mt
from tests.mirroring import unique
from tests.ptyterm import PtyCommand

pytestmark = pytest.mark.integration

# far more than the 10,000 records behind that make a mirror "catching up"
RECORDS_PER_PARTITION = 50_000
COMMITTED = 100  # per partition, before the open transaction


def _backlog_mirror(m):
    """A mirror far behind for as long as the test wants: each partition holds COMMITTED
    records, then an open transaction, then the backlog, which read_committed cannot see
    (nor copy) until the transaction ends. A copy of 500,000 small records took less than
    the 2 s between two progress views on a quiet machine, so a backlog alone raced.
    Returns (topic, the open transaction's producer: commit it to let the copy go on)."""
    topic = m.source.create_topic(unique("catchup"), partitions=2)
    now_ms = int(time.time() * 1000)
    mt.produce_records(m.source, topic, (mt.Record(None, b"c" * 50, [], now_ms) for _ in range(2 * COMMITTED)),
                       partitions=2)
    tx = m.source.producer(**{"transactional.id": unique("catchup-tx"), "transaction.timeout.ms": 300000})
    tx.init_transactions(30)
    tx.begin_transaction()
    for p in (0, 1):
        tx.produce(topic, value=b"held", partition=p)
    assert tx.flush(30) == 0
    mt.produce_records(m.source, topic, (mt.Record(None, b"v" * 50, [], now_ms)
                                         for _ in range(2 * RECORDS_PER_PARTITION)), partitions=2)
    return m.mirror(topic), tx


@pytest.fixture
def terminal():
    started: list[PtyCommand] = []

    def start(args: list[str]) -> PtyCommand:
        p = PtyCommand(args, width=120)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def test_json_logs_without_a_terminal_parse_and_report_the_catch_up(mirroring):
    m = mirroring
    topic, tx = _backlog_mirror(m)
    log_path = m.tmp_path / "worker-json.log"
    with open(log_path, "wb") as log:
        w = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", "--registry", str(m.registry_path),
                              "run", "--link", m.name, "--log-format", "json"],
                             stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    m.procs.append(w)  # stopped at teardown by the fixture, even when the test fails

    def catching_up_logged():
        assert w.poll() is None, log_path.read_text()[-3000:]
        return any('] catching up: ' in line for line in log_path.read_text().splitlines())
    mt.wait_until(catching_up_logged, 60, "a catching-up line", interval=0.5)
    tx.commit_transaction(30)  # the backlog becomes visible: the copy goes on
    m.wait_caught_up(topic, timeout=180)

    def caught_up_logged():
        return any('] caught up: ' in line for line in log_path.read_text().splitlines())
    mt.wait_until(caught_up_logged, 30, "the caught-up line", interval=0.5)
    m.stop_worker(w)

    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert lines and "\x1b" not in text  # no bar, no terminal codes
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= set(line), line
        assert line["logger"].startswith("kafka_mirrors")
    catching = [x for x in lines if x["message"].startswith(f"[{m.name}/{topic}] catching up: ")]
    assert catching, text[-3000:]
    first = catching[0]
    assert (first["link"], first["mirror"]) == (m.name, topic)
    # per partition: the backlog, the open transaction's record, and the last committed
    # record (held back until what follows it is known)
    assert 10_000 < first["lag_records"] <= 2 * (RECORDS_PER_PARTITION + 2)
    done = [x for x in lines if x["message"].startswith(f"[{m.name}/{topic}] caught up: ")]
    assert len(done) == 1 and done[0]["lag_records"] < 1_000
    assert lines[-1]["message"].endswith("stopped") and lines[-1]["level"] == "INFO"


def test_on_a_terminal_the_catch_up_is_a_progress_bar_with_eta(mirroring, terminal):
    m = mirroring
    topic, tx = _backlog_mirror(m)
    t = terminal(["--registry", str(m.registry_path), "run", "--link", m.name])
    name = f"{m.name}/{topic}"
    # the bar: NAME ━━━━ COPIED/TOTAL RATE ETA H:MM:SS (TOTAL: what it was behind when first seen)
    shape = re.compile(rf"^{re.escape(name)} .* \d+/\d+ .*ETA", re.M)
    bar = t.wait_screen(lambda s: shape.search(s) is not None, "a progress bar with ETA", timeout=120)
    (m.tmp_path / "worker-bar.txt").write_text(bar)
    print("kafka-mirrors run on a terminal:\n" + bar)
    tx.commit_transaction(30)  # the backlog becomes visible: the copy goes on
    done = t.wait_screen(lambda s: f"[{name}] caught up: " in s, "the caught-up line", timeout=180)
    # the bar is gone once caught up; the log lines stayed plain text
    assert not any(line.startswith(name) and "ETA" in line for line in done.splitlines()[-3:])
    assert " INFO [" in done and "catching up:" not in done
    assert t.interrupt(signal.SIGTERM) == 0
    m.wait_caught_up(topic)
