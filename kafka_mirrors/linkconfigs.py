"""Confluent's cluster link configuration, as `kafka-cluster-links --create --config-file F
[--config K=V,...]` takes it, split into what our link is made of: the source cluster's
bootstrap servers, its client settings, and link options (registry.LINK_OPTIONS).

A Confluent link config file mixes all three. Keys are sorted like this:
- `bootstrap.servers`: the source cluster;
- a link option under our name or Confluent's (MAPPED, the JSON filters translated to
  our include/exclude regexes);
- a Confluent link config we do not have (UNSUPPORTED, or any other key under a link
  config prefix): refused, all named at once, unless set to the value that is
  Confluent's default and what kafka-mirrors does anyway (HARMLESS);
- anything else: a client setting of the source, checked later as every link's are.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping

from kafka_mirrors.errors import ConfigError, UsageError
from kafka_mirrors.registry import LINK_OPTIONS

# Confluent link configs that are ours under the same name
SAME_NAME = ("consumer.offset.sync.enable", "consumer.offset.sync.ms", "auto.create.mirror.topics.enable",
             "topic.config.sync.ms")
# Confluent name -> ours (the two filters are JSON, translated by _filters)
RENAMED = {"cluster.link.prefix": "mirror.topic.prefix"}
FILTERS = {
    "consumer.offset.group.filters": ("groupFilters", "consumer.offset.groups"),
    "auto.create.mirror.topics.filters": ("topicFilters", "auto.create.mirror.topics"),
}
# Confluent link configs accepted at these values only: their Confluent default, which is
# also what kafka-mirrors does (a destination-initiated, outbound link that syncs no ACLs,
# copies from the source's log start offset and does not prefix consumer groups)
HARMLESS = {"link.mode": "destination", "connection.mode": "outbound", "acl.sync.enable": "false",
            "consumer.group.prefix.enable": "false", "cluster.link.paused": "false",
            "mirror.start.offset.spec": "earliest"}
# Confluent link configs kafka-mirrors has no counterpart for
UNSUPPORTED = ("acl.filters", "acl.sync.ms", "availability.check.ms",
               "availability.check.consecutive.failure.threshold", "cluster.link.retry.timeout.ms",
               "topic.config.sync.include", "reverse.connection.setup.timeout.ms", "num.cluster.link.fetchers",
               "link.fetcher.flow.control", "cluster.link.metadata.topic.replication.factor")
# any other key under these is a Confluent link config too, not a client setting
LINK_PREFIXES = ("acl.", "cluster.link.", "availability.check.", "local.", "mirror.", "link.",
                 "auto.create.mirror.topics.", "consumer.offset.", "consumer.group.", "topic.config.sync.",
                 "reverse.")


def supported_keys() -> list[str]:
    """Every Confluent link config name that maps onto a link option, sorted."""
    return sorted(set(SAME_NAME) | set(RENAMED) | set(FILTERS))


@dataclass
class LinkConfig:
    source_bootstrap: str | None = None
    client_settings: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)


def split_pairs(value: str, flag: str = "--config") -> dict[str, str]:
    """Confluent's `--config k=v,k2=v2`: a comma starts a new pair only when what follows
    it holds an '=' (so a value such as a bootstrap list may contain commas)."""
    out: dict[str, str] = {}
    last = None
    for part in value.split(","):
        key, sep, v = part.partition("=")
        if sep and key.strip():
            last = key.strip()
            out[last] = v
        elif last is not None:
            out[last] += "," + part
        elif part.strip():
            raise UsageError(f"bad {flag} '{part}': expected KEY=VALUE[,KEY=VALUE...]")
    return out


def _regexes(filters: list[dict], key: str) -> tuple[list[str], list[str]]:
    """Confluent's [{"name", "patternType": LITERAL|PREFIXED, "filterType": INCLUDE|EXCLUDE}]
    as (include, exclude) full-match regexes."""
    include, exclude = [], []
    for f in filters:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise ConfigError(f"link config '{key}': each filter needs a \"name\"")
        name = f["name"]
        pattern = str(f.get("patternType", "LITERAL")).upper()
        kind = str(f.get("filterType", "INCLUDE")).upper()
        if pattern not in ("LITERAL", "PREFIXED") or kind not in ("INCLUDE", "EXCLUDE"):
            raise ConfigError(f"link config '{key}': patternType must be LITERAL or PREFIXED and filterType "
                              f"INCLUDE or EXCLUDE, not {pattern} and {kind}")
        if name == "*":
            regex = ".*"
        else:
            regex = re.escape(name) + (".*" if pattern == "PREFIXED" else "")
        (include if kind == "INCLUDE" else exclude).append(regex)
    return include, exclude


def translate_filters(key: str, text: str) -> dict[str, str]:
    """One of Confluent's JSON filter configs as our `<prefix>.include`/`.exclude` options."""
    wrapper, prefix = FILTERS[key]
    try:
        doc = json.loads(text.strip().strip("'"))
    except ValueError as exc:
        raise ConfigError(f"link config '{key}' is not JSON: {exc}") from None
    filters = doc.get(wrapper) if isinstance(doc, dict) else None
    if not isinstance(filters, list):
        raise ConfigError(f"link config '{key}' must be {{\"{wrapper}\": [...]}}")
    include, exclude = _regexes(filters, key)
    return {f"{prefix}.include": ",".join(include), f"{prefix}.exclude": ",".join(exclude)}


def _is_link_config(key: str) -> bool:
    return key in UNSUPPORTED or key in HARMLESS or key.startswith(LINK_PREFIXES)


def split(props: Mapping[str, str]) -> LinkConfig:
    """The link made of Confluent's config. Every unsupported key is named in one error."""
    out = LinkConfig()
    unsupported: list[str] = []
    for key, value in props.items():
        value = str(value)
        if key == "bootstrap.servers":
            out.source_bootstrap = value.strip()
        elif key in LINK_OPTIONS or key in SAME_NAME:
            out.options[key] = value
        elif key in RENAMED:
            out.options[RENAMED[key]] = value
        elif key in FILTERS:
            out.options.update(translate_filters(key, value))
        elif key in HARMLESS:
            if value.strip().lower() != HARMLESS[key]:
                unsupported.append(f"{key}={value.strip()}")
        elif _is_link_config(key):
            unsupported.append(key)
        else:
            out.client_settings[key] = value
    if unsupported:
        raise ConfigError(f"link config(s) not supported by kafka-mirrors: {', '.join(unsupported)}",
                          f"supported: bootstrap.servers, {', '.join(supported_keys())}, the client settings "
                          f"of the source, and kafka-mirrors' own link options "
                          f"({', '.join(k for k in LINK_OPTIONS if k not in SAME_NAME)})")
    return out

