"""Progress of a batch on stderr: a live bar and each running VM's step on a terminal, a line per
finished VM elsewhere. Nothing at all with `-f json` (commands pass no progress then).

A progress object hears, from the batch's worker threads: begin(total), vm_started(vm),
step(vm, step, state), vm_done(outcome), end().
"""

import threading
import time

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from novapurge import output

SHOWN_RUNNING = 10  # running VMs listed under the bar
_MARKS = {"succeeded": "[green]✓[/]", "reverted": "[yellow]↺[/]", "suspended": "[yellow]⏸[/]",
          "refused": "[magenta]⊘[/]", "revert-failed": "[red]✗[/]", "error": "[red]✗[/]",
          "not-started": "[dim]·[/]", "nothing-to-do": "[dim]=[/]"}
_ACTIVE = ("RUNNING", "REVERTING")


def for_batch(verb: str, count: int, enabled: bool):
    """The progress display for `count` VMs: None (one VM keeps the per-step lines, and json
    shows nothing), a live display on a terminal, or a line per finished VM."""
    if not enabled or count < 2:
        return None
    if output.err_console.is_terminal:
        return LiveProgress(verb)
    return LineProgress(verb)


class _Counts:
    def __init__(self, verb):
        self.verb = verb
        self.total = self.done = 0
        self.results = {}
        self.lock = threading.Lock()

    def _count(self, outcome) -> int:
        with self.lock:
            self.done += 1
            self.results[outcome.result] = self.results.get(outcome.result, 0) + 1
            return self.done

    def tally(self) -> str:
        return "  ".join(f"{_MARKS.get(r, '')} {n} {r}" for r, n in sorted(self.results.items()))


class LineProgress(_Counts):
    """Not a terminal (a log, a pipe): one line per finished VM."""

    def begin(self, total):
        self.total = total
        output.err_console.print(f"{self.verb} {total} VMs", highlight=False)

    def vm_started(self, vm_uuid):
        pass

    def step(self, vm_uuid, step, state):
        pass

    def vm_done(self, outcome):
        done = self._count(outcome)
        detail = f" at {outcome.failed_step}" if outcome.failed_step else ""
        reason = f": {outcome.message}" if outcome.message and outcome.result != "succeeded" \
            else ""
        output.err_console.print(f"[{done}/{self.total}] {outcome.vm_uuid} {outcome.result}"
                                 f"{detail}{reason}", markup=False, highlight=False,
                                 soft_wrap=True)

    def end(self):
        pass


class LiveProgress(_Counts):
    """A terminal: the overall bar with the results so far, and the running VMs' current step."""

    def __init__(self, verb):
        super().__init__(verb)
        self._running = {}   # vm -> (step, since)
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                             TimeRemainingColumn(), TextColumn("{task.fields[tally]}"),
                             console=output.err_console)
        self._task = None
        self._live = None

    def __rich__(self):
        with self.lock:
            running = sorted(self._running.items(), key=lambda item: item[1][1])
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for vm_uuid, (step, since) in running[:SHOWN_RUNNING]:
            table.add_row(f"  {vm_uuid}", escape(step or "starting"), f"{now - since:5.1f}s")
        if len(running) > SHOWN_RUNNING:
            table.add_row(f"  … and {len(running) - SHOWN_RUNNING} more running", "", "")
        return Group(self._bar, table)

    def begin(self, total):
        self.total = total
        self._task = self._bar.add_task(f"{self.verb} {total} VMs", total=total, tally="")
        self._live = Live(self, console=output.err_console, refresh_per_second=4,
                          transient=False, redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def vm_started(self, vm_uuid):
        with self.lock:
            self._running[vm_uuid] = (None, time.monotonic())

    def step(self, vm_uuid, step, state):
        if state in _ACTIVE:
            with self.lock:
                if vm_uuid in self._running:
                    since = self._running[vm_uuid][1]
                    label = step if state == "RUNNING" else f"{step} (reverting)"
                    self._running[vm_uuid] = (label, since)

    def vm_done(self, outcome):
        self._count(outcome)
        with self.lock:
            self._running.pop(outcome.vm_uuid, None)
        self._bar.update(self._task, advance=1, tally=self.tally())

    def end(self):
        if self._live is not None:
            self._live.stop()
