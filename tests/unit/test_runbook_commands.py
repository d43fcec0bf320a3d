"""Every native `kafka-mirrors ...` command line in docs/runbook.md and examples/ names a
command and options the CLI really has (a runbook that fails at its first line is worse
than none), and the service examples run the worker as `kafka-mirrors run --link L`."""
import re
import shlex
from pathlib import Path

import pytest
import typer.main

from kafka_mirrors.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "runbook.md", ROOT / "examples" / "README.md", ROOT / "examples" / "kafka-mirrors-alive",
        ROOT / "examples" / "systemd" / "kafka-mirrors@.service",
        ROOT / "examples" / "systemd" / "kafka-mirrors-alive@.service",
        ROOT / "examples" / "kubernetes" / "deployment.yaml"]


def command_lines(text: str) -> list[str]:
    """Command lines (indented or at a line's start), `kafka-mirrors ...` in backticks, and
    what a service runs (`.../bin/kafka-mirrors ...`); not prose that names the tool."""
    text = text.replace("\\\n", " ")
    found = re.findall(r"`(kafka-mirrors [^`]*)`", text)
    for line in text.splitlines():
        m = re.match(r"\s*(kafka-mirrors [^#|>]*)", line) or re.search(r"bin/(kafka-mirrors [^'\"|]*)", line)
        if m:
            found.append(m.group(1))
    found = [f.strip() for f in found if len(f.split()) > 1]
    # Confluent-style flag lines (`kafka-mirrors --promote ...`) have their own parser and tests
    return [f for f in found if not f.split()[1].startswith("--") or f.split()[1] in NATIVE_ROOT]


# named in the docs as what does not exist (yet)
NOT_THERE = {"kafka-mirrors ... --dry-run"}
NATIVE_ROOT = ("--help", "--version", "--install-completion", "--show-completion")
ROOT_CMD = typer.main.get_command(app)


def check(line: str) -> None:
    tokens = shlex.split(line.replace("[", " ").replace("]", " ").replace("...", " "))[1:]
    cmd, words = ROOT_CMD, ["kafka-mirrors"]
    options = lambda c: {o for p in c.params for o in (*p.opts, *p.secondary_opts)}  # noqa: E731
    while tokens and tokens[0].startswith("--") and tokens[0] in options(cmd) and hasattr(cmd, "commands"):
        tokens = tokens[2:] if tokens[0] == "--registry" else tokens[1:]
    while tokens and getattr(cmd, "commands", None) and not tokens[0].startswith("-"):
        assert tokens[0] in cmd.commands, f"{line!r}: no command {' '.join(words + tokens[:1])!r}"
        cmd = cmd.commands[tokens[0]]
        words.append(tokens.pop(0))
    for t in tokens:
        if t.startswith("-") and t not in ("-", "--"):
            assert t.split("=")[0] in options(cmd) | {"-h", "--help"}, f"{line!r}: {' '.join(words)} has no {t}"


LINES = sorted({(p.relative_to(ROOT).as_posix(), line) for p in DOCS for line in command_lines(p.read_text())
                if line not in NOT_THERE})


def test_the_runbook_has_commands():
    assert len([1 for p, _ in LINES if p == "docs/runbook.md"]) > 30


@pytest.mark.parametrize("where,line", LINES, ids=[f"{p}: {line}" for p, line in LINES])
def test_command_exists(where, line):
    check(line)


def test_what_the_docs_say_is_missing_is_missing():
    for line in NOT_THERE - {"kafka-mirrors ... --dry-run"}:
        with pytest.raises(AssertionError):
            check(line)


def test_check_catches_an_invented_flag():
    with pytest.raises(AssertionError, match="has no --dry-run"):
        check("kafka-mirrors promote orders --link dr --dry-run")
    with pytest.raises(AssertionError, match="no command"):
        check("kafka-mirrors mirror stop orders --link dr")


def test_service_examples_run_the_worker_and_stop_it_cleanly():
    unit = (ROOT / "examples" / "systemd" / "kafka-mirrors@.service").read_text()
    assert "ExecStart=/usr/local/bin/kafka-mirrors run --link %i" in unit
    assert "KillSignal=SIGTERM" in unit and "TimeoutStopSec=60" in unit
    text = (ROOT / "examples" / "kubernetes" / "deployment.yaml").read_text()
    try:
        import yaml
    except ImportError:  # not a dependency: check the lines that matter as text
        assert ('command: ["kafka-mirrors", "run", "--link", "dr", "--metrics-port", "9405", '
                '"--metrics-host", "0.0.0.0"]') in text and "containerPort: 9405" in text
        assert "terminationGracePeriodSeconds: 60" in text and "strategy: {type: Recreate}" in text
        assert 'command: ["kafka-mirrors", "describe", "--link", "dr", "--check"]' in text
        return
    dep = yaml.safe_load(text)
    pod = dep["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["command"] == ["kafka-mirrors", "run", "--link", "dr", "--metrics-port", "9405",
                                 "--metrics-host", "0.0.0.0"]
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9405}]
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert worker["readinessProbe"]["exec"]["command"] == ["kafka-mirrors", "describe", "--link", "dr", "--check"]
    assert "kafka-mirrors describe --link dr --output json" in worker["livenessProbe"]["exec"]["command"][2]
