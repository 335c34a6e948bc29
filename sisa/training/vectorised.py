"""Several shards trained at once as one vectorised model (torch.func), for accelerators that
one small model leaves idle.

With ``Settings.vectorise = G`` > 1, shards train in fixed groups of G: group g holds shards
gG .. gG+G-1, and shard s always sits at position s mod G. Every step evaluates each member's
loss gradient with ``torch.func.vmap`` over the stacked parameters, each member on a batch of
its own shard's rows, and updates each member with its own optimizer state. A position with
no batch at a step (its shard has fewer rows, has not reached its first slice, or the group
has no shard there) is computed but left exactly as it was (``torch.where``).

Isolation and exactness. Nothing in a step mixes members (vmap maps over the member axis), so
a member's gradients come from its own shard's rows only. Which kernels run can depend on the
group's width and on the member's position, so both are fixed by the settings: retraining a
shard after a deletion runs a group of the same width with the shard in the same position
(the other positions idle), and gives the bits that training without the deleted rows gives.
``tests/test_vectorised.py`` checks that, and that a member's checkpoints do not change when
its companions' rows do.

Checkpoints are the same files as one model at a time writes (model, optimizer and scheduler
state dicts of each shard), so prediction, audit and status do not know the difference; the
bits differ from unvectorised training, which is why ``vectorise`` is a setting.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.training.jobs import DataSpec, Progress, ShardJob, ShardResult, derive_seed
from sisa.training.slices import (
    deterministic_torch,
    numerics_environment,
    predict_probas,
    resume_training,
    run_shard_job,
    save_slice,
)
from sisa.workspace.files import Workspace

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
SGD_MOMENTUM = 0.9


def check_vectorisable(model) -> None:
    """Refuse a model that keeps buffers (batch norm's running statistics): vmap cannot update
    them per member."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise SisaError(f"vectorise > 1 needs a model without buffers; this one keeps "
                        f"{', '.join(buffers[:3])}{'...' if len(buffers) > 3 else ''} (batch norm); "
                        f"train it with vectorise 1")


def work_units(jobs: Sequence[ShardJob]) -> list[list[ShardJob]]:
    """The jobs grouped as they must run: one job per unit, or one vectorised group per unit."""
    if not jobs:
        return []
    width = jobs[0].settings.vectorise
    if width == 1:
        return [[job] for job in jobs]
    by_group: dict[int, list[ShardJob]] = {}
    for job in sorted(jobs, key=lambda j: j.shard):
        by_group.setdefault(job.shard // width, []).append(job)
    return [by_group[g] for g in sorted(by_group)]


def run_unit(unit: Sequence[ShardJob], progress: Optional[Progress] = None) -> list[ShardResult]:
    """Run one unit of :func:`work_units`."""
    if unit[0].settings.vectorise == 1:
        return [run_shard_job(job, progress) for job in unit]
    return run_group(unit, progress)


@dataclass
class _Member:
    job: ShardJob
    position: int
    rows: Any
    offset: int                        # first row of this shard in the group's stacked rows
    state: Optional[dict[str, Any]] = None
    records: list[dict[str, Any]] = field(default_factory=list)
    training: Any = None               # (model, optimizer, scheduler) of the current slice
    counters: dict[str, int] = field(default_factory=dict)  # of the last checkpoint


def run_group(jobs: Sequence[ShardJob], progress: Optional[Progress] = None) -> list[ShardResult]:
    """Train the shards of one group (all in the same group) together; one result per job."""
    import torch
    import torch._dynamo  # noqa: F401  - optimizers import it on first use; keep it out of slice timings

    settings, data = jobs[0].settings, jobs[0].data
    width = settings.vectorise
    if len({job.shard // width for job in jobs}) != 1:
        raise ValueError("run_group takes the jobs of one group")
    workspace = Workspace(jobs[0].workdir)
    started = time.perf_counter()
    members, offset = [], 0
    for job in jobs:
        rows = workspace.read_data_file(job.shard_file, job.shard_sha256, data.shape, data.dtype)
        members.append(_Member(job, job.shard % width, rows, offset))
        offset += len(rows.label)
    slice_epochs = settings.slice_epochs()
    with deterministic_torch(settings):
        environment = numerics_environment(settings)
        device = settings.device
        # every member's rows in one tensor, so one gather fetches a step's batches
        X = torch.from_numpy(np.concatenate([np.asarray(m.rows.X) for m in members])).to(device)
        y = torch.from_numpy(np.concatenate([m.rows.label for m in members])).to(device)
        for m in members:
            m.state = workspace.load_checkpoint(m.job.start) if m.job.start is not None else None
            if (m.state is None) != (m.job.from_slice == 0):
                raise ValueError("a job from slice 0 starts fresh; any later slice needs a start checkpoint")
        for slice_ in range(min(m.job.from_slice for m in members), settings.slices):
            slice_started = time.perf_counter()
            active = [m for m in members if m.job.from_slice <= slice_]
            counts = {}
            for m in active:
                m.training, m.counters = resume_training(settings, data, m.job.shard, m.state)
                check_vectorisable(m.training[0])
                counts[m.position] = int(np.searchsorted(m.rows.slice, slice_, side="right"))
            epochs = slice_epochs[slice_]
            try:
                crash_point("raise-in-slice")
                steps = _train_group_slice(active, counts, X, y, settings=settings, data=data,
                                           slice_=slice_, epochs=epochs)
            except RuntimeError as exc:  # out of memory, a kernel without a deterministic version...
                shards = ", ".join(str(m.job.shard) for m in active)
                raise SisaError(f"training shards {shards} (vectorised) slice {slice_} failed: {exc}") from exc
            seconds = round(time.perf_counter() - slice_started, 4)
            for m in active:
                n = counts[m.position]
                m.state, record = save_slice(workspace, m.job.shard, slice_, m.rows.ids[:n], m.training, m.counters,
                                             epochs=epochs if n else 0, steps=steps[m.position])
                # seconds: what (re)training this slice of this shard costs, the whole group's
                # step; shared_by: how many shards that time trained at once
                record.update(seconds=seconds, shared_by=len(active))
                m.records.append(record)
                if progress is not None:
                    progress(record)
            crash_point("worker-mid-shard")
        results = []
        for m in members:
            test_probas = None
            if m.job.evaluate is not None and m.state is not None:
                test = workspace.read_data_file(m.job.evaluate[0], m.job.evaluate[1], data.shape, data.dtype)
                test_probas = predict_probas(m.state["model"], test.X, settings=settings, data=data)
            results.append(ShardResult(m.job.shard, m.records, environment,
                                       time.perf_counter() - started, test_probas))
    return results


def _train_group_slice(active: list[_Member], counts: dict[int, int], X, y, *, settings, data: DataSpec,
                       slice_: int, epochs: int) -> dict[int, int]:
    """Train ``epochs`` epochs of one slice for the active members, in place in their
    (model, optimizer, scheduler); returns the optimizer steps each position took."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from sisa.models import build_model

    width, batch_size, device = settings.vectorise, settings.batch_size, settings.device
    params, opt = _stack(active, width)
    names = list(params)
    skeleton = build_model(settings.model, data.shape, data.n_classes).to("meta")

    def loss(p, inputs, targets, mask):
        logits = functional_call(skeleton, p, (inputs,))
        per_row = F.cross_entropy(logits, targets, reduction="none")
        return (per_row * mask).sum() / mask.sum().clamp(min=1)

    gradient = vmap(grad(loss))
    steps = {m.position: 0 for m in active}
    for epoch in range(epochs):
        # each member's batches, in the order its seeds give, padded to whole batches
        plans = {}
        for m in active:
            n = counts[m.position]
            if n == 0:
                continue
            seed = derive_seed(settings.seed, m.job.shard, slice_, epoch)
            torch.manual_seed(seed)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
            plans[m.position] = (m.offset + order, math.ceil(n / batch_size))
        lrs = np.zeros(width)
        for m in active:
            lrs[m.position] = m.training[1].param_groups[0]["lr"]
        for t in range(max((s for _, s in plans.values()), default=0)):
            index = np.zeros((width, batch_size), dtype=np.int64)
            mask = np.zeros((width, batch_size), dtype=np.float32)
            moving = np.zeros(width, dtype=bool)
            for position, (rows, n_steps) in plans.items():
                if t < n_steps:
                    chunk = rows[t * batch_size:(t + 1) * batch_size]
                    index[position, :len(chunk)] = chunk
                    mask[position, :len(chunk)] = 1
                    moving[position] = True
                    steps[position] += 1
            index_t = torch.from_numpy(index).to(device)
            inputs = X[index_t.reshape(-1)].float().mul_(data.scale).reshape(width, batch_size, *data.shape)
            grads = gradient(params, inputs, y[index_t], torch.from_numpy(mask).to(device))
            _update(settings, params, opt, grads, names, moving, lrs)
        for m in active:
            if counts[m.position]:  # as one model: no epochs, no scheduler steps, on no rows
                with warnings.catch_warnings():  # the steps were taken here, not by optimizer.step()
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                    m.training[2].step()
    _unstack(active, params, opt, settings)
    return steps


def _stack(active: list[_Member], width: int):
    """Stacked parameters and optimizer state of the group; positions without an active
    member get a copy of the first member's (computed on, never kept)."""
    import torch

    by_position = {m.position: m for m in active}
    filler = active[0]
    params, opt = {}, {"step": torch.zeros(width, dtype=torch.float64)}
    for i, (name, _) in enumerate(filler.training[0].named_parameters()):
        values, firsts, seconds, present = [], [], [], []
        for position in range(width):
            model, optimizer, _ = by_position.get(position, filler).training
            p = dict(model.named_parameters())[name]
            state = optimizer.state.get(p, {})
            values.append(p.detach())
            first = state.get("exp_avg", state.get("momentum_buffer"))
            firsts.append(first if first is not None else torch.zeros_like(p))
            seconds.append(state.get("exp_avg_sq", torch.zeros_like(p)))
            present.append(first is not None)
            if i == 0 and "step" in state:
                opt["step"][position] = float(state["step"])
        params[name] = torch.stack(values).clone()
        opt[("first", name)] = torch.stack(firsts).clone()
        opt[("second", name)] = torch.stack(seconds).clone()
        opt[("present", name)] = torch.tensor(present, device=params[name].device)
    return params, opt


def _update(settings, params, opt, grads, names, moving_np: np.ndarray, lrs: np.ndarray) -> None:
    """One optimizer step for the ``moving_np`` positions, none at all for the others."""
    import torch

    width = len(lrs)
    wd = settings.weight_decay
    device = grads[names[0]].device
    moving = torch.from_numpy(moving_np).to(device)
    if settings.optimizer in ("adam", "adamw"):
        beta1, beta2 = ADAM_BETAS
        step = opt["step"] + torch.from_numpy(moving_np.astype(np.float64))  # kept on the CPU: no device sync
        safe = step.clamp(min=1).numpy()
        # per-member scalars in float64, as the single-model optimizer computes them
        step_size = torch.tensor(lrs / (1 - beta1 ** safe), dtype=torch.float32, device=device)
        correction2 = torch.tensor(np.sqrt(1 - beta2 ** safe), dtype=torch.float32, device=device)
        decay = torch.tensor(1 - lrs * wd, dtype=torch.float32, device=device)
    else:
        lr = torch.tensor(lrs, dtype=torch.float32, device=device)
    for name in names:
        p, g = params[name], grads[name]
        shape = (width,) + (1,) * (p.dim() - 1)
        keep = moving.view(shape)
        first, second = opt[("first", name)], opt[("second", name)]
        if settings.optimizer in ("adam", "adamw"):
            if settings.optimizer == "adam" and wd:
                g = g + wd * p
            base = p * decay.view(shape) if settings.optimizer == "adamw" and wd else p
            first_new = first * beta1 + g * (1 - beta1)
            second_new = second * beta2 + g * g * (1 - beta2)
            denom = second_new.sqrt() / correction2.view(shape) + ADAM_EPS
            p_new = base - step_size.view(shape) * first_new / denom
            opt[("second", name)] = torch.where(keep, second_new, second)
        else:
            if wd:
                g = g + wd * p
            present = opt[("present", name)].view(shape)
            first_new = torch.where(present, first * SGD_MOMENTUM + g, g)
            p_new = p - lr.view(shape) * first_new
        params[name] = torch.where(keep, p_new, p)
        opt[("first", name)] = torch.where(keep, first_new, first)
        opt[("present", name)] = opt[("present", name)] | moving
    if settings.optimizer in ("adam", "adamw"):
        opt["step"] = step


def _unstack(active: list[_Member], params, opt, settings) -> None:
    """Copy each active member's slice of the stacked tensors back into its model and
    optimizer, in the optimizer's own state format."""
    import torch

    for m in active:
        model, optimizer, _ = m.training
        k = m.position
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name][k])
                if not bool(opt[("present", name)][k]):
                    continue  # never stepped: the optimizer keeps no state for it yet
                if settings.optimizer in ("adam", "adamw"):
                    optimizer.state[p] = {"step": torch.tensor(float(opt["step"][k]), dtype=torch.float32),
                                          "exp_avg": opt[("first", name)][k].clone(),
                                          "exp_avg_sq": opt[("second", name)][k].clone()}
                else:
                    optimizer.state[p] = {"momentum_buffer": opt[("first", name)][k].clone()}
