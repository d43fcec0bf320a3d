"""`kafka-mirrors run --log-format json` without a broker: every line is one JSON object
with ts, level, logger, message and the extra fields; no secret of the link's client
settings reaches a line, in the message, an extra field or a traceback."""
import io
import json
import logging
import re

import pytest

from kafka_mirrors.logs import JsonFormatter, Scrubber, TextFormatter, link_scrubber
from kafka_mirrors.registry import ClusterSpec

SECRET = "s3cr3t-pa55"


@pytest.fixture
def logger():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(Scrubber([SECRET, "no"])))  # "no": too short to search for
    lg = logging.getLogger("kafka_mirrors.test_logs")
    lg.handlers[:] = [handler]
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    yield lg, out
    lg.handlers[:] = []


def lines(out: io.StringIO) -> list[dict]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_every_line_parses_and_carries_the_fields(logger):
    lg, out = logger
    lg.info("[dr/orders-p0] copied %d records", 5)
    lg.warning("line with\nnewline and \"quotes\"", extra={"mirror": "orders", "lag_records": 12, "eta_s": None})
    try:
        raise ValueError("boom")
    except ValueError:
        lg.exception("it broke")
    got = lines(out)
    assert len(got) == 3
    for line in got:
        assert set(line) >= {"ts", "level", "logger", "message"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
        assert line["logger"] == "kafka_mirrors.test_logs"
    assert got[0]["level"] == "INFO" and got[0]["message"] == "[dr/orders-p0] copied 5 records"
    assert "mirror" not in got[0]  # no extra field invented
    assert got[1]["level"] == "WARNING" and got[1]["message"] == "line with\nnewline and \"quotes\""
    assert (got[1]["mirror"], got[1]["lag_records"], got[1]["eta_s"]) == ("orders", 12, None)
    assert got[2]["level"] == "ERROR" and "ValueError: boom" in got[2]["exception"]


def test_no_secret_in_any_part_of_a_line(logger):
    lg, out = logger
    lg.error("auth failed with password %s", SECRET, extra={"settings": {"sasl.password": "other-secret",
                                                                         "sasl.username": "alice"},
                                                            "note": f"jaas ... password=\"{SECRET}\";"})
    try:
        raise RuntimeError(f"connect: {SECRET}")
    except RuntimeError:
        lg.exception("client error")
    text = out.getvalue()
    assert SECRET not in text and "other-secret" not in text
    got = lines(out)
    assert got[0]["message"] == "auth failed with password ******"
    assert got[0]["settings"] == {"sasl.password": "******", "sasl.username": "alice"}
    assert got[0]["note"] == 'jaas ... password="******";'
    assert "connect: ******" in got[1]["exception"]



def test_a_very_short_secret_is_not_searched_for(logger):
    lg, out = logger
    lg.info("no worker seen for 3 s")  # "no" is a configured secret, but too short to hide
    assert lines(out)[0]["message"] == "no worker seen for 3 s"


def test_link_scrubber_finds_the_secrets_of_both_clusters(tmp_path):
    props = tmp_path / "admin.properties"
    props.write_text('security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n'
                     'sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required '
                     'username="admin" password="file-secret-1";\n')

    class Link:
        source = ClusterSpec("127.0.0.1:9092", config={"sasl.password": "inline-secret-2",
                                                        "sasl.username": "u", "sasl.mechanism": "PLAIN",
                                                        "security.protocol": "SASL_PLAINTEXT"})
        destination = ClusterSpec("127.0.0.1:9093", config_file=str(props))

    s = link_scrubber(Link())
    line = s.text("tried inline-secret-2 then file-secret-1 as user admin")
    assert line == "tried ****** then ****** as user admin"


def test_text_lines_are_scrubbed_too():
    rec = logging.LogRecord("kafka_mirrors.worker", logging.INFO, __file__, 1, "pw %s", (SECRET,), None)
    line = TextFormatter(Scrubber([SECRET])).format(rec)
    assert line.endswith(" INFO pw ******") and SECRET not in line
