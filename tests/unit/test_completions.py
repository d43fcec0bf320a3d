"""Shell completion: link names from the registry for --link and link NAME, and
--show-completion / --install-completion printing and installing completions/'s scripts."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kafka_mirrors.cli import app
from kafka_mirrors.cli.completion import SCRIPTS, complete_link_names, completion_script
from kafka_mirrors.cli.gendocs import ROOT


@pytest.fixture
def two_links(cli, registry_path):
    for name, dst in (("dr", "dst:9093"), ("dr-west", "west:9093"), ("audit", "audit:9093")):
        r = cli("link", "create", name, "--source", "src:9092", "--destination", dst, "--no-validate")
        assert r.exit_code == 0, r.stderr
    return registry_path


class Root:
    def __init__(self, registry):
        self.params = {"registry": registry}


class Ctx:
    def __init__(self, registry):
        self._root = Root(registry)

    def find_root(self):
        return self._root


def test_completer_proposes_registry_links_by_prefix(two_links):
    assert complete_link_names(Ctx(two_links), "dr") == [("dr", "src:9092 -> dst:9093"),
                                                         ("dr-west", "src:9092 -> west:9093")]
    assert [n for n, _ in complete_link_names(Ctx(two_links), "")] == ["audit", "dr", "dr-west"]
    assert complete_link_names(Ctx(two_links), "x") == []


def test_completer_never_fails(tmp_path):
    assert complete_link_names(Ctx(tmp_path / "missing.toml"), "") == []
    bad = tmp_path / "links.toml"
    bad.write_text("version = [\n")
    assert complete_link_names(Ctx(bad), "") == []
    assert complete_link_names(Ctx(tmp_path), "") == []  # a directory


def complete(words: str, cword: int, env: dict) -> list[str]:
    """What bash would get: the CLI run in completion mode, as the bash script runs it."""
    env = {**env, "_KAFKA_MIRRORS_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    r = CliRunner().invoke(app, [], prog_name="kafka-mirrors", env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("words", ["kafka-mirrors run --link d", "kafka-mirrors describe -l d",
                                   "kafka-mirrors mirror create t --link d", "kafka-mirrors promote t --link d",
                                   "kafka-mirrors truncate-and-restore t --link d", "kafka-mirrors link delete d"])
def test_link_names_complete_in_every_command(two_links, words):
    assert complete(words, len(words.split()) - 1, {"KAFKA_MIRRORS_REGISTRY": str(two_links)}) == ["dr", "dr-west"]


def test_registry_option_is_honoured_while_completing(two_links, monkeypatch):
    monkeypatch.delenv("KAFKA_MIRRORS_REGISTRY")
    words = f"kafka-mirrors --registry {two_links} run --link a"
    assert complete(words, 5, {}) == ["audit"]


def test_commands_complete(two_links):
    assert complete("kafka-mirrors mi", 1, {}) == ["mirror"]
    assert "--install-completion" in complete("kafka-mirrors --", 1, {})


@pytest.mark.parametrize("shell", sorted(SCRIPTS))
def test_show_completion_prints_the_committed_script(shell, monkeypatch):
    monkeypatch.setattr("typer.completion._get_shell_name", lambda: shell)
    r = CliRunner().invoke(app, ["--show-completion"], prog_name="kafka-mirrors", catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == completion_script(shell) == (ROOT / "completions" / SCRIPTS[shell]).read_text()


def test_install_completion_writes_the_script_for_bash(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("typer._completion_shared._get_shell_name", lambda: "bash")
    r = CliRunner().invoke(app, ["--install-completion"], prog_name="kafka-mirrors", catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    script = tmp_path / ".bash_completions" / "kafka-mirrors.sh"
    assert script.read_text() + "\n" == completion_script("bash")
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_link_names_through_the_committed_script(two_links):
    """The real thing: bash sources completions/kafka-mirrors.bash and asks the installed
    console script."""
    bindir = Path(sys.executable).parent
    if not (bindir / "kafka-mirrors").exists():
        pytest.skip("the kafka-mirrors console script is not installed beside this python")
    script = ROOT / "completions" / "kafka-mirrors.bash"
    prog = f"""source '{script}'
COMP_WORDS=(kafka-mirrors mirror list --link dr); COMP_CWORD=4
_kafka_mirrors_completion kafka-mirrors
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "KAFKA_MIRRORS_REGISTRY": str(two_links)}
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == ["dr", "dr-west"]
