"""bench/copy_rate.py's reading of a py-spy raw profile (collapsed stacks)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import copy_rate  # noqa: E402


def test_py_spy_summary_shares_threads_and_the_copy_threads_frames(tmp_path):
    raw = tmp_path / "w.spy"
    raw.write_text(
        "thread (11): copy-l;run (tasks.py:1);produce (partition.py:9);rd_kafka_producev (librdkafka.so) 6\n"
        "thread (11): copy-l;run (tasks.py:1);pump (partition.py:4) 2\n"
        "thread (12): jobs-l;run (jobs.py:3) 2\n"
        "not a sample line\n")
    out = copy_rate.py_spy_summary(str(raw))
    text = "\n".join(out)
    assert "10 samples" in out[0]
    assert "   80.0%  copy-l" in text and "   20.0%  jobs-l" in text
    leaf = out[out.index("the copy thread (8 samples): leaf frames (self)") + 1:]
    assert leaf[0] == "   75.0%  rd_kafka_producev (librdkafka.so)"
    assert leaf[1] == "   25.0%  pump (partition.py:4)"
    total = out[out.index("the copy thread: frames on the stack (total)") + 1:]
    assert total[0] == "  100.0%  run (tasks.py:1)"


def test_py_spy_summary_names_a_missing_or_empty_profile(tmp_path):
    empty = tmp_path / "e.spy"
    empty.write_text("")
    assert copy_rate.py_spy_summary(str(empty)) == [f"py-spy profile {empty}: no samples"]
    missing = copy_rate.py_spy_summary(str(tmp_path / "missing.spy"))
    assert missing[0].startswith(f"py-spy profile {tmp_path / 'missing.spy'}:")
