"""The application object every command receives: the two consoles (data on stdout,
diagnostics on stderr), the output format, the registry path, and `abort`.

All terminal output goes through here; nothing outside `cli/` prints.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, NoReturn, Sequence

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kafka_mirrors.errors import KafkaMirrorsError


def topic_names(value):
    """Typer callback of a TOPIC argument or option: a name Kafka refuses is a usage error
    (exit 2, Kafka's words) before anything else is done."""
    from kafka_mirrors.names import check_topic
    for name in [value] if isinstance(value, str) else value or []:
        check_topic(name)
    return value


# past this many rows a table is laid out plainly (rich took 20 s for the 100 tables of
# 100 partitions of a 10,000-partition link)
PLAIN_TABLE_ROWS = 50

class OutputFormat(str, Enum):
    text = "text"
    json = "json"


def _console(stderr: bool) -> Console:
    # Rich markup is off everywhere: topic names such as 'a[1]' must print as they are.
    # Diagnostics are never wrapped: an error stays one line in a runbook's log.
    return Console(stderr=stderr, markup=False, highlight=False, emoji=False,
                   soft_wrap=stderr, width=int(os.environ.get("COLUMNS", "0")) or None)


@dataclass
class Application:
    registry_path: Path | None = None
    out: Console = field(default_factory=lambda: _console(False))
    err: Console = field(default_factory=lambda: _console(True))

    # ---- diagnostics (stderr)
    def info(self, message: str) -> None:
        self.err.print(message)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}")

    def note(self, message: str) -> None:
        """A service's note: a warning, unless the service marked it information."""
        from kafka_mirrors.readonly import Info
        (self.info if isinstance(message, Info) else self.warn)(message)

    def abort(self, message: str, code: int = 1, hint: str | None = None) -> NoReturn:
        # one line, whatever the message quotes (a name given with a newline in it, say)
        line = f"error: {message}" + (f"; {hint}" if hint else "")
        self.err.print("".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in line))
        raise typer.Exit(code)

    def fail(self, exc: KafkaMirrorsError) -> NoReturn:
        self.abort(exc.message, exc.exit_code, exc.hint)

    # ---- data (stdout)
    def print(self, message: str = "") -> None:
        self.out.print(Text(message))

    def json(self, view: Any) -> None:
        sys.stdout.write(json.dumps(view, sort_keys=True, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
        rows = [["-" if v is None else str(v) for v in r] for r in rows]
        if len(rows) > PLAIN_TABLE_ROWS:
            self._plain_table(columns, rows, title)
            return
        t = Table(title=title, box=None, pad_edge=False, header_style="bold", show_edge=False)
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*(Text(v) for v in r))
        self.out.print(t)

    def _plain_table(self, columns: Sequence[str], rows: list[list[str]], title: str | None) -> None:
        """Columns padded to their widest cell, no wrapping: rich's layout of a 10,000-row
        table (one row per partition) took 20 s; this is the same text in well under one."""
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        lines = [title] if title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    def render(self, fmt: OutputFormat, view: Any, text_renderer) -> None:
        """Every read command builds a view (plain dicts/lists) and either serialises it
        or hands it to its text renderer."""
        if fmt == OutputFormat.json:
            self.json(view)
        else:
            text_renderer(view)
