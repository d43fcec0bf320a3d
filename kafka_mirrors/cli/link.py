"""`kafka-mirrors link ...`: named bindings between a source and a destination cluster."""
from __future__ import annotations

import typer

app = typer.Typer(help="Create, list, describe, alter and delete cluster links.", no_args_is_help=True)
