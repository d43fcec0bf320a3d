"""Wires the kafka-mirrors commands together. Each subcommand lives in its own module;
this file only builds the app, the global options and the error boundary."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from kafka_mirrors import __version__
from kafka_mirrors.cli.application import Application
from kafka_mirrors.errors import KafkaMirrorsError


class BoundaryGroup(TyperGroup):
    """The one place a KafkaMirrorsError becomes a stderr line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # Confluent-style flags (`kafka-mirrors --promote --topics t ...`) have their own parser
        from kafka_mirrors.cli import confluent

        argv = list(sys.argv[1:] if args is None else args)
        if confluent.is_confluent_style(argv):
            code = confluent.run(argv)
            if standalone_mode:
                sys.exit(code)
            return code
        return super().main(args, prog_name, complete_var, standalone_mode, **extra)

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except KafkaMirrorsError as exc:
            app_obj = ctx.obj if isinstance(ctx.obj, Application) else Application()
            app_obj.fail(exc)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)


app = typer.Typer(
    cls=BoundaryGroup,
    name="kafka-mirrors",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (cli/completion.py)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kafka-mirrors {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    registry: Optional[Path] = typer.Option(
        None, "--registry", envvar="KAFKA_MIRRORS_REGISTRY", metavar="FILE",
        help="Link registry file [default: $KAFKA_MIRRORS_REGISTRY, else the user config dir].",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """kafka-mirrors: mirror topics that keep the source's offsets.

    \b
    Examples:
      kafka-mirrors link create dr --source src:9092 --destination dst:9092
      kafka-mirrors mirror create orders --link dr
      kafka-mirrors run --link dr
      kafka-mirrors failover orders --link dr

    Confluent-style flags work too (--bootstrap-server is the destination; see
    'kafka-mirrors --promote --help'):
      kafka-mirrors --failover --topics orders --bootstrap-server dst:9092

    Exit codes: 0 ok, 1 operation failed (or any item of a batch failed), 2 usage error.
    """
    ctx.obj = Application(registry_path=registry)


def _register() -> None:
    from kafka_mirrors.cli import link  # noqa: F401  (one module per subcommand group)

    app.add_typer(link.app, name="link")

    from kafka_mirrors.cli import describe, mirror

    app.add_typer(mirror.app, name="mirror")
    app.command("describe")(describe.describe)

    from kafka_mirrors.cli import run

    app.command("run")(run.run)

    from kafka_mirrors.cli import dr

    app.command("promote")(dr.promote)
    app.command("failover")(dr.failover)

    from kafka_mirrors.cli import failback

    app.command("reverse-and-start")(failback.reverse_and_start)
    app.command("reverse-and-pause")(failback.reverse_and_pause)
    app.command("truncate-and-restore")(failback.truncate_and_restore)


_register()


def main() -> None:
    os.environ.setdefault("TYPER_USE_RICH", "0")
    app(prog_name="kafka-mirrors")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
