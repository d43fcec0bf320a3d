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

# far more than the 10,000 records behind that make a mirror "catching up", so the view
# the copy plane publishes 2 s after its start still shows the copy far behind
RECORDS_PER_PARTITION = 250_000


def _backlog_mirror(m) -> str:
    topic = m.source.create_topic(unique("catchup"), partitions=2)
    now_ms = int(time.time() * 1000)
    mt.produce_records(m.source, topic, (mt.Record(None, b"v" * 50, [], now_ms)
                                         for _ in range(2 * RECORDS_PER_PARTITION)), partitions=2)
    return m.mirror(topic)


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
    topic = _backlog_mirror(m)
    log_path = m.tmp_path / "worker-json.log"
    with open(log_path, "wb") as log:
        w = subprocess.Popen([sys.executable, "-m", "kafka_mirrors", "--registry", str(m.registry_path),
                              "run", "--link", m.name, "--log-format", "json"],
                             stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    m.procs.append(w)  # stopped at teardown by the fixture, even when the test fails
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
    assert 10_000 < first["lag_records"] <= 2 * RECORDS_PER_PARTITION
    done = [x for x in lines if x["message"].startswith(f"[{m.name}/{topic}] caught up: ")]
    assert len(done) == 1 and done[0]["lag_records"] < 1_000
    assert lines[-1]["message"].endswith("stopped") and lines[-1]["level"] == "INFO"


def test_on_a_terminal_the_catch_up_is_a_progress_bar_with_eta(mirroring, terminal):
    m = mirroring
    topic = _backlog_mirror(m)
    t = terminal(["--registry", str(m.registry_path), "run", "--link", m.name])
    name = f"{m.name}/{topic}"
    # the bar: NAME ━━━━ COPIED/TOTAL RATE ETA H:MM:SS (TOTAL: what it was behind when first seen)
    shape = re.compile(rf"^{re.escape(name)} .* \d+/\d+ .*ETA", re.M)
    bar = t.wait_screen(lambda s: shape.search(s) is not None, "a progress bar with ETA", timeout=120)
    (m.tmp_path / "worker-bar.txt").write_text(bar)
    print("kafka-mirrors run on a terminal:\n" + bar)
    done = t.wait_screen(lambda s: f"[{name}] caught up: " in s, "the caught-up line", timeout=180)
    # the bar is gone once caught up; the log lines stayed plain text
    assert not any(line.startswith(name) and "ETA" in line for line in done.splitlines()[-3:])
    assert " INFO [" in done and "catching up:" not in done
    assert t.interrupt(signal.SIGTERM) == 0
    m.wait_caught_up(topic)
