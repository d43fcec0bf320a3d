"""Admin calls with timeouts and typed errors.

`Admin` is cheap to build and opens no connection until its first call (librdkafka
connects lazily). Every future is awaited with a timeout; a Kafka error becomes a
KafkaMirrorsError subclass naming the cluster and what was being done.
"""
from __future__ import annotations

import collections

import concurrent.futures
from typing import Any, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from kafka_mirrors.errors import (
    KafkaAuthError,
    KafkaMirrorsError,
    KafkaOperationError,
    KafkaUnavailableError,
    NotFoundError,
)

DEFAULT_TIMEOUT = 15.0

_AUTH_CODES = {
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}
_UNAVAILABLE_CODES = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._RESOLVE,
}


def map_kafka_error(err: KafkaError | None, what: str, cluster: str) -> KafkaMirrorsError:
    """Turn a librdkafka error into our typed error, naming the cluster and the action."""
    if err is None:
        return KafkaOperationError(f"{what} on {cluster} failed")
    code = err.code()
    text = err.str()
    if code in _AUTH_CODES:
        return KafkaAuthError(f"{what} on {cluster} was refused: {text}",
                              "check the link's client settings and the principal's ACLs")
    if code in _UNAVAILABLE_CODES:
        return KafkaUnavailableError(f"{cluster} is unreachable ({what}): {text}",
                                     "check the bootstrap servers and that the cluster is up")
    if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
        return NotFoundError(f"{what} on {cluster}: topic or partition does not exist")
    return KafkaOperationError(f"{what} on {cluster} failed: {err.name()}: {text}")


def await_result(future: concurrent.futures.Future, what: str, cluster: str,
                 timeout: float = DEFAULT_TIMEOUT) -> Any:
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise KafkaUnavailableError(f"{cluster} did not answer within {timeout:g} s ({what})",
                                    "check the bootstrap servers and that the cluster is up") from None
    except KafkaException as exc:
        raise map_kafka_error(exc.args[0] if exc.args else None, what, cluster) from None


class Admin:
    """A thin admin client for one cluster. `label` names the cluster in messages
    (e.g. "source cluster 127.0.0.1:9092")."""

    def __init__(self, config: Mapping[str, str], label: str, timeout: float = DEFAULT_TIMEOUT):
        self.label = label
        self.timeout = timeout
        conf = dict(config)
        # Bound every internal wait by the caller's timeout and keep librdkafka's own
        # connection chatter out of the operator's terminal.
        conf.setdefault("socket.timeout.ms", int(timeout * 1000))
        conf.setdefault("log_level", 0)
        # the newest client-level errors only: a worker's admin clients live for days, and
        # error_cb reports every dropped connection
        self._errors: collections.deque[KafkaError] = collections.deque(maxlen=64)
        conf.setdefault("error_cb", self._errors.append)
        self.client = AdminClient(conf)

    def _await(self, future, what: str, timeout: float | None = None):
        return await_result(future, what, self.label, timeout or self.timeout)

    def _raise_fatal_connect_error(self) -> None:
        # an authentication failure arrives on error_cb (served by poll), not on the future
        self.client.poll(0.2)
        for err in self._errors:
            if err.code() in _AUTH_CODES:
                raise map_kafka_error(err, "connecting", self.label)

    def describe_cluster(self):
        """The cluster's description (cluster_id, controller, nodes)."""
        try:
            return self._await(self.client.describe_cluster(request_timeout=self.timeout), "describe cluster")
        except KafkaUnavailableError:
            self._raise_fatal_connect_error()
            raise

    def cluster_id(self) -> str:
        return self.describe_cluster().cluster_id

    def probe_cluster_id(self) -> str:
        """The cluster ID, failing as soon as the broker refuses our credentials: an
        authentication error arrives on error_cb while the describe-cluster future would
        otherwise wait out the whole timeout."""
        import time

        future = self.client.describe_cluster(request_timeout=self.timeout)
        deadline = time.monotonic() + self.timeout
        while not future.done() and time.monotonic() < deadline:
            self.client.poll(0.1)
            for err in self._errors:
                if err.code() in _AUTH_CODES:
                    future.cancel()
                    raise map_kafka_error(err, "connecting", self.label)
        return self._await(future, "describe cluster", max(0.1, deadline - time.monotonic())).cluster_id
