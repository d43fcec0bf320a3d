"""Log line formats of the worker (`kafka-mirrors run --log-format text|json`).

json: one JSON object per line, keys `ts` (UTC, ISO 8601 with milliseconds), `level`,
`logger`, `message`, then any extra fields the call passed (`log.info(..., extra={...})`)
and `exception` when there is one. Every line is scrubbed before it is written: a mapping
is redacted as client settings are everywhere else (clientconfig.redact), and the secret
values of the link's client settings (passwords, JAAS configs, tokens, keys) are replaced
by `******` wherever they appear in a string. text: the plain lines the worker always
wrote, scrubbed the same way.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable, Mapping

from kafka_mirrors import clientconfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Secret values shorter than this are not searched for in messages: a one-character
# password would turn every digit of an offset into ******.
MIN_SECRET_LEN = 4

# every attribute a LogRecord has without `extra=` (what is left over is an extra field)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class Scrubber:
    """Hides secret values in whatever a log line carries."""

    def __init__(self, secrets: Iterable[str] = ()):
        found = {str(s) for s in secrets if s is not None and len(str(s)) >= MIN_SECRET_LEN}
        self.secrets = sorted(found, key=len, reverse=True)  # longest first: a secret inside another

    @classmethod
    def for_settings(cls, *settings: Mapping[str, Any]) -> "Scrubber":
        """From client settings (raw or translated): the values of their secret keys."""
        return cls(str(v) for conf in settings for k, v in conf.items()
                   if clientconfig.is_secret_key(k) and v and not clientconfig.PLACEHOLDER.fullmatch(str(v).strip()))

    def text(self, s: str) -> str:
        for secret in self.secrets:
            if secret in s:
                s = s.replace(secret, clientconfig.REDACTED)
        return s

    def value(self, v: Any) -> Any:
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, Mapping):
            redacted = clientconfig.redact({str(k): x for k, x in v.items()})
            return {k: self.value(x) for k, x in redacted.items()}
        if isinstance(v, (list, tuple, set, frozenset)):
            return [self.value(x) for x in v]
        if v is None or isinstance(v, (bool, int, float)):
            return v
        return self.text(str(v))


def link_scrubber(link) -> Scrubber:
    """The secrets of both clusters of a link, as written and as resolved."""
    settings = []
    for spec in (link.source, link.destination):
        for build in (spec.settings, spec.client_config):
            try:
                settings.append(build())
            except Exception:  # noqa: BLE001 - a setting that cannot be read carries no secret to hide
                continue
    return Scrubber.for_settings(*settings)


class TextFormatter(logging.Formatter):
    def __init__(self, scrubber: Scrubber | None = None):
        super().__init__(TEXT_FORMAT)
        self.scrubber = scrubber or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        return self.scrubber.text(super().format(record))


class JsonFormatter(logging.Formatter):
    def __init__(self, scrubber: Scrubber | None = None):
        super().__init__()
        self.scrubber = scrubber or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {"ts": ts, "level": record.levelname, "logger": record.name,
                                "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(self.scrubber.value(line), default=str, ensure_ascii=False)
