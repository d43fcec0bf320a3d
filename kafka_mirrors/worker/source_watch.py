"""Whether the source cluster answers, learned without ever blocking the worker."""
from __future__ import annotations

import time

from confluent_kafka import KafkaError

from kafka_mirrors.kafka.admin import Admin

PROBE_INTERVAL_S = 2.0
# librdkafka errors that say the source's brokers cannot be reached
SOURCE_DOWN_CODES = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}


class SourceWatch:
    """Whether the source cluster answers, learned without ever blocking the loop: while
    it is in doubt, a describe-cluster request is in flight and its future is looked at
    on each turn of the loop."""

    def __init__(self, admin: Admin, timeout: float, interval: float = PROBE_INTERVAL_S):
        self.admin = admin
        self.timeout = timeout
        self.interval = interval
        self.ok = True
        self.down_since: float | None = None  # wall clock, for the heartbeat
        self.why = ""
        self._probe = None
        self._probe_started = 0.0
        self._next_probe = 0.0

    def suspect(self, why: str) -> bool:
        """The source may be gone: copying waits until a probe answers. True when this
        is news (it was thought reachable)."""
        if not self.ok:
            return False
        self.ok, self.why, self._next_probe = False, why, 0.0
        return True

    def tick(self, now: float) -> str | None:
        """'down' when the source is first found unreachable, 'up' when it answers again
        after that, 'ok' when a doubt is lifted; else None."""
        if self.ok:
            return None
        if self._probe is None:
            if now >= self._next_probe:
                self._probe = self.admin.client.describe_cluster(request_timeout=self.timeout)
                self._probe_started = now
            return None
        if not self._probe.done() and now - self._probe_started < self.timeout + 1.0:
            return None
        probe, self._probe = self._probe, None
        try:
            probe.result(0)
        except Exception as exc:  # the future's error or its timeout: unreachable either way
            self._next_probe = now + self.interval
            if self.down_since is None:
                self.down_since = time.time()
                self.why = f"{self.why}; {exc}" if str(exc) else self.why
                return "down"
            return None
        self.ok = True
        was_down, self.down_since = self.down_since is not None, None
        return "up" if was_down else "ok"
