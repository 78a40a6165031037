"""Rendering results for people (rich tables on a terminal) or machines (`-f json`)."""

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(title: str, columns, rows) -> Table:
    result = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*("" if cell is None else escape(str(cell)) for cell in row))
    return result


def fail(message: str, code: int, as_json: bool) -> None:
    """Report an error as one line (or a JSON object) and exit with its code."""
    if as_json:
        emit_json({"error": message, "exit_code": code})
    else:
        err_console.print(f"[bold red]novapurge: error:[/] {escape(message)}", markup=True,
                          soft_wrap=True)
    sys.exit(code)


def step_reporter(enabled: bool):
    """A progress callback printing each step's transitions on stderr."""
    marks = {"SUCCESS": "[green]✓[/] done    ", "FAILURE": "[red]✗ failed  [/]",
             "REVERTED": "[yellow]↺ reverted[/]", "REVERT_FAILURE": "[red]✗ revert failed[/]"}

    def report(vm_uuid, step, state):
        if enabled and state in marks:
            err_console.print(f"  {marks[state]} {step:<24} {vm_uuid}", markup=True)
    return report
