"""The worker's SourceWatch without a broker: a doubt about the source is settled by a
probe whose future is only looked at, never waited on."""
import concurrent.futures

from kafka_mirrors.worker import SourceWatch


class FakeClient:
    def __init__(self):
        self.probes: list[concurrent.futures.Future] = []

    def describe_cluster(self, request_timeout):
        f = concurrent.futures.Future()
        self.probes.append(f)
        return f


class FakeAdmin:
    def __init__(self):
        self.client = FakeClient()


def test_doubt_probe_down_then_up():
    admin = FakeAdmin()
    w = SourceWatch(admin, timeout=2.0, interval=2.0)
    assert w.ok and w.tick(0.0) is None and admin.client.probes == []
    assert w.suspect("transport error") is True
    assert w.suspect("again") is False  # not news
    assert not w.ok
    assert w.tick(0.0) is None and len(admin.client.probes) == 1  # probe sent
    assert w.tick(0.5) is None  # not answered yet: no waiting, no verdict
    admin.client.probes[0].set_exception(RuntimeError("timed out"))
    assert w.tick(1.0) == "down" and w.down_since is not None and not w.ok
    assert w.tick(2.0) is None and len(admin.client.probes) == 1  # next probe after the interval
    assert w.tick(3.1) is None and len(admin.client.probes) == 2
    admin.client.probes[1].set_exception(RuntimeError("timed out"))
    assert w.tick(3.2) is None  # still down: said once
    assert w.tick(5.3) is None and len(admin.client.probes) == 3
    admin.client.probes[2].set_result(object())
    assert w.tick(5.4) == "up" and w.ok and w.down_since is None


def test_a_lifted_doubt_is_not_news_and_a_probe_that_never_answers_counts_as_failed():
    admin = FakeAdmin()
    w = SourceWatch(admin, timeout=2.0, interval=2.0)
    w.suspect("transport error")
    w.tick(0.0)
    admin.client.probes[0].set_result(object())
    assert w.tick(0.1) == "ok" and w.ok
    w.suspect("again")
    w.tick(10.0)
    assert w.tick(12.0) is None  # within timeout + 1 s
    assert w.tick(13.5) == "down"  # the future never resolved: unreachable
