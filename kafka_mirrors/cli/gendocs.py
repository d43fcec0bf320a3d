"""Files generated from the CLI itself: docs/cli.md (the --help of every command) and the
shell completion scripts in completions/.

    python -m kafka_mirrors.cli.gendocs           # (scripts/gen-docs) rewrite them
    python -m kafka_mirrors.cli.gendocs --check   # exit 1 naming the stale ones

Help is rendered at a fixed width (COLUMNS=80, no colour) so the output does not depend
on the terminal it was generated in; tests/unit/test_generated_docs.py fails when a file
differs from what this would write.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = Path("docs") / "cli.md"
COMPLETIONS = Path("completions")
REGENERATE = "scripts/gen-docs"
WIDTH = "80"

HEADER = f"""\
# kafka-mirrors command reference

Generated from `--help` by `{REGENERATE}`; do not edit by hand
(`tests/unit/test_generated_docs.py` fails when this file is out of date).
Exit codes everywhere: 0 ok, 1 the operation failed (or any item of a batch failed),
2 usage error.
"""


def _root_command():
    import typer.main

    from kafka_mirrors.cli import app
    return typer.main.get_command(app)


def _help(args: list[str], root=None) -> str:
    """`kafka-mirrors ARGS --help` as the terminal shows it at the fixed width. `root` is
    the click command of the app, built once for all commands (building it is most of
    the cost)."""
    import sys

    from typer.testing import CliRunner
    root = root or _root_command()
    env = {"COLUMNS": WIDTH, "NO_COLOR": "1", "TERM": "dumb", "TYPER_USE_RICH": "0"}
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _):  # also forces click's width to 80
        try:
            code = root.main(args + ["--help"], prog_name="kafka-mirrors")
        except SystemExit as exc:
            code = exc.code
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    if code not in (0, None):
        raise RuntimeError(f"kafka-mirrors {' '.join(args)} --help exited {code}: {stderr}")
    return stdout


def command_paths() -> list[list[str]]:
    """Every command as the words after 'kafka-mirrors', in the order --help lists them:
    groups first, then their commands."""
    root = _root_command()
    paths: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        paths.append(path)
        sub = getattr(cmd, "commands", None)
        if sub is None:
            return
        ctx = cmd.context_class(cmd, info_name=path[-1] if path else "kafka-mirrors")
        for name in cmd.list_commands(ctx):
            walk(sub[name], path + [name])

    walk(root, [])
    return paths


def cli_markdown() -> str:
    paths, root = command_paths(), _root_command()
    title = lambda p: " ".join(["kafka-mirrors", *p])  # noqa: E731
    anchor = lambda p: "-".join(["kafka-mirrors", *p])  # noqa: E731  (GitHub's heading ids)
    out = [HEADER, "## Commands\n"]
    out += [f"- [`{title(p)}`](#{anchor(p)})" for p in paths]
    out.append("- [Confluent-style flags](#confluent-style-flags)")
    out.append("- [`kafka-cluster-links`](#kafka-cluster-links)\n")
    for p in paths:
        out.append(f"## `{title(p)}`\n\n```text\n{_help(p, root).rstrip()}\n```\n")
    out.append("## Confluent-style flags\n\n`kafka-mirrors --list --help` (the same text for every action flag):\n\n"
               f"```text\n{_help(['--list'], root).rstrip()}\n```\n")
    out.append("## `kafka-cluster-links`\n\nThe second console script: Confluent's `kafka-cluster-links` flags "
               "onto `kafka-mirrors link ...`.\n\n"
               f"```text\n{_cluster_links_help().rstrip()}\n```\n")
    return "\n".join(out)


def _cluster_links_help() -> str:
    """`kafka-cluster-links --help` (plain text, no terminal width involved)."""
    import contextlib
    import io

    from kafka_mirrors.cli import clusterlinks
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = clusterlinks.run(["--help"])
    if code != 0:
        raise RuntimeError(f"kafka-cluster-links --help exited {code}")
    return buf.getvalue()


def expected_files() -> dict[Path, str]:
    """Path (relative to the repository) -> the content it should have."""
    from kafka_mirrors.cli.completion import SCRIPTS, completion_script
    files = {CLI_MD: cli_markdown()}
    for shell, name in SCRIPTS.items():
        files[COMPLETIONS / name] = completion_script(shell)
    return files


def stale_files(root: Path | None = None) -> list[Path]:
    root, out = root or ROOT, []
    for rel, content in expected_files().items():
        path = root / rel
        if not path.is_file() or path.read_text() != content:
            out.append(rel)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    os.environ["COLUMNS"] = WIDTH
    if args == ["--check"]:
        stale = stale_files()
        for rel in stale:
            print(f"out of date: {rel}; run '{REGENERATE}'", file=sys.stderr)
        return 1 if stale else 0
    if args:
        print("usage: python -m kafka_mirrors.cli.gendocs [--check]", file=sys.stderr)
        return 2
    for rel, content in expected_files().items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != content:
            path.write_text(content)
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
