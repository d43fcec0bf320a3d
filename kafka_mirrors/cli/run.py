"""`kafka-mirrors run --link NAME`: the long-running replication worker."""
from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from enum import Enum

import typer

from kafka_mirrors.cli.application import Application
from kafka_mirrors.cli.completion import complete_link_names


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def run(
    ctx: typer.Context,
    link: str = typer.Option(..., "--link", "-l", help="The link whose ACTIVE mirrors to copy.",
                             autocompletion=complete_link_names),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Serve Prometheus metrics on this port at /metrics (1-65535; default: the "
        "link option metrics.port, 0 = none). Series: docs/metrics.md."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host",
                                     help="Address the metrics endpoint binds (0.0.0.0: every interface)."),
    log_format: LogFormat = typer.Option(LogFormat.text, "--log-format",
                                         help="text, or json: one JSON object per line (ts, level, logger, "
                                         "message, extra fields). Either way the link's secret setting "
                                         "values are masked (******)."),
    instance_id: str | None = typer.Option(
        None, "--instance-id", help="A name for this worker that stays the same across its restarts (e.g. the "
        "host name): a restart within worker.session.timeout.ms takes back its partitions without moving them. "
        "Two running workers of a link must not share one."),
) -> None:
    """Copy every ACTIVE mirror of a link until SIGINT/SIGTERM.

    Logs go to stderr, each line prefixed [link/topic-pN]. On SIGINT or SIGTERM in-flight
    writes are finished and the worker exits 0.

    Run as many workers of one link as you like, on any hosts: they share its mirror
    partitions through a consumer group on the destination (kafka-mirrors-workers.LINK),
    and a worker that stops or is cut off hands its partitions to the others.

    While a mirror is more than 10,000 records behind (its initial copy, say), a terminal
    shows a progress bar with copy rate and ETA; elsewhere a log line every 30 s says
    how far it has got.

    \b
    Examples:
      kafka-mirrors run --link dr
      kafka-mirrors run --link dr --log-level debug
      kafka-mirrors run --link dr --metrics-port 9405
      kafka-mirrors run --link dr --log-format json
      kafka-mirrors run --link dr --instance-id "$(hostname)"
    """
    app: Application = ctx.obj
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        app.abort(f"unknown log level '{log_level}'", 2, "use debug, info, warning or error")
    from kafka_mirrors.metrics import check_port
    from kafka_mirrors.registry import resolve_registry
    from kafka_mirrors.worker import Worker

    if metrics_port is not None:
        check_port(metrics_port)
    if instance_id is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", instance_id):
        app.abort(f"--instance-id '{instance_id}' is not a valid name", 2,
                  "use letters, digits, '.', '_' and '-' (at most 200), e.g. --instance-id \"$(hostname)\"")
    the_link = resolve_registry(app).get(link)
    port = metrics_port if metrics_port is not None else the_link.option("metrics.port")
    from kafka_mirrors.cli.progress import ConsoleLogHandler, ProgressReporter, wants_bar
    from kafka_mirrors.logs import JsonFormatter, TextFormatter, link_scrubber

    scrubber = link_scrubber(the_link)
    bar = wants_bar(sys.stderr, log_format.value)
    handler = ConsoleLogHandler(app.err) if bar else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(scrubber) if log_format == LogFormat.json else TextFormatter(scrubber))
    root = logging.getLogger("kafka_mirrors")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("kafka_mirrors.worker").info("signal %d: finishing in-flight writes", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    from confluent_kafka import KafkaException

    worker = Worker(the_link, metrics=(metrics_host, port) if port else None, instance_id=instance_id)
    progress = ProgressReporter(worker.plane, the_link.name, console=app.err if bar else None).start()
    try:
        code = worker.run(stop)
    except KafkaException as exc:
        # a client error the worker could not charge to one mirror (e.g. at start-up,
        # before any mirror runs): said plainly, no traceback
        err = exc.args[0] if exc.args else exc
        app.abort(f"worker for link '{link}' stopped: {getattr(err, 'str', lambda: str(err))()}", 1,
                  f"check both clusters are reachable, then run 'kafka-mirrors run --link {link}' again")
    finally:
        progress.close()
        for s, h in old.items():
            signal.signal(s, h)
    raise typer.Exit(code)
