"""Training a workspace: partition the rows, train every shard slice by slice, record it all."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from sisa import __version__
from sisa.data.partition import Assignment, assign, check_sizes
from sisa.data.sources import Dataset, Table
from sisa.data.streaming import take_runs
from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.ids import id_mask, id_order, ids_digest, key_text
from sisa.models import build_model, check_output, model_source
from sisa.ops.commit import ensure_base
from sisa.ops.ensemble import Ensemble
from sisa.settings import Settings
from sisa.training.executors import Executor, accept_result, make_executor
from sisa.training.jobs import Progress, ShardJob
from sisa.workspace.files import Workspace
from sisa.workspace.ledger import Ledger, carry, read_ledger
from sisa.workspace.lock import LOCK_NAME, workspace_lock
from sisa.workspace.manifest import (
    CheckpointsManifest,
    DataFile,
    DataInfo,
    ShardData,
    WorkspaceManifest,
    by_position,
)
from sisa.workspace.orphans import remove_orphans
from sisa.workspace.rows import TEST_ROW_GROUP_ROWS, ShardRows, write_test_file
from sisa.workspace.staging import (
    STAGING_PREFIX,
    finish_swap,
    make_scratch,
    remove_scratch,
    swap_in,
    swap_path,
)

logger = logging.getLogger(__name__)


def train_workspace(workdir: str | Path, dataset: Dataset, settings: Settings, *,
                    executor: Optional[Executor] = None, force: bool = False,
                    progress: Optional[Progress] = None,
                    source: Optional[dict[str, Any]] = None,
                    discard_deletions: bool = False,
                    announce: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Partition ``dataset`` into ``workdir``'s shards, train every shard and record it all.

    Everything that can be wrong with the input is checked before the first file is kept, so
    bad input leaves the folder as it was (features a source left in its file are checked as
    they are written to the staging folder, which is then removed, with the workdir when this
    call made it). The new workspace is built beside the old one
    and swapped in only when complete (:mod:`sisa.workspace.staging`): an interrupted ``force`` keeps
    the old workspace. The deletion ledger carries over: ids deleted earlier are left out of
    the new training (unless ``discard_deletions``, which trains on them again).
    ``announce`` is given the plan (:func:`slice_plan`) once the rows are partitioned, before
    anything is trained. Returns a summary (seconds, test accuracy, rows excluded, the plan...).
    """
    started = time.perf_counter()
    workspace = Workspace(workdir)
    _check_input(workspace, dataset, settings, force=force)
    made = not workspace.root.exists() and not workspace.root.is_symlink()
    try:
        return _train(workspace, dataset, settings, executor=executor, force=force, progress=progress,
                      source=source, discard_deletions=discard_deletions, started=started, announce=announce)
    except BaseException:
        if made:
            _remove_if_only_lock(workspace)
        raise


def _remove_if_only_lock(workspace: Workspace) -> None:
    """Remove the workdir a failed first training made, when nothing but its lock file is in it."""
    try:
        if [p.name for p in workspace.root.iterdir()] in ([], [LOCK_NAME]):
            (workspace.root / LOCK_NAME).unlink(missing_ok=True)
            workspace.root.rmdir()
    except OSError:
        pass


def _train(workspace: Workspace, dataset: Dataset, settings: Settings, *, executor, force: bool, progress,
           source, discard_deletions: bool, started: float, announce) -> dict[str, Any]:
    with workspace_lock(workspace.root, exclusive=True):
        finish_swap(workspace)
        _refuse_existing(workspace, force)  # again, now that no other process can be writing
        remove_scratch(workspace)
        deleted = {} if discard_deletions else read_ledger(workspace.ledger_path)[0]
        dataset, excluded = _without_deleted(dataset, deleted)
        train, test = dataset.train, dataset.test
        if len(train) == 0:
            raise SisaError(f"every training row of {dataset.spec} was deleted earlier; nothing to train on")
        labels = dataset.label_index(train.y, "training data")
        test_labels = dataset.label_index(test.y, "test data") if test is not None and len(test) else None
        assignment = assign(train.ids, seed=settings.seed, shards=settings.shards, slices=settings.slices)
        counts = check_sizes(assignment, shards=settings.shards, slices=settings.slices)
        plan = slice_plan(counts, settings)
        if announce is not None:
            announce(plan)
        given = _Input(dataset, settings, assignment, counts, labels, test_labels, dict(source or {}))
        records, summary_extra = _write_and_train(
            workspace, given, executor=executor, progress=progress,
            carry_ledger=not discard_deletions and workspace.ledger_path.exists())
    summary = {"workdir": str(workspace.root), "shards": settings.shards, "slices": settings.slices,
               "model": settings.model, "n_train": int(len(train)),
               "excluded_deleted": excluded, "deletions_discarded": bool(discard_deletions),
               # a vectorised group's slice seconds count once, not once per shard trained in it
               "train_seconds": round(sum(r.seconds / (r.shared_by or 1) for r in records), 3),
               "plan": plan, **summary_extra}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def slice_plan(counts: np.ndarray, settings: Settings) -> dict[str, Any]:
    """What each slice will train: its own rows (fewest and most over the shards), the rows it
    trains on (slices 0..r), its epochs; and ``small``, a warning when a shard's slice holds
    fewer rows than one batch (a checkpoint that learns from a few rows, and a deletion that
    saves little), else None.

    >>> slice_plan(np.array([[10, 11], [9, 12]]), Settings(shards=2, slices=2, batch_size=32))["small"][:40]
    'slices of 9-12 rows are smaller than one'
    """
    own = counts[counts.sum(axis=1) > 0]  # shards without rows have no model
    plan = {"slice_rows_min": own.min(axis=0).tolist(), "slice_rows_max": own.max(axis=0).tolist(),
            "trained_rows_mean": np.cumsum(own, axis=1).mean(axis=0).round(1).tolist(),
            "epochs": list(settings.slice_epochs()), "small": None}
    if own.min() < settings.batch_size:
        plan["small"] = (f"slices of {int(own.min())}-{int(own.max())} rows are smaller than one batch "
                         f"({settings.batch_size} rows): each checkpoint adds little, and a deletion saves "
                         f"little over retraining the shard; use fewer slices (--slices) or shards (--shards)")
    return plan


def _check_input(workspace: Workspace, dataset: Dataset, settings: Settings, *, force: bool) -> None:
    """Everything that can be wrong with the input, found before the first file is written."""
    if workspace.root.exists() and not workspace.root.is_dir():
        raise SisaError(f"workdir {workspace.root} is not a folder")
    _refuse_existing(workspace, force)
    if dataset.train.y is None:
        raise SisaError(f"{dataset.spec} has no labels")
    check_test_ids(dataset)
    model = build_model(settings.model, dataset.shape, len(dataset.classes))  # shape/model mismatch
    check_output(model, settings.model, dataset.shape, len(dataset.classes))
    if settings.vectorise > 1:
        from sisa.training.vectorised import check_vectorisable

        check_vectorisable(model)
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SisaError("--device cuda was asked for, but torch sees no CUDA device")


def check_test_ids(dataset: Dataset) -> None:
    """Refuse test rows that share ids with training rows: a person's row would be scored as
    unseen while it is trained on, and deleting the id could not say which row it meant."""
    test = dataset.test
    if test is None or not len(test):
        return
    train_kind = dataset.id_kind
    test_kind = "int" if test.ids.dtype.kind in "iu" else "str"
    if test_kind != train_kind:
        raise SisaError(f"the test data's ids are {'integers' if test_kind == 'int' else 'text'} but the "
                        f"training data's are {'integers' if train_kind == 'int' else 'text'}; give both "
                        f"the same kind of id so that a deletion can find a person in either")
    shared = np.intersect1d(_comparable(dataset.train.ids), _comparable(test.ids))
    if len(shared):
        shown = ", ".join(map(str, shared[:5].tolist()))
        raise SisaError(f"{len(shared)} of the {len(test)} test rows share ids with training rows "
                        f"(e.g. {shown}); accuracy on them would be inflated and a deletion ambiguous. "
                        f"Give the test data ids of its own, or leave out --test-data to hold out a "
                        f"share of the rows")


def _comparable(ids: np.ndarray) -> np.ndarray:
    return ids.astype(str) if ids.dtype == object else ids


def _without_deleted(dataset: Dataset, deleted: dict) -> tuple[Dataset, int]:
    """``dataset`` less every id of the deletion ledger; returns it and how many rows went."""
    if not deleted:
        return dataset, 0
    # by the id's text as well: a source whose ids now load as text ("7") must not bring back
    # the person deleted as the integer 7
    texts = {key[2:] for key in deleted}

    # integer ids: the keys of integers, and texts that are an integer as written ("7", not "007")
    as_int = {"i:" + t for t in texts if re.fullmatch(r"-?[1-9][0-9]*|0", t)}

    def keep(table: Table) -> np.ndarray:
        if table.ids.dtype.kind in "iu":
            return ~id_mask(table.ids, as_int)
        return np.fromiter((key_text(v) not in deleted and str(v) not in texts for v in table.ids.tolist()),
                           dtype=bool, count=len(table))

    train_keep = keep(dataset.train)
    test_keep = keep(dataset.test) if dataset.test is not None else None
    excluded = int((~train_keep).sum()) + (int((~test_keep).sum()) if test_keep is not None else 0)
    if not excluded:
        return dataset, 0
    return dataclasses.replace(
        dataset, train=dataset.train.take(train_keep),
        test=dataset.test.take(test_keep) if test_keep is not None else None), excluded


def _refuse_existing(workspace: Workspace, force: bool) -> None:
    if not workspace.manifest_path.exists() and not workspace.manifest_path.is_symlink():
        return
    if not force:
        raise SisaError(f"{workspace.root} already holds a sisa workspace ({workspace.manifest_path}); "
                        f"pass --force to replace it (its deletion ledger carries over)")
    try:
        import json

        is_sisa = str(json.loads(workspace.manifest_path.read_text()).get("format")).startswith("sisa-workspace/")
    except (OSError, ValueError, AttributeError):
        is_sisa = False
    if not is_sisa or workspace.manifest_path.is_symlink():
        raise SisaError(f"{workspace.manifest_path} is not a sisa manifest; refusing to replace a file "
                        f"sisa did not write (move it away first)")


@dataclass(frozen=True)
class _Input:
    """What is trained: the rows (deleted ids left out), their partition and class indices."""

    dataset: Dataset
    settings: Settings
    assignment: Assignment
    counts: np.ndarray
    labels: np.ndarray
    test_labels: Optional[np.ndarray]
    source: dict[str, Any]


def _write_and_train(workspace: Workspace, given: _Input, *, executor, progress, carry_ledger: bool):
    """Build the workspace in a staging folder, then swap it in (the commit point)."""
    staging = make_scratch(workspace, STAGING_PREFIX)
    try:
        stage = Workspace(staging)
        written = time.perf_counter()
        manifest = _write_rows(stage, given)
        logger.debug("wrote %d training rows into %d shards x %d slices (and %d test rows) in %s, %.2f s",
                     manifest.data.n_train, manifest.settings.shards, manifest.settings.slices,
                     manifest.data.n_test, staging, time.perf_counter() - written)
        checkpoints = _train_shards(stage, manifest, executor=executor, progress=progress)
        if carry_ledger:  # else the ledger is made by the first command that records something
            carried = carry(workspace.ledger_path, stage.ledger_path)
            with Ledger(stage.ledger_path) as ledger:
                _record_base(workspace, ledger)
                version = ledger.begin_version("train", {"rows": manifest.data.n_train,
                                                         "slices": manifest.settings.slices,
                                                         "spec": manifest.data.source_value("spec")}, state="done")
            manifest = manifest.replace(data=dataclasses.replace(manifest.data, carried_deletions=carried),
                                        version=version, base_version=version)
        stage.save(manifest)
        crash_point("before-swap")
        swap_in(workspace, staging)
        logger.debug("swapped the new workspace in at %s", workspace.root)
    except BaseException:
        if not swap_path(workspace).exists():  # not yet committed: the old workspace stays
            shutil.rmtree(staging, ignore_errors=True)
        raise
    remove_orphans(workspace)  # files of the old workspace its own manifests no longer named
    if manifest.test is None:
        return checkpoints.checkpoints, {}
    return checkpoints.checkpoints, Ensemble(workspace).evaluate()


def _record_base(workspace: Workspace, carried: Ledger) -> None:
    """Give the ledger carried over the replaced workspace's training as a version, when that
    workspace is from before versions were recorded, so that the history keeps it."""
    try:
        manifest = workspace.manifest()
    except SisaError:  # a damaged workspace being replaced: its history starts at its requests
        return
    if not carried.versions():
        ensure_base(carried, manifest)
        carried.set_version_state([manifest.version], "replaced")


def _write_rows(stage: Workspace, given: _Input) -> WorkspaceManifest:
    """Write the shard files and the test file into ``stage``; returns the (unwritten) manifest.

    Rows are gathered a slice (and a test row group) at a time: features a source left in its
    file are read once and spilled to a scratch folder in ``stage`` (:mod:`sisa.data.streaming`),
    so memory holds one slice's rows, never the dataset."""
    dataset, settings, assignment = given.dataset, given.settings, given.assignment
    train, test = dataset.train, dataset.test
    dtype = str(train.X.dtype)
    # (shard, slice, key) order: slice r of shard s is run s * slices + r
    order = np.lexsort((assignment.key, assignment.slice, assignment.shard))
    bounds = np.concatenate([[0], np.cumsum(given.counts.reshape(-1))])
    requests = [(train.X, order, bounds)]
    if given.test_labels is not None:  # the test rows in id order, a row group at a time
        test_order = id_order(test.ids)
        test_bounds = np.unique(np.r_[0:len(test):TEST_ROW_GROUP_ROWS, len(test)])
        requests.append((test.X, test_order, test_bounds))
    parts: dict[int, list[DataFile]] = {s: [] for s in range(settings.shards)}
    test_file = None
    with tempfile.TemporaryDirectory(prefix="scratch-", dir=stage.root) as scratch:
        runs = take_runs(requests, scratch)
        for run, X in enumerate(runs[0]):
            (s, r), rows = divmod(run, settings.slices), order[bounds[run]:bounds[run + 1]]
            parts[s].extend(stage.write_shard_slices(s, range(r, r + 1), ShardRows(
                train.ids[rows], assignment.slice[rows], given.labels[rows], X)))
        if given.test_labels is not None:
            chunks = ((test.ids[rows], given.test_labels[rows], X.astype(dtype))
                      for rows, X in zip(np.split(test_order, test_bounds[1:-1]), runs[1]))
            name, sha = stage.write_versioned_stream("test", lambda sink: write_test_file(sink, chunks))
            test_file = DataFile(file=name, sha256=sha, rows=int(len(test)), ids_sha256=ids_digest(test.ids))
    shards = [ShardData(shard=s, parts=tuple(parts[s])) for s in range(settings.shards)]
    n_test = test_file.rows if test_file else 0
    # with the ledger, the initial counts show whether rows went missing without a deletion
    data = DataInfo(shape=tuple(dataset.shape), dtype=dtype, scale=float(dataset.scale),
                    classes=tuple(dataset.classes), id_kind=dataset.id_kind,
                    n_train=int(len(train)), n_test=n_test, n_train_initial=int(len(train)), n_test_initial=n_test,
                    feature_names=None if dataset.feature_names is None else tuple(dataset.feature_names),
                    source={"spec": dataset.spec, **given.source})
    return WorkspaceManifest(settings=settings, data=data, shards=tuple(shards), test=test_file,
                             created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             sisa_version=__version__, model_source=model_source(settings.model))


def _train_shards(stage: Workspace, manifest: WorkspaceManifest, *, executor, progress):
    """Train every shard of ``stage`` and write its checkpoints manifest; returns it."""
    jobs = [ShardJob.for_shard(str(stage.root.resolve()), manifest, e) for e in manifest.shards if e.rows]
    records, environments = [], []
    for result in (executor or make_executor("local")).run(jobs, progress):
        accept_result(stage, result)
        records.extend(result.checkpoints)
        environments.append(result.environment)
    if any(env != environments[0] for env in environments):
        raise SisaError(f"shards were trained under different numerics environments: {environments}")
    checkpoints = CheckpointsManifest(checkpoints=tuple(by_position(records)), environment=environments[0])
    stage.save(checkpoints)
    return checkpoints




