"""Arguments and output shared by the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, ContextManager, Iterator, Optional

from sisa.cli.base import Environment
from sisa.cli.progress import Bar, SliceLines, debug_logging, is_terminal
from sisa.cli.progress import (
    fmt_seconds as fmt_seconds,  # the commands' shared formatting
)
from sisa.errors import SisaError


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=".", metavar="DIR",
                        help="workspace folder holding shards/ and checkpoints/ (default: .)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of text")
    parser.add_argument("--no-wait", action="store_true",
                        help="fail at once instead of waiting when another sisa process is using "
                             "the workspace")


DATA_DEFAULTS = {"data": "digits", "test_data": None, "test_fraction": 0.2, "id_col": "id", "label_col": "label",
                 "image_size": None}
"""The data flags' defaults (argparse's are None, so that a flag given can be told from one not)."""
RECORDED_SOURCE = {"data": "spec", "test_data": "test_spec", "test_fraction": "test_fraction",
                   "id_col": "id_col", "label_col": "label_col", "image_size": "image_size"}
"""Data flag -> the field of the workspace's recorded source it comes from."""


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="SPEC",
                        help="digits (default), fashion-mnist[:DIR], mnist[:DIR], cifar10[:DIR], "
                             "csv:PATH, parquet:PATH or imagefolder:DIR (DIR/<class>/<image>)")
    parser.add_argument("--test-data", metavar="SPEC", help="separate evaluation data")
    parser.add_argument("--test-fraction", type=float, metavar="F",
                        help="share of rows held out for testing, chosen by a hash of the id, when "
                             "the data has no test split and --test-data is not given (default 0.2)")
    parser.add_argument("--id-col", help="id column of a table (default id)")
    parser.add_argument("--label-col", help="label column of a table (default label)")
    parser.add_argument("--image-size", type=image_size_arg, metavar="N|HxW",
                        help="imagefolder: data only: resize every image to N x N or H x W pixels "
                             "(bilinear; default: the size of the first image, in id order)")


def image_size_arg(text: str) -> tuple[int, int]:
    """``--image-size`` as argparse reads it: ``N`` or ``HxW``, as (H, W)."""
    from sisa.data.folders import parse_image_size

    try:
        return parse_image_size(text)
    except SisaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SETTINGS_FLAGS = ("shards", "slices", "model", "epochs", "batch_size", "lr", "optimizer", "weight_decay",
                  "scheduler", "epoch_schedule", "seed", "threads", "device", "aggregation", "vectorise")


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`sisa.settings.Settings` (unset ones fall back to the data's defaults)."""
    from sisa.settings import (
        DEVICES,
        EPOCH_SCHEDULES,
        OPTIMIZERS,
        SCHEDULERS,
        default_for,
    )

    group = parser.add_argument_group(
        "training settings", "defaults depend on the data where more than one is shown; deletions and "
        "repairs retrain with the settings a workspace was trained with; train --force --data starts from "
        "these flags and defaults, train --force without --data from the old workspace's settings and data")
    d = default_for
    group.add_argument("--shards", type=int, help=f"number of shards S (default {d('shards')})")
    group.add_argument("--slices", type=int, help=f"slices per shard R (default {d('slices')})")
    group.add_argument("--model", help=f"logreg, mlp, cnn or resnet18 (default {d('model')})")
    group.add_argument("--epochs", type=int, help=f"epochs of an unsliced shard, recalibrated over the "
                                                  f"slices, at least one per slice (default {d('epochs')})")
    group.add_argument("--batch-size", type=int, help=f"mini-batch size (default {d('batch_size')})")
    group.add_argument("--lr", type=float, help=f"learning rate (default {d('lr')})")
    group.add_argument("--optimizer", choices=OPTIMIZERS, help=f"optimizer (default {d('optimizer')})")
    group.add_argument("--weight-decay", type=float, help=f"L2 penalty (default {d('weight_decay')})")
    group.add_argument("--scheduler", choices=SCHEDULERS,
                       help=f"learning-rate schedule over a shard's epochs (default {d('scheduler')})")
    group.add_argument("--epoch-schedule", choices=EPOCH_SCHEDULES,
                       help=f"recalibrated: SISA's epochs per slice; uniform: every slice trains "
                            f"--epochs epochs (default {d('epoch_schedule')})")
    group.add_argument("--seed", type=int, help=f"seeds the partition, initialisation and shuffles "
                                                f"(default {d('seed')})")
    group.add_argument("--threads", type=int, help=f"torch threads per shard (default {d('threads')}); "
                                                   f"changing it changes the trained bits")
    group.add_argument("--device", choices=DEVICES, help=f"where shards train (default {d('device')})")
    group.add_argument("--aggregation", help=f"mean-proba, vote or size-weighted (default {d('aggregation')})")
    group.add_argument("--vectorise", type=int, metavar="G",
                       help="train G shards at once as one vectorised model (torch.func), for GPUs "
                            "that one small model leaves idle (default 1); changes the trained bits")


def dataset_and_settings(args: argparse.Namespace, recorded=None, *, stream: bool = False):
    """Load ``--data`` and build the settings: flags > the dataset's defaults > Settings' own.

    With ``recorded`` (the manifest of the workspace ``train --force`` replaces, when no
    ``--data`` was given) the data flags not given and the settings not given come from it
    instead: the workspace is retrained as it was, changed only by the flags given.
    ``stream``: leave a table's features in its file (:func:`sisa.data.sources.load`).
    """
    from sisa.data.sources import load
    from sisa.settings import Settings

    for flag, default in DATA_DEFAULTS.items():
        if getattr(args, flag, None) is None:
            value = recorded.data.source_value(RECORDED_SOURCE[flag]) if recorded is not None else None
            setattr(args, flag, default if value is None else value)
    dataset = load(args.data, id_col=args.id_col, label_col=args.label_col,
                   test_spec=args.test_data, test_fraction=args.test_fraction,
                   image_size=getattr(args, "image_size", None), stream=stream)
    chosen: dict[str, Any] = recorded.settings.to_dict() if recorded is not None else dict(dataset.defaults)
    chosen.update({k: getattr(args, k) for k in SETTINGS_FLAGS if getattr(args, k) is not None})
    return dataset, Settings(**chosen)


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--executor", choices=("auto", "ray", "local"),
                       default=None,
                       help="auto (default): Ray when more than one shard has work and more than one "
                            "CPU is available, in-process otherwise; or force ray or local "
                            "(default from SISA_EXECUTOR when set)")
    group.add_argument("--cpus-per-shard", type=float, metavar="N",
                       help="CPUs Ray reserves per shard task (default: --threads)")
    group.add_argument("--gpus-per-shard", type=float, metavar="N",
                       help="GPUs per shard task; fractions share one GPU between shards")
    group.add_argument("--address", metavar="ADDR",
                       help="join an existing Ray cluster (from 'ray start --head')")


def check_can_write(path, flag: str, problem: str) -> None:
    """Refuse a folder ``path`` (to be made if missing) that this user cannot write: found
    before anything is loaded or trained, not when the results come to be written."""
    import os
    from pathlib import Path

    target = Path(path).absolute()
    parent = next((p for p in (target, *target.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SisaError(f"{flag} {path} {problem}: {parent} is not a folder this user can write to")


def check_executor_args(args: argparse.Namespace) -> None:
    """Refuse executor flags no executor takes (also what ``train --print-config`` prints)."""
    for name in ("cpus_per_shard", "gpus_per_shard"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise SisaError(f"--{name.replace('_', '-')} must be >= 0, got {value}")


def executor_from(args: argparse.Namespace, env: Environment):
    """The executor of ``--executor`` (default from ``SISA_EXECUTOR``) and its options."""
    from sisa.training.executors import make_executor

    check_executor_args(args)
    return make_executor(args.executor or env.default_executor(), address=args.address,
                         cpus_per_shard=args.cpus_per_shard, gpus_per_shard=args.gpus_per_shard)


def locked(args: argparse.Namespace, env: Environment, *, exclusive: bool) -> ContextManager[None]:
    """The lock of ``--workdir`` with the command's own wait: none with ``--no-wait``, else at
    most ``SISA_LOCK_TIMEOUT`` seconds. Taken around each library call that locks, in the mode
    that call takes, so the call's own (re-entrant) lock does not wait again."""
    from sisa.workspace.lock import workspace_lock

    return workspace_lock(args.workdir, exclusive=exclusive, wait=not args.no_wait,
                          timeout=env.lock_seconds())


def split_ids(text: str) -> list[str]:
    """Ids as typed after --ids: comma-separated, blanks ignored."""
    return [part.strip() for part in text.split(",") if part.strip()]


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print ``result`` as JSON with --json, else the human ``text``."""
    if args.json:
        json.dump({"ok": True, **result}, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(text)


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


retrain_progress = SliceLines()
"""One stderr line per retrained slice: the progress of pending work a command finishes first."""


def finish_pending(args: argparse.Namespace, env: Environment, workspace, executor=None,
                   progress=retrain_progress) -> list[int]:
    """:func:`sisa.ops.commit.complete_pending` under the command's lock options; like it, takes
    the exclusive lock only when there is something to finish (a read-only mount stays readable)."""
    from sisa.ops.commit import complete_pending, needs_recovery

    if not needs_recovery(workspace):
        return []
    with locked(args, env, exclusive=True):
        return complete_pending(workspace, executor=executor, progress=progress)


def recover_first(args: argparse.Namespace, env: Environment) -> None:
    """Finish deletions a crash interrupted before a command reads the models."""
    from sisa.errors import ModelChanged
    from sisa.workspace.files import Workspace

    workspace = Workspace(args.workdir)
    try:
        shards = finish_pending(args, env, workspace)
    except ModelChanged as exc:  # read the workspace as it is; what needs the model says so itself
        info(f"warning: pending work was not finished: {exc}")
        shards = []
    workspace.manifest()
    if shards:
        info(f"finished pending deletions first: retrained shard(s) {', '.join(map(str, shards))}")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """``-q`` and ``-v`` of the commands that train (one or the other)."""
    group = parser.add_argument_group(
        "output", "while shards train, a terminal's stderr shows a bar (ETA, samples/s, the last epoch's loss), "
                  "updated every epoch in this process and as each shard finishes under Ray; any other stderr "
                  "gets one line per finished slice").add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="no progress: no bar and no line per slice (warnings and errors still print)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="debug log on stderr (logger 'sisa', with time and level): the executor chosen, "
                            "the shards planned, each slice's seconds, each checkpoint written")


@contextlib.contextmanager
def training_output(args: argparse.Namespace, *receivers: Any) -> Iterator[Any]:
    """The progress a training command shows, as one receiver to pass as ``progress``:
    a live bar when stderr is a terminal (per epoch in this process, per shard under Ray), else
    one line per slice as always; nothing with ``-q``. ``-v`` logs debug records for the
    block's duration. ``receivers`` (``--log-dir``'s log) hear everything too and are closed
    at the end, as the bar is.

    The bar and the log lines go to stderr only: ``--json`` keeps stdout one JSON object.
    """
    from sisa.training.jobs import Observers

    display: Optional[Any] = None
    if not getattr(args, "quiet", False):
        display = Bar(sys.stderr) if is_terminal(sys.stderr) else SliceLines()
    try:
        with debug_logging(getattr(args, "verbose", False), display):
            yield Observers(display, *receivers)
    finally:
        for receiver in (display, *receivers):
            if receiver is not None:
                receiver.close()


def add_model_change_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accept-model-change", action="store_true",
                        help="a model of your own (package.module:factory) whose source file changed since "
                             "the workspace recorded it: record the new source and retrain with it (the "
                             "retrained shards are then no longer bit-identical to training without the rows "
                             "under the old code)")


def accept_model_change_if_asked(args: argparse.Namespace, env: Environment, workspace) -> None:
    """With ``--accept-model-change``: record the model's current source before anything retrains."""
    if not getattr(args, "accept_model_change", False):
        return
    from sisa.ops.commit import accept_model_change

    with locked(args, env, exclusive=True):
        change = accept_model_change(workspace)
    if change:
        info(f"accepted the changed model source (was sha256 {str(change['previous_sha256'])[:12]}...)")
