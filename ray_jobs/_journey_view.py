"""``journey run``'s console: one line per stage, and each stage's own output in a log file.

While a stage runs, everything written to the process's stdout and stderr (the driver's prints,
Ray's forwarded worker lines, tqdm bars, library warnings) goes to ``runs/<run>/logs/<stage>.log``:
the redirection is at the file-descriptor level (``os.dup2``) because Ray forwards worker output
from a thread and C libraries write to fd 1/2 directly, past ``sys.stdout``. The view itself writes
to a duplicate of the terminal taken before any redirection.

On a terminal the view is a rich ``Live`` table that redraws twice a second: done stages with their
wall time and headline numbers, the running one with its step, total and ETA read from the file the
training loops write (``shared.progress``), the rest with what will happen to them. Elsewhere (CI
logs, pipes) it prints one line when a stage starts and one when it ends. ``verbose=true`` keeps the
stages' output on the console and the plain lines.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from shared.progress import read_progress

TAIL_LINES = 20  # log lines shown when a stage fails


@dataclass
class StageLine:
    """What the view knows about one stage."""

    name: str
    action: str  # "run" | "skip"
    reason: str
    state: str = "pending"  # pending | running | done | skipped | failed | interrupted
    started: float = 0.0
    seconds: float = 0.0
    headline: str = ""
    progress_file: Path | None = None
    log_file: Path | None = None
    first_seen: tuple[int, float] | None = field(default=None, repr=False)  # (step, time) for the ETA


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@contextlib.contextmanager
def captured_output(log_file: Path) -> Iterator[None]:
    """Send fd 1 and fd 2 (and so ``sys.stdout``/``sys.stderr``) to ``log_file`` (appended) for the block."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def log_tail(log_file: Path | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a stage's log (empty when it has none)."""
    if not log_file or not log_file.exists():
        return ""
    with open(log_file, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64_000))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class JourneyView:
    """The journey's console (see the module docstring). Use as a context manager around the run."""

    def __init__(self, run: str, lines: list[StageLine], verbose: bool = False, out: TextIO | None = None):
        self.run = run
        self.lines = {line.name: line for line in lines}
        self.verbose = verbose
        # A duplicate of the terminal, taken now: later writes must not follow fd 1 into a log file.
        self.out = out or os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8",
                                    errors="replace")
        self.live_mode = not verbose and self.out.isatty()
        self._live = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "JourneyView":
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live
            # redirect_*=False: the stages' output belongs in their log files (captured_output), not above the table.
            self._live = Live(get_renderable=self._render, console=Console(file=self.out), refresh_per_second=2,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        else:
            for line in self.lines.values():
                self._print(f"  {line.name:<10} {'skip' if line.action == 'skip' else 'run '}  {line.reason}")
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def print(self, text: str) -> None:
        """A message below the table (or a plain line)."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # ---- stage events --------------------------------------------------------------------------
    def skipped(self, name: str) -> None:
        self.lines[name].state = "skipped"

    @contextlib.contextmanager
    def running(self, name: str, progress_file: Path, log_file: Path) -> Iterator[StageLine]:
        """The block runs stage ``name``: its output goes to ``log_file`` unless verbose. A KeyboardInterrupt
        out of the block marks the stage interrupted, any other exception failed."""
        line = self.lines[name]
        line.state, line.started = "running", time.time()
        line.progress_file, line.log_file = progress_file, log_file
        if not self.live_mode:
            self._print(f"== {self.run}: {name} ({line.reason}); "
                        + ("output follows" if self.verbose else f"log: {log_file}"))
        try:
            if self.verbose:
                yield line
            else:
                with captured_output(log_file):
                    yield line
        except BaseException as exc:
            self._end(line, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise
        self._end(line, "done")

    def _end(self, line: StageLine, state: str) -> None:
        line.state, line.seconds = state, time.time() - line.started
        if self._live is not None:
            self._live.refresh()  # messages printed next sit above the table as it is now
        if not self.live_mode:
            extra = f": {line.headline}" if line.headline and state == "done" else ""
            self._print(f"== {self.run}: {line.name} {state} in {_duration(line.seconds)}{extra}")

    # ---- rendering -----------------------------------------------------------------------------
    def _step_text(self, line: StageLine) -> str:
        elapsed = time.time() - line.started
        record = read_progress(line.progress_file) if line.progress_file else None
        if not record or record.get("time", 0) < line.started - 1:
            return f"running {_duration(elapsed)}"
        step, total = record["step"], record.get("total")
        if line.first_seen is None:
            line.first_seen = (step, time.time())
        text = f"step {step}/{total}" if total else f"step {step}"
        first_step, first_time = line.first_seen
        if total and step > first_step:
            rate = (step - first_step) / max(time.time() - first_time, 1e-6)
            text += f" · ETA {_duration((total - step) / rate)}"
        text += f" · {_duration(elapsed)}"
        loss = record.get("metrics", {}).get("loss")
        if isinstance(loss, (int, float)):
            text += f" · loss {loss:.3f}"
        return text

    def _render(self):
        from rich.table import Table
        from rich.text import Text
        marks = {"pending": ("·", "dim"), "running": ("▸", "bold cyan"), "done": ("✓", "green"),
                 "skipped": ("✓", "dim green"), "failed": ("✗", "bold red"), "interrupted": ("■", "yellow")}
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(overflow="ellipsis", no_wrap=True)
        for line in self.lines.values():
            mark, style = marks[line.state]
            if line.state == "running":
                what = self._step_text(line)
            elif line.state == "done":
                what = f"{_duration(line.seconds)}  {line.headline}"
            elif line.state == "skipped":
                what = f"up to date  {line.headline}"
            elif line.state in ("failed", "interrupted"):
                what = f"{line.state} after {_duration(line.seconds)}; log: {line.log_file}"
            else:
                what = line.reason if line.action == "run" else "up to date"
            table.add_row(Text(mark, style=style), Text(line.name, style=style), Text(what))
        return table


__all__ = ["JourneyView", "StageLine", "captured_output", "log_tail"]
