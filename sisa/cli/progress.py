"""What a training command shows while shards train, and what it logs.

Three receivers of training's progress (:class:`~sisa.training.jobs.ProgressObserver`):

- :class:`Bar`, a live bar on a terminal's stderr: the work done in sample-passes (rows times
  epochs, known from the jobs' schedules before anything trains), ETA, samples/s, the last
  finished epoch's loss and the shard and slice training. It moves per epoch in this process;
  under Ray a shard's epochs arrive when its task finishes, so it moves per shard there.
- :class:`SliceLines`, one line per finished slice: what stderr gets when it is not a terminal
  (a log file, a pipe, a test), as it always has.
- :class:`LossLog`, ``sisa train --log-dir``: every epoch's loss in ``losses.csv`` and, when
  the ``tensorboard`` package is installed, in TensorBoard event files, one run per shard.

:func:`debug_logging` is ``-v``: the ``sisa`` logger's debug records on stderr.

Nothing here imports numpy, torch or tqdm at module level: every ``sisa`` command line
imports this module, and a client of ``sisa serve`` must start without them.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Sequence

from sisa.errors import SisaError


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (a stream a server forwards to its client has no
    ``isatty``: it is not one)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


class SliceLines:
    """One stderr line per finished slice: shard, slice, samples, epochs and seconds."""

    def __init__(self, stream: Optional[IO[str]] = None) -> None:
        self.stream = stream

    def planned(self, jobs: Sequence[Any], *, concurrent: bool) -> None:
        pass

    def epoch_done(self, report: Any) -> None:
        pass

    def slice_done(self, record: Any) -> None:
        self.write(f"shard {record.shard} slice {record.slice}: {record.samples} samples, "
                   f"{record.epochs} epoch{'s' if record.epochs != 1 else ''}, {fmt_seconds(record.seconds)}")

    __call__ = slice_done

    def write(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        pass


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
"""tqdm's layout less its count of sample-passes done (a number nobody reads), so that the
loss still fits on an 80-column terminal."""


class Bar:
    """A tqdm bar on ``stream`` (a terminal) over the sample-passes the planned jobs will do.

    A command may run its executor more than once (a deletion finishes pending work first):
    each plan adds its work to the same bar. ``postfix`` shows the mean loss of the last epoch
    finished; the description the shard and slice training now (in this process) or the
    shards still to finish (under Ray, which reports a shard when its task ends).
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.bar: Any = None
        self.queue: list[tuple[int, int]] = []
        """(shard, slice) still to finish, in the order they train in this process."""
        self.counted: dict[tuple[int, int], int] = {}
        """Sample-passes already on the bar per (shard, slice), from its epochs."""
        self.concurrent = False

    def planned(self, jobs: Sequence[Any], *, concurrent: bool) -> None:
        from tqdm import tqdm

        work = sum(job.sample_passes() for job in jobs)
        self.queue += [(job.shard, slice_) for job in jobs for slice_, _, _ in job.slice_work()]
        self.concurrent = concurrent
        if self.bar is None:
            # a terminal of unknown size (a pty nobody sized) would get a bar of no width
            width = {"dynamic_ncols": True} if _columns(self.stream) else {"ncols": 100, "nrows": 24}
            self.bar = tqdm(total=work or None, file=self.stream, unit=" samples", unit_scale=True, leave=True,
                            desc=self._describe(), bar_format=BAR_FORMAT if work else None, **width)
        else:
            self.bar.total = (self.bar.total or 0) + work
            self.bar.set_description_str(self._describe())

    def epoch_done(self, report: Any) -> None:
        if self.bar is None:
            return
        key = (report.shard, report.slice)
        self.counted[key] = self.counted.get(key, 0) + report.samples
        self.bar.set_postfix_str(f"loss={report.loss:.4f}", refresh=False)
        self.bar.update(report.samples)

    def slice_done(self, record: Any) -> None:
        if self.bar is None:
            return
        key = (record.shard, record.slice)
        self.queue = [entry for entry in self.queue if entry != key]
        rest = record.samples * record.epochs - self.counted.pop(key, 0)
        self.bar.set_description_str(self._describe(), refresh=False)
        self.bar.update(max(rest, 0))
        self.bar.refresh()

    __call__ = slice_done

    def _describe(self) -> str:
        if not self.queue:
            return "done"
        if self.concurrent:
            shards = sorted({shard for shard, _ in self.queue})
            return f"Ray: shard{'s' if len(shards) > 1 else ''} {_ranges(shards)} to finish"
        shard, slice_ = self.queue[0]
        return f"shard {shard} slice {slice_}"

    def write(self, line: str) -> None:
        """Print ``line`` above the bar, which is drawn again below it."""
        from tqdm import tqdm

        tqdm.write(line, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _columns(stream: IO[str]) -> int:
    """The width of the terminal ``stream`` writes to; 0 when it does not say."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _ranges(values: list[int]) -> str:
    """0, 1, 2, 5 -> '0-2, 5': shard lists stay short on a 200-shard run."""
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


LOSSES_CSV = "losses.csv"
LOSS_COLUMNS = ("shard", "slice", "epoch", "loss", "samples", "seconds")


class LossLog:
    """``--log-dir DIR``: every epoch's mean training loss, per shard.

    ``DIR/losses.csv`` (one row per shard, slice and epoch) is always written, so the curves
    exist without TensorBoard; with the ``tensorboard`` package, each shard also gets a run
    folder ``DIR/shard-NNN`` of event files with scalars ``loss`` and ``samples_per_s`` per
    epoch (step: the shard's epochs so far). DIR must be new or empty: curves of two trainings
    in one folder would mix, and sisa never overwrites a file it did not write. Files are
    opened when training starts, so input refused before then leaves no file behind.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and (not self.folder.is_dir() or any(self.folder.iterdir())):
            what = "is not a folder" if not self.folder.is_dir() else "is not empty"
            raise SisaError(f"--log-dir {self.folder} {what}; give a new or empty folder for each training, "
                            f"so that curves of different trainings do not mix")
        self.summary_writer = _summary_writer_class()
        self.csv_file: Optional[IO[str]] = None
        self.writer: Any = None
        self.runs: dict[int, Any] = {}
        self.steps: dict[int, int] = {}

    @property
    def tensorboard(self) -> bool:
        return self.summary_writer is not None

    def planned(self, jobs: Sequence[Any], *, concurrent: bool) -> None:
        if self.csv_file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.csv_file = open(self.folder / LOSSES_CSV, "x", newline="", encoding="utf-8")
            self.writer = csv.writer(self.csv_file)
            self.writer.writerow(LOSS_COLUMNS)

    def epoch_done(self, report: Any) -> None:
        if self.writer is None:
            return
        self.writer.writerow((report.shard, report.slice, report.epoch, repr(report.loss), report.samples,
                              f"{report.seconds:.4f}"))
        self.csv_file.flush()  # readable while training runs (tail -f, a notebook)
        if self.summary_writer is not None:
            step = self.steps.get(report.shard, 0)
            self.steps[report.shard] = step + 1
            run = self.runs.get(report.shard)
            if run is None:
                run = self.runs[report.shard] = self.summary_writer(
                    log_dir=str(self.folder / f"shard-{report.shard:03d}"), flush_secs=10)
            run.add_scalar("loss", report.loss, step)
            if report.seconds > 0:
                run.add_scalar("samples_per_s", report.samples / report.seconds, step)

    def slice_done(self, record: Any) -> None:
        pass

    __call__ = slice_done

    def close(self) -> None:
        for run in self.runs.values():
            run.close()
        if self.csv_file is not None:
            self.csv_file.close()


def _summary_writer_class():
    """torch's ``SummaryWriter``, or None when the ``tensorboard`` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class _StderrHandler(logging.Handler):
    """Writes log records through the command's display, so a line never cuts a bar in two."""

    def __init__(self, display: Any) -> None:
        super().__init__(logging.DEBUG)
        self.display = display
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.display.write(self.format(record))
        except Exception:  # a log line must never stop training
            self.handleError(record)


@contextlib.contextmanager
def debug_logging(enabled: bool, display: Any) -> Iterator[None]:
    """``-v``: the ``sisa`` logger's records from DEBUG up, on stderr through ``display``, for
    the command's duration (a ``sisa serve`` runs many commands: nothing is left behind)."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("sisa")
    handler, level = _StderrHandler(display), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
