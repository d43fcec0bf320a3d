from kafka_mirrors.mirrors import build_mirror_view
from kafka_mirrors.state import MirrorRecord


def test_describe_shows_what_a_live_worker_backs_a_mirror_off_from():
    rec = MirrorRecord(link="l", topic="t", source_topic="t", partitions=1)
    live = {"w1": {"heartbeat_at": 1000.0, "serving": {"t": "0"},
                   "mirror_errors": {"t": "partition 0: Message size too large"}}}
    view = build_mirror_view(rec, {}, live, None, {0: 5}, now=1001.0)
    assert view["copy_error"] == "worker w1: partition 0: Message size too large"
    stale = build_mirror_view(rec, {}, live, None, {0: 5}, now=1100.0)
    assert stale["copy_error"] is None  # a dead worker's word is not news
    other = build_mirror_view(MirrorRecord(link="l", topic="u", source_topic="u", partitions=1),
                              {}, live, None, {0: 5}, now=1001.0)
    assert other["copy_error"] is None
