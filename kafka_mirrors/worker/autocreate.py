"""Auto-created mirrors (whole-cluster DR, docs/architecture.md section 4): with the link option
auto.create.mirror.topics.enable, the worker mirrors every source topic whose name
matches an auto.create.mirror.topics.include regex and no .exclude regex (full match),
through the same path as `mirror create`.

Never mirrored automatically: internal topics (names starting with "__", "_schemas",
"_confluent-*"), and a source topic that already has a mirror record on the link in any
state: a stopped or failed mirror is never re-created behind the operator's back. A
refusal (e.g. the destination topic exists and is not empty) is logged once per topic
and tried again only after a while.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Mapping

from kafka_mirrors.errors import KafkaMirrorsError
from kafka_mirrors.offsetsync import matches

log = logging.getLogger("kafka_mirrors.autocreate")

RETRY_REFUSED_S = 60.0


def is_internal(topic: str) -> bool:
    return topic.startswith("__") or topic == "_schemas" or topic.startswith("_confluent")


def topics_to_mirror(source_topics: Iterable[str], mirrors: Mapping[str, object], include: Iterable[str],
                     exclude: Iterable[str], prefix: str = "") -> list[str]:
    """Source topics that should get a mirror now. `mirrors` maps mirror topic -> its
    record (anything with a `source_topic`), in any state."""
    include, exclude = list(include), list(exclude)
    if not include:
        return []
    taken = {getattr(r, "source_topic", None) for r in mirrors.values()}
    out = []
    for topic in sorted(set(source_topics)):
        if is_internal(topic) or not matches(topic, include, exclude):
            continue
        if topic in taken or prefix + topic in mirrors:
            continue
        out.append(topic)
    return out


class AutoCreator:
    """Remembers refusals so each is logged once; `create(topic)` is `mirror create`."""

    def __init__(self, link, create: Callable[[str], object], clock: Callable[[], float] = time.monotonic):
        self.link = link
        self.create = create
        self.clock = clock
        self.refused: dict[str, tuple[str, float]] = {}  # topic -> (message, retry at)

    def tick(self, source_topics: Iterable[str], mirrors: Mapping[str, object]) -> list[str]:
        """Create the missing mirrors; returns the topics mirrored in this tick."""
        link = self.link
        todo = topics_to_mirror(source_topics, mirrors, link.option("auto.create.mirror.topics.include"),
                                link.option("auto.create.mirror.topics.exclude"),
                                link.option("mirror.topic.prefix") or "")
        now = self.clock()
        created = []
        for topic in todo:
            seen = self.refused.get(topic)
            if seen is not None and now < seen[1]:
                continue
            try:
                self.create(topic)
            except KafkaMirrorsError as exc:
                msg = str(exc)
                if seen is None or seen[0] != msg:
                    log.warning("[%s] source topic '%s' matches the auto-create patterns but was not mirrored: %s",
                                link.name, topic, msg)
                self.refused[topic] = (msg, now + RETRY_REFUSED_S)
                continue
            self.refused.pop(topic, None)
            created.append(topic)
            log.info("[%s] source topic '%s' matches the auto-create patterns: mirror created", link.name, topic)
        return created
