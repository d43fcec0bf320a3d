"""Topic names and bootstrap addresses as Kafka itself accepts them, checked before any
cluster is contacted, so a name Kafka would refuse is a usage error (exit 2) and never a
request. The messages are Kafka's own: `Topic.validate` for topic names, the Java
client's `ClientUtils.parseAndValidateAddresses` for bootstrap.servers (librdkafka is
more lenient: it takes a missing port as 9092, which hides a typo until connect time).
"""
from __future__ import annotations

import re

from kafka_mirrors.errors import UsageError

TOPIC_MAX_LENGTH = 249
_TOPIC_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")
# the Java client's HOST_PORT_PATTERN: any prefix (e.g. SASL_SSL://), [IPv6], :port
_HOST_PORT = re.compile(r".*?\[?([0-9a-zA-Z\-%._:]*)\]?:([0-9]+)")


def shown(value: str) -> str:
    """`value` printable on one line: control and non-ASCII characters escaped."""
    return value.encode("unicode_escape").decode("ascii") if not value.isascii() or not value.isprintable() \
        else value


def topic_problem(name: str) -> str | None:
    """Kafka's reason for refusing `name` as a topic name, or None if it is legal."""
    if not name:
        return "topic name is illegal, it can't be empty"
    if name in (".", ".."):
        return "topic name cannot be \".\" or \"..\""
    if len(name) > TOPIC_MAX_LENGTH:
        return f"topic name is illegal, it can't be longer than {TOPIC_MAX_LENGTH} characters, topic name: {shown(name)}"
    if not _TOPIC_LEGAL.fullmatch(name):
        return (f"topic name \"{shown(name)}\" is illegal, it contains a character other than ASCII "
                "alphanumerics, '.', '_' and '-'")
    return None


def check_topic(name: str, what: str = "") -> str:
    """`name`, or UsageError in Kafka's words (`what` names the argument, e.g. '--source-topic')."""
    problem = topic_problem(name)
    if problem:
        raise UsageError(f"{what}: {problem}" if what else problem)
    return name


def check_topics(names, what: str = "") -> list[str]:
    return [check_topic(n, what) for n in names]


def bootstrap_problem(servers: str) -> str | None:
    """The Java client's reason for refusing `servers` as bootstrap.servers, or None."""
    urls = [u.strip() for u in servers.split(",") if u.strip()]
    if not urls:
        return "No bootstrap urls given in bootstrap.servers"
    for url in urls:
        m = _HOST_PORT.fullmatch(url)
        if not m or not m.group(1):
            return f"Invalid url in bootstrap.servers: {shown(url)} (expected host:port)"
        if not 1 <= int(m.group(2)) <= 65535:
            return f"Invalid port in bootstrap.servers: {shown(url)} (a port is 1-65535)"
    return None


def check_bootstrap(servers: str, flag: str) -> str:
    """`servers`, or UsageError naming the flag that gave it."""
    problem = bootstrap_problem(servers)
    if problem:
        raise UsageError(f"{flag}: {problem}")
    return servers
