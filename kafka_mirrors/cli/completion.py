"""Shell completion: the link-name completer behind every --link option and link NAME
argument, and the bash, zsh and fish scripts kept in completions/.

The scripts are the ones `kafka-mirrors --show-completion` prints: thin shims that ask
the CLI itself what to propose (`_KAFKA_MIRRORS_COMPLETE=complete_bash kafka-mirrors`),
so commands, options and link names are always those of the installed version and of
the registry in use. scripts/gen-docs (kafka_mirrors/cli/gendocs.py) writes them;
tests/unit/test_generated_docs.py fails when they are out of date.
"""
from __future__ import annotations

import typer

PROG = "kafka-mirrors"
COMPLETE_VAR = "_KAFKA_MIRRORS_COMPLETE"
# shell -> file name under completions/ (the names each shell's loader looks for)
SCRIPTS = {"bash": "kafka-mirrors.bash", "zsh": "_kafka-mirrors", "fish": "kafka-mirrors.fish"}


def complete_link_names(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Link names from the registry the command line would use (--registry, else
    $KAFKA_MIRRORS_REGISTRY, else the user config dir) that start with `incomplete`,
    each with its 'source -> destination' as help. Completion never fails: a missing or
    unreadable registry proposes nothing."""
    from kafka_mirrors.errors import KafkaMirrorsError
    from kafka_mirrors.registry import Registry

    # root callbacks do not run while completing, so ctx.obj is not set: read the
    # parsed --registry (its envvar already applied) from the root context
    path = ctx.find_root().params.get("registry")
    try:
        links = Registry(path).links()
    except (KafkaMirrorsError, OSError):
        return []
    return [(name, f"{link.source.bootstrap} -> {link.destination.bootstrap}")
            for name, link in sorted(links.items()) if name.startswith(incomplete or "")]


def completion_script(shell: str) -> str:
    """What `kafka-mirrors --show-completion` prints in `shell`."""
    # typer's own template, the one --show-completion and --install-completion use
    from typer._completion_shared import get_completion_script
    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell) + "\n"
