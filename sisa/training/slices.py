"""Training of one shard, slice by slice, deterministically: the unit of work executors run.

A :class:`ShardJob` names a shard of a workspace and the slice to start from. The job reads the
shard's rows from ``shards/``, restores the checkpoint before its first slice (or initialises a
fresh model), trains each slice on the union of the slices so far and writes a checkpoint
after each. It writes checkpoint files only; the caller records them in the manifest.

Exactness rests on three rules: every random draw is seeded from (seed, shard, slice, epoch),
never from RNG history; a checkpoint holds everything training continues from (model,
optimizer, scheduler, counters); and every slice, first or resumed, starts by loading the
previous slice's saved state, so an uninterrupted run and a resumed one run the same code.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import numpy as np

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.ids import ids_digest
from sisa.settings import Settings
from sisa.training.jobs import (
    DataSpec,
    EpochReport,
    JobFiles,
    Observers,
    Progress,
    ShardJob,
    ShardResult,
    StepObserver,
    derive_seed,
)
from sisa.training.numerics import deterministic_torch, numerics_environment
from sisa.workspace.files import (
    Workspace,
    checkpoint_name,
    load_state,
    sha256_bytes,
    split_state,
    weights_name,
)
from sisa.workspace.manifest import CheckpointRecord

logger = logging.getLogger(__name__)


def make_training_state(settings: Settings, data: DataSpec, shard: int):
    """Fresh model, optimizer and scheduler for ``shard``; the model's initial weights
    depend on (seed, shard) alone."""
    import torch

    from sisa.models import build_model

    torch.manual_seed(derive_seed(settings.seed, shard, "init"))
    model = build_model(settings.model, data.shape, data.n_classes).to(settings.device)
    params = model.parameters()
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=0.9,
                                    weight_decay=settings.weight_decay)
    elif settings.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, sum(settings.slice_epochs())))
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return model, optimizer, scheduler


def to_cpu(obj: Any) -> Any:
    """Tensors moved to the CPU, inside dicts, lists and tuples."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def train_slice(model, optimizer, scheduler, X, y, *, settings: Settings, data: DataSpec,
                shard: int, slice_: int, epochs: int, observer: Optional[StepObserver] = None,
                on_epoch: Optional[Callable[[int, float], None]] = None) -> int:
    """Train ``epochs`` epochs on rows ``X``, ``y`` (canonical order); returns optimizer steps.

    ``on_epoch(epoch, loss)`` is called after each epoch with the epoch's mean loss over its
    rows. That loss is summed from the losses the steps computed anyway, detached, so watching
    changes no trained bit; without ``on_epoch`` not even that sum is taken.
    """
    import torch
    import torch.nn.functional as F

    n = len(y)
    steps = 0
    model.train()
    for epoch in range(epochs):
        seed = derive_seed(settings.seed, shard, slice_, epoch)
        torch.manual_seed(seed)  # any randomness inside the model (dropout) starts here too
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        total = torch.zeros((), dtype=torch.float64, device=X.device) if on_epoch is not None else None
        for start in range(0, n, settings.batch_size):
            batch = order[start:start + settings.batch_size].to(X.device)
            inputs = X[batch].float().mul_(data.scale)
            loss = F.cross_entropy(model(inputs), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if observer is not None:
                observer.before_step(batch)
            optimizer.step()
            if observer is not None:
                observer.after_step(batch)
            if total is not None:  # on the device, so no step waits for it
                total += loss.detach().double() * len(batch)
            steps += 1
            if steps == 1:
                crash_point("mid-slice")  # a crash test's kill point inside a slice's training
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, float(total) / n if n else float("nan"))
    return steps


def resume_training(settings: Settings, data: DataSpec, shard: int, state: Optional[dict[str, Any]]):
    """(model, optimizer, scheduler) and step counters for a slice: fresh, or exactly as the
    previous slice's saved ``state`` left them."""
    training = make_training_state(settings, data, shard)
    if state is None:
        return training, {"epochs": 0, "steps": 0, "sample_passes": 0}
    model, optimizer, scheduler = training
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return training, dict(state["counters"])


def save_slice(files: JobFiles, shard: int, slice_: int, ids: np.ndarray, training, counters: dict[str, int],
               *, epochs: int, steps: int) -> tuple[dict[str, Any], CheckpointRecord]:
    """Write the checkpoint of ``shard`` after ``slice_``, trained ``epochs`` epochs (``steps``
    steps) on the rows ``ids``; returns the state as read back (what the next slice resumes
    from: the bytes written, serialised once) and the checkpoint record (without seconds)."""
    model, optimizer, scheduler = training
    n = len(ids)
    counters = {"epochs": counters["epochs"] + epochs, "steps": counters["steps"] + steps,
                "sample_passes": counters["sample_passes"] + n * epochs}
    state = {
        "model": to_cpu(model.state_dict()),
        "optimizer": to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "counters": dict(counters, shard=shard, slice=slice_, samples=n),
    }
    ids_sha256 = ids_digest(ids)
    name = checkpoint_name(shard, slice_, ids_sha256)
    training_state, weights = split_state(state)
    files.write_checkpoint(weights_name(name), weights)
    files.write_checkpoint(name, training_state)
    record = CheckpointRecord(shard=shard, slice=slice_, file=name, sha256=sha256_bytes(training_state),
                              ids_sha256=ids_sha256, samples=n, epochs=epochs, bytes=len(training_state),
                              weights=weights_name(name), weights_sha256=sha256_bytes(weights),
                              weights_bytes=len(weights))
    logger.debug("shard %d slice %d: wrote checkpoint %s (%d bytes) and its weights (%d bytes)", shard, slice_,
                 name, len(training_state), len(weights))
    written = {name: training_state, weights_name(name): weights}
    return load_state(written.__getitem__, record, ""), record


def run_shard_job(job: ShardJob, progress: Optional[Progress] = None,
                  files: Optional[JobFiles] = None) -> ShardResult:
    """Train the job's slices and write their checkpoints; returns the checkpoint records and
    the epochs' reports. ``progress`` hears of every epoch and slice as it finishes. The job
    reads and writes the workspace at ``job.workdir``, or ``files`` when given."""
    import torch

    settings, data = job.settings, job.data
    files = files if files is not None else Workspace(job.workdir)
    observer = Observers(progress)
    started = time.perf_counter()
    rows = job.read_rows(files)
    logger.debug("shard %d: read %d rows in %.2f s", job.shard, len(rows.label), time.perf_counter() - started)
    records: list[CheckpointRecord] = []
    reports: list[EpochReport] = []
    # Optimizers import torch._dynamo on first use (about 2 s); importing it here keeps that
    # one-time cost out of the slice timings that deletion estimates are made from.
    import torch._dynamo  # noqa: F401

    with deterministic_torch(settings):
        environment = numerics_environment(settings)
        X = torch.from_numpy(np.require(rows.X, requirements=('C', 'W'))).to(settings.device)  # batches are copies
        y = torch.from_numpy(rows.label).to(settings.device)
        state = files.load_checkpoint(job.start) if job.start is not None else None
        if (state is None) != (job.from_slice == 0):
            raise ValueError("a job from slice 0 starts fresh; any later slice needs a start checkpoint")
        for slice_ in range(job.from_slice, len(job.schedule())):
            slice_started = time.perf_counter()
            (model, optimizer, scheduler), counters = resume_training(settings, data, job.shard, state)
            n = int(np.searchsorted(rows.slice, slice_, side="right"))  # rows are in slice order
            epochs = job.epochs_of(slice_, n, n - int(np.searchsorted(rows.slice, slice_, side="left")))
            on_epoch = _epoch_reporter(job.shard, slice_, n, reports, observer)
            try:
                crash_point("raise-in-slice")
                steps = train_slice(model, optimizer, scheduler, X[:n], y[:n], settings=settings,
                                    data=data, shard=job.shard, slice_=slice_, epochs=epochs, on_epoch=on_epoch)
            except RuntimeError as exc:  # out of memory, a kernel without a deterministic version...
                raise SisaError(f"training shard {job.shard} slice {slice_} failed: {exc}") from exc
            state, record = save_slice(files, job.shard, slice_, rows.ids[:n], (model, optimizer, scheduler),
                                       counters, epochs=epochs, steps=steps)
            record = record.timed(time.perf_counter() - slice_started)
            logger.debug("shard %d slice %d: trained %d rows x %d epochs in %.2f s", job.shard, slice_, n,
                         epochs, record.seconds)
            records.append(record)
            observer.slice_done(record)
            crash_point("worker-mid-shard")
    return ShardResult(job.shard, records, environment, time.perf_counter() - started, epochs=reports)


def _epoch_reporter(shard: int, slice_: int, rows: int, reports: list[EpochReport],
                    observer: Observers) -> Callable[[int, float], None]:
    """The ``on_epoch`` of :func:`train_slice` for one slice: it times each epoch, keeps its
    report for the job's result and tells ``observer``."""
    clock = [time.perf_counter()]

    def on_epoch(epoch: int, loss: float) -> None:
        now = time.perf_counter()
        report = EpochReport(shard, slice_, epoch, loss, rows, now - clock[0])
        clock[0] = now
        reports.append(report)
        observer.epoch_done(report)

    return on_epoch


def predict_probas(model_state: dict[str, Any], X: np.ndarray, *, settings: Settings, data: DataSpec,
                   batch_size: int = 256) -> np.ndarray:
    """Class probabilities (float64) of the model with ``model_state`` on rows ``X``; the one
    place inference happens, so evaluation gives the same numbers wherever it runs. (256 rows
    a batch: the Fashion-MNIST cnn scored 8 models x 10,000 rows in 31 s at 256, 41 s at 1024,
    on a 2-core x86_64 machine, 2026-11-29.)"""
    import torch

    from sisa.models import build_model

    model = build_model(settings.model, data.shape, data.n_classes).to(settings.device)
    model.load_state_dict(model_state)
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            batch = torch.from_numpy(np.array(X[start:start + batch_size], copy=True)).to(settings.device)
            logits = model(batch.float().mul_(data.scale))
            parts.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, data.n_classes))

