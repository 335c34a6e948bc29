"""Several shards trained at once as one vectorised model (torch.func), for accelerators that
one small model leaves idle.

With ``Settings.vectorise = G`` > 1, shards train in fixed groups of G: group g holds shards
gG .. gG+G-1, and shard s always sits at position s mod G. Every step evaluates each member's
loss gradient with ``torch.func.vmap`` over the stacked parameters, each member on a batch of
its own shard's rows, then steps torch's own optimizer (Adam, AdamW or SGD, as one model at a
time uses) on each member's slice of the stacked parameters, with that member's optimizer
state and learning rate. A position with no batch at a step (its shard has fewer rows, has not
reached its first slice, or the group has no shard there) is computed but gets no gradient, so
the optimizer leaves it and its state exactly as they were.

The optimizer steps each member's slice (a view), not each stacked tensor as one parameter:
torch's optimizers keep one step count and one learning rate per parameter, and members'
differ (Adam's bias correction counts a member's own steps, which differ between shards of
different sizes and between a shard resumed at a later slice and one retrained from slice 0;
a member's scheduler sets its own rate). Where torch uses multi-tensor kernels (CUDA), the
members that share a learning rate share them.

Isolation and exactness. Nothing in a step mixes members (vmap maps over the member axis), so
a member's gradients come from its own shard's rows only. Which kernels run can depend on the
group's width and on the member's position, so both are fixed by the settings: retraining a
shard after a deletion runs a group of the same width with the shard in the same position
(the other positions idle), and gives the bits that training without the deleted rows gives.
``tests/training/test_vectorised.py`` checks that, and that a member's checkpoints do not change when
its companions' rows do.

Checkpoints are the same files as one model at a time writes (model, optimizer and scheduler
state dicts of each shard), so prediction, audit and status do not know the difference; the
bits differ from unvectorised training, which is why ``vectorise`` is a setting.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.training.jobs import (
    DataSpec,
    JobFiles,
    Progress,
    ShardJob,
    ShardResult,
    derive_seed,
)
from sisa.training.numerics import deterministic_torch, numerics_environment
from sisa.training.slices import (
    resume_training,
    save_slice,
)
from sisa.workspace.files import Workspace


def check_vectorisable(model) -> None:
    """Refuse a model that keeps buffers (batch norm's running statistics): vmap cannot update
    them per member."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise SisaError(f"vectorise > 1 needs a model without buffers; this one keeps "
                        f"{', '.join(buffers[:3])}{'...' if len(buffers) > 3 else ''} (batch norm); "
                        f"train it with vectorise 1")






@dataclass
class _Member:
    job: ShardJob
    position: int
    rows: Any
    offset: int                        # first row of this shard in the group's stacked rows
    state: Optional[dict[str, Any]] = None
    records: list = field(default_factory=list)
    training: Any = None               # (model, optimizer, scheduler) of the current slice
    counters: dict[str, int] = field(default_factory=dict)  # of the last checkpoint


@dataclass
class _Stack:
    """A slice's stacked training state: ``params`` maps a parameter name to the (width, ...)
    tensor of every position's values; ``views[position][name]`` is a member's slice of it
    (what the optimizer steps, in place); ``state`` maps each view to its optimizer state, in
    torch's own format (the dicts of the member's optimizer, shared)."""

    params: dict[str, Any]
    views: dict[int, dict[str, Any]]
    state: dict[Any, dict[str, Any]]


def run_group(jobs: Sequence[ShardJob], progress: Optional[Progress] = None,
              files: Optional[JobFiles] = None) -> list[ShardResult]:
    """Train the shards of one group (all in the same group) together; one result per job.
    The jobs read and write their workspace, or ``files`` when given."""
    import torch
    import torch._dynamo  # noqa: F401  - optimizers import it on first use; keep it out of slice timings

    settings = jobs[0].settings
    if len({job.shard // settings.vectorise for job in jobs}) != 1:
        raise ValueError("run_group takes the jobs of one group")
    workspace = files if files is not None else Workspace(jobs[0].workdir)
    started = time.perf_counter()
    members = _read_members(workspace, jobs)
    with deterministic_torch(settings):
        environment = numerics_environment(settings)
        # every member's rows in one tensor, so one gather fetches a step's batches
        X = torch.from_numpy(np.concatenate([np.asarray(m.rows.X) for m in members])).to(settings.device)
        y = torch.from_numpy(np.concatenate([m.rows.label for m in members])).to(settings.device)
        for m in members:
            m.state = workspace.load_checkpoint(m.job.start) if m.job.start is not None else None
            if (m.state is None) != (m.job.from_slice == 0):
                raise ValueError("a job from slice 0 starts fresh; any later slice needs a start checkpoint")
        for slice_ in range(min(m.job.from_slice for m in members), len(jobs[0].schedule())):
            _run_slice(workspace, members, slice_, X, y, progress)
            crash_point("worker-mid-shard")
        return [_result(m, environment, started) for m in members]


def _read_members(workspace: JobFiles, jobs: Sequence[ShardJob]) -> list[_Member]:
    """The group's members, each with its shard's rows and their place in the stacked rows."""
    width = jobs[0].settings.vectorise
    members, offset = [], 0
    for job in jobs:
        rows = job.read_rows(workspace)
        members.append(_Member(job, job.shard % width, rows, offset))
        offset += len(rows.label)
    return members


def _run_slice(workspace: JobFiles, members: list[_Member], slice_: int, X, y,
               progress: Optional[Progress]) -> None:
    """Train and checkpoint one slice of the members that have reached it."""
    settings, data = members[0].job.settings, members[0].job.data
    slice_started = time.perf_counter()
    active = [m for m in members if m.job.from_slice <= slice_]
    counts, trained = {}, {}
    for m in active:
        m.training, m.counters = resume_training(settings, data, m.job.shard, m.state)
        check_vectorisable(m.training[0])
        counts[m.position] = int(np.searchsorted(m.rows.slice, slice_, side="right"))
        own = counts[m.position] - int(np.searchsorted(m.rows.slice, slice_, side="left"))
        # a member whose slice trains no epochs (see ShardJob.epochs_of) takes part on no rows
        trained[m.position] = counts[m.position] if m.job.epochs_of(slice_, counts[m.position], own) else 0
    epochs = members[0].job.schedule()[slice_]
    try:
        crash_point("raise-in-slice")
        steps = _train_group_slice(active, trained, X, y, settings=settings, data=data,
                                   slice_=slice_, epochs=epochs)
    except RuntimeError as exc:  # out of memory, a kernel without a deterministic version...
        shards = ", ".join(str(m.job.shard) for m in active)
        raise SisaError(f"training shards {shards} (vectorised) slice {slice_} failed: {exc}") from exc
    seconds = round(time.perf_counter() - slice_started, 4)
    for m in active:
        n = counts[m.position]
        m.state, record = save_slice(workspace, m.job.shard, slice_, m.rows.ids[:n], m.training, m.counters,
                                     epochs=epochs if trained[m.position] else 0, steps=steps[m.position])
        # seconds: what (re)training this slice of this shard costs, the whole group's
        # step; shared_by: how many shards that time trained at once
        record = dataclasses.replace(record, seconds=seconds, shared_by=len(active))
        m.records.append(record)
        if progress is not None:
            progress(record)


def _result(m: _Member, environment, started: float) -> ShardResult:
    return ShardResult(m.job.shard, m.records, environment, time.perf_counter() - started)


def _train_group_slice(active: list[_Member], counts: dict[int, int], X, y, *, settings, data: DataSpec,
                       slice_: int, epochs: int) -> dict[int, int]:
    """Train ``epochs`` epochs of one slice for the active members, in place in their
    (model, optimizer, scheduler); returns the optimizer steps each position took."""
    import torch

    width, batch_size, device = settings.vectorise, settings.batch_size, settings.device
    stack = _stack(active, width)
    gradient = _gradient(settings, data)
    steps = {m.position: 0 for m in active}
    for epoch in range(epochs):
        plans = _epoch_plans(active, counts, settings, slice_, epoch)
        optimizer = _group_optimizer(active, stack)
        for t in range(max((s for _, s in plans.values()), default=0)):
            index, mask, moving = _batch(plans, t, width, batch_size)
            index_t = torch.from_numpy(index).to(device)
            inputs = X[index_t.reshape(-1)].float().mul_(data.scale).reshape(width, batch_size, *data.shape)
            grads = gradient(stack.params, inputs, y[index_t], torch.from_numpy(mask).to(device))
            _step(optimizer, stack, grads, moving)
            for position in moving:
                steps[position] += 1
        for m in active:
            if counts[m.position]:  # as one model: no epochs, no scheduler steps, on no rows
                with warnings.catch_warnings():  # the steps were taken by the group's optimizer
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                    m.training[2].step()
    _unstack(active, stack)
    return steps


def _gradient(settings, data: DataSpec):
    """Each member's loss gradient, vectorised over the member axis: a function of the stacked
    parameters, the (width, batch, ...) inputs and targets, and the mask of real rows."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from sisa.models import build_model

    skeleton = build_model(settings.model, data.shape, data.n_classes).to("meta")

    def loss(p, inputs, targets, mask):
        logits = functional_call(skeleton, p, (inputs,))
        per_row = F.cross_entropy(logits, targets, reduction="none")
        return (per_row * mask).sum() / mask.sum().clamp(min=1)

    return vmap(grad(loss))


def _epoch_plans(active: list[_Member], counts: dict[int, int], settings, slice_: int,
                 epoch: int) -> dict[int, tuple[np.ndarray, int]]:
    """Each member's rows (indices into the stacked rows) in the order its seed gives, and
    its number of steps (whole batches, the last one padded); members without rows have none."""
    import torch

    plans = {}
    for m in active:
        n = counts[m.position]
        if n == 0:
            continue
        seed = derive_seed(settings.seed, m.job.shard, slice_, epoch)
        torch.manual_seed(seed)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        plans[m.position] = (m.offset + order, math.ceil(n / settings.batch_size))
    return plans


def _batch(plans: dict[int, tuple[np.ndarray, int]], t: int, width: int, batch_size: int):
    """Step ``t``'s rows of every position, the mask of the real ones (padding is 0) and the
    positions that take a step."""
    index = np.zeros((width, batch_size), dtype=np.int64)
    mask = np.zeros((width, batch_size), dtype=np.float32)
    moving = []
    for position, (rows, n_steps) in plans.items():
        if t < n_steps:
            chunk = rows[t * batch_size:(t + 1) * batch_size]
            index[position, :len(chunk)] = chunk
            mask[position, :len(chunk)] = 1
            moving.append(position)
    return index, mask, moving


def _stack(active: list[_Member], width: int) -> _Stack:
    """The group's parameters stacked, each active member's views of them and its optimizer
    state; positions without an active member get a copy of the first member's parameters
    (computed on, never stepped, never kept)."""
    import torch

    by_position = {m.position: m for m in active}
    filler = active[0]
    names = [name for name, _ in filler.training[0].named_parameters()]
    params = {}
    for name in names:
        values = [dict(by_position.get(position, filler).training[0].named_parameters())[name].detach()
                  for position in range(width)]
        params[name] = torch.stack(values)
    views, state = {}, defaultdict(dict)  # keyed by view, as torch's Optimizer.state is by parameter
    for m in active:
        model, optimizer, _ = m.training
        views[m.position] = {name: params[name][m.position] for name in names}
        for name, p in model.named_parameters():
            if p in optimizer.state:
                state[views[m.position][name]] = optimizer.state[p]
    return _Stack(params, views, state)


def _group_optimizer(active: list[_Member], stack: _Stack):
    """One torch optimizer of the members' own kind over every member's views, with the
    members' hyperparameters and state: one parameter group per learning rate (members' own
    schedulers set theirs), so members stepped alike share its multi-tensor kernels."""
    groups: dict[str, dict[str, Any]] = {}
    for m in active:
        (hyper,) = [{k: v for k, v in group.items() if k != "params"} for group in m.training[1].param_groups]
        group = groups.setdefault(repr(sorted(hyper.items())), dict(hyper, params=[]))
        group["params"].extend(stack.views[m.position].values())
    optimizer = type(active[0].training[1])(list(groups.values()))
    optimizer.state = stack.state  # shared: what one epoch's optimizer leaves, the next starts from
    return optimizer


def _step(optimizer, stack: _Stack, grads: dict[str, Any], moving: list[int]) -> None:
    """One step of the group's optimizer for the ``moving`` positions, with their slices of
    the stacked ``grads``; the others get no gradient, which torch's optimizers skip (no
    change to the parameter, no state, no step count)."""
    for position, views in stack.views.items():
        for name, view in views.items():
            view.grad = grads[name][position] if position in moving else None
    optimizer.step()


def _unstack(active: list[_Member], stack: _Stack) -> None:
    """Copy each active member's parameters back into its model and its optimizer state into
    its optimizer (for the parameters stepped at least once; torch keeps none for the others)."""
    import torch

    for m in active:
        model, optimizer, _ = m.training
        views = stack.views[m.position]
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(views[name])
                if stack.state.get(views[name]):
                    optimizer.state[p] = stack.state[views[name]]
