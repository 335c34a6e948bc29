"""Approximate unlearning methods, for comparison with sisa's exact deletion.

Each method starts from a model trained on all the training rows and tries to make it forget
a *forget* set, usually with a little training on the *retain* set (training rows minus
forget). None of them is exact: the result is not the model that training without the forget
set gives, and :mod:`sisa.research.evaluation` measures how far it lands from that model.

Methods are registered in :data:`METHODS` with their default settings; :func:`run_method`
runs one on a :class:`ForgetTask`. Training lengths are given as ``share``: passes over the data
as a share of the original training's epochs, so a method's cost is comparable across datasets
(the reference implementations fine-tune for 5-10 epochs after about 180 of training, a few
percent; sisa's small models train 5-30 epochs, so the defaults use a fifth).

Sources of each method's settings are in its docstring. Optimisers are SGD with momentum 0.9,
as in the reference code.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sisa.errors import SisaError
from sisa.registry import Registry
from sisa.settings import Settings
from sisa.training.jobs import DataSpec, derive_seed


@dataclass
class ForgetTask:
    """What an approximate method works with.

    ``model`` was trained on retain + forget and is changed in place. Features are stored rows
    (``data.scale`` is applied per batch), labels class indices. ``settings`` are the original
    training's (batch size, epochs, seed, device). ``amnesiac_log`` is the update log that
    training kept, for :func:`amnesiac`.
    """

    model: nn.Module
    retain_X: torch.Tensor
    retain_y: torch.Tensor
    forget_X: torch.Tensor
    forget_y: torch.Tensor
    data: DataSpec
    settings: Settings
    amnesiac_log: Optional["AmnesiacLog"] = None

    def rows(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.retain_X, self.retain_y) if which == "retain" else (self.forget_X, self.forget_y)

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        return X.float().mul_(self.data.scale)

    def steps(self, which: str, share: float) -> int:
        """Optimizer steps of ``share`` x the original's epochs over ``which``."""
        n = len(self.rows(which)[1])
        epochs = share * self.settings.epochs
        return max(1, math.ceil(epochs * n / self.settings.batch_size)) if n else 0

    def batches(self, which: str, share: float, *, tag: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled mini-batches (inputs, labels) of ``which`` for ``share`` x the original's
        epochs (a fraction of a pass stops part way); seeded by ``tag``."""
        X, y = self.rows(which)
        n, size = len(y), self.settings.batch_size
        remaining = self.steps(which, share)
        epoch = 0
        while remaining > 0:
            g = torch.Generator().manual_seed(derive_seed(self.settings.seed, "unlearn", tag, which, epoch))
            order = torch.randperm(n, generator=g).to(X.device)
            for start in range(0, n, size):
                if remaining == 0:
                    return
                batch = order[start:start + size]
                yield self.inputs(X[batch]), y[batch]
                remaining -= 1
            epoch += 1

    def cycle(self, which: str, *, tag: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled mini-batches of ``which`` (to pair forget batches with retain ones)."""
        while True:
            yield from self.batches(which, 1.0 / max(1, self.settings.epochs), tag=tag)
            tag += "+"


@dataclass(frozen=True)
class Method:
    """An approximate unlearning method: ``fn(task, **params)`` changes ``task.model``."""

    name: str
    fn: Callable[..., None]
    defaults: dict[str, Any]
    summary: str


METHODS: Registry[Method] = Registry("unlearning method")


def register(name: str, summary: str, **defaults: Any) -> Callable:
    def add(fn: Callable[..., None]) -> Callable[..., None]:
        METHODS.register(name)(Method(name, fn, defaults, summary))
        return fn

    return add


def run_method(name: str, task: ForgetTask, **params: Any) -> dict[str, Any]:
    """Run method ``name`` on ``task`` (its model changes in place); returns the settings
    used and the seconds taken.

    >>> task = tiny_task()
    >>> before = [p.clone() for p in task.model.parameters()]
    >>> out = run_method("ft", task, share=0.5)
    >>> out["params"]["lr"], any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters()))
    (0.01, True)
    """
    method = METHODS.get(name)
    chosen = method_settings(name, params)
    started = time.perf_counter()
    torch.manual_seed(derive_seed(task.settings.seed, "unlearn", name))
    task.model.train()
    method.fn(task, **chosen)
    task.model.eval()
    return {"method": name, "params": chosen, "seconds": time.perf_counter() - started}


def method_settings(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The settings method ``name`` runs with: its defaults, changed by ``params``. Unknown
    methods and settings are refused naming the valid ones; values must be finite and >= 0.

    >>> method_settings("ssd", {"alpha": 5})
    {'alpha': 5, 'lam': 1.0}
    >>> method_settings("ft", {"learning_rate": 0.1})
    Traceback (most recent call last):
    ...
    sisa.errors.SisaError: method 'ft' has no setting learning_rate; its settings: share, lr
    """
    method = METHODS.get(name)
    unknown = set(params) - set(method.defaults)
    if unknown:
        raise SisaError(f"method {name!r} has no setting {', '.join(sorted(unknown))}; "
                        f"its settings: {', '.join(method.defaults) or 'none'}")
    for key, value in params.items():
        if isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
            raise SisaError(f"method {name!r}: setting {key} must be a finite number >= 0, got {value}")
    return {**method.defaults, **params}


def _sgd(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _random_labels(y: torch.Tensor, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A label different from the true one for every row, uniformly among the others."""
    shift = torch.randint(1, n_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % n_classes


@register("ft", "fine-tune on the retain set", share=0.2, lr=0.01)
def finetune(task: ForgetTask, *, share: float, lr: float, l1: float = 0.0) -> None:
    """Fine-tuning on retain only (FT; Golatkar et al. 2020, Jia et al. 2023): the forget set
    fades by catastrophic forgetting. Reference: 5-10 epochs, lr 0.01-0.1."""
    model = task.model
    optimizer = _sgd(model.parameters(), lr)
    total = task.steps("retain", share)
    for t, (x, y) in enumerate(task.batches("retain", share, tag="ft")):
        loss = F.cross_entropy(model(x), y)
        if l1:
            # the penalty decays linearly to zero, as in the reference l1-sparse schedule
            loss = loss + l1 * (1 - t / total) * sum(p.abs().sum() for p in model.parameters())
        _step(optimizer, loss)


@register("l1-sparse", "fine-tune on retain with a decaying L1 penalty", share=0.2, lr=0.01, l1=5e-4)
def l1_sparse(task: ForgetTask, *, share: float, lr: float, l1: float) -> None:
    """Fine-tuning with a linearly decaying L1 penalty on the weights (Jia et al. 2023,
    "Model sparsity can simplify machine unlearning"; reference gamma 5e-4, 10 epochs)."""
    finetune(task, share=share, lr=lr, l1=l1)


@register("neggrad", "gradient ascent on the forget loss", share=0.2, lr=3e-4)
def neggrad(task: ForgetTask, *, share: float, lr: float) -> None:
    """Gradient ascent on the forget set's cross-entropy (GA/NegGrad; Golatkar et al. 2020,
    Thudi et al. 2022). Unbounded: it needs a small lr and few passes (reference 1e-5..1e-3)."""
    optimizer = _sgd(task.model.parameters(), lr)
    for x, y in task.batches("forget", share, tag="neggrad"):
        _step(optimizer, -F.cross_entropy(task.model(x), y))


@register("neggrad+", "descent on retain, ascent on forget", share=0.2, lr=0.01, alpha=0.99)
def neggrad_plus(task: ForgetTask, *, share: float, lr: float, alpha: float) -> None:
    """NegGrad+ (Kurmanji et al. 2023): each step minimises alpha * CE(retain batch) -
    (1 - alpha) * CE(forget batch)."""
    optimizer = _sgd(task.model.parameters(), lr)
    forget = task.cycle("forget", tag="neggrad+f")
    for x, y in task.batches("retain", share, tag="neggrad+r"):
        fx, fy = next(forget)
        loss = alpha * F.cross_entropy(task.model(x), y) - (1 - alpha) * F.cross_entropy(task.model(fx), fy)
        _step(optimizer, loss)


def _relabel_train(task: ForgetTask, *, share: float, lr: float, mask: Optional[dict[str, torch.Tensor]],
                   tag: str) -> None:
    """Train on forget rows with random wrong labels together with retain rows (true labels).
    With ``mask``, only the masked weights move: gradients outside it are zeroed and those
    weights are restored after every step, so momentum and weight decay cannot move them."""
    model = task.model
    params = dict(model.named_parameters())
    frozen = {n: p.detach().clone() for n, p in params.items()} if mask is not None else None
    optimizer = _sgd(model.parameters(), lr)
    g = torch.Generator().manual_seed(derive_seed(task.settings.seed, "unlearn", tag, "labels"))
    n_forget, n_retain = len(task.forget_y), len(task.retain_y)
    # one forget batch for every (retain rows / forget rows) retain batches: both sets are
    # seen in proportion, as when they are shuffled together
    every = max(1, round(n_retain / max(1, n_forget)))
    forget = task.cycle("forget", tag=tag + "f")
    retain = task.batches("retain", share, tag=tag + "r")
    for t, (x, y) in enumerate(retain):
        batches = [(x, y)]
        if t % every == 0 and n_forget:
            fx, fy = next(forget)
            batches.append((fx, _random_labels(fy, task.data.n_classes, g)))
        for bx, by in batches:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(bx), by).backward()
            if mask is not None:
                for n, p in params.items():
                    p.grad.mul_(mask[n])
            optimizer.step()
            if mask is not None:
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(torch.where(mask[n].bool(), p, frozen[n]))


@register("rl", "random labels on forget, true labels on retain", share=0.2, lr=0.01)
def random_labels(task: ForgetTask, *, share: float, lr: float) -> None:
    """Random labelling (RL; Golatkar et al. 2020, as run by Fan et al. 2024): train on the
    forget set relabelled at random, interleaved with the retain set."""
    _relabel_train(task, share=share, lr=lr, mask=None, tag="rl")


def saliency_mask(task: ForgetTask, fraction: float) -> dict[str, torch.Tensor]:
    """1 for the ``fraction`` of weights with the largest |gradient of the forget loss|
    (one threshold over all weights), 0 elsewhere."""
    model = task.model
    model.zero_grad(set_to_none=True)
    for x, y in task.batches("forget", 1.0 / max(1, task.settings.epochs), tag="salun-mask"):
        F.cross_entropy(model(x), y, reduction="sum").backward()
    grads = {n: (p.grad.abs() if p.grad is not None else torch.zeros_like(p))
             for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    flat = torch.cat([g.flatten() for g in grads.values()])
    keep = max(1, int(round(fraction * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return {n: (g >= threshold).to(g.dtype) for n, g in grads.items()}


@register("salun", "random labels on the most forget-salient weights only", share=0.2, lr=0.01, mask=0.5)
def salun(task: ForgetTask, *, share: float, lr: float, mask: float) -> None:
    """SalUn (Fan et al. 2024): RL restricted to the weights whose forget-loss gradient is in
    the top ``mask`` share; the rest stay exactly as trained."""
    _relabel_train(task, share=share, lr=lr, mask=saliency_mask(task, mask), tag="salun")


@register("scrub", "student moves away from the teacher on forget, stays close on retain",
          share=0.2, lr=5e-3, max_share=0.1, temperature=4.0, alpha=0.001, gamma=0.99)
def scrub(task: ForgetTask, *, share: float, lr: float, max_share: float, temperature: float,
          alpha: float, gamma: float) -> None:
    """SCRUB (Kurmanji et al. 2023). The original model is the frozen teacher. Max steps
    (the first ``max_share`` of the passes) maximise KL(teacher || student) at temperature T on
    forget batches; min steps minimise gamma * CE + alpha * KL on retain batches. Reference:
    T = 4, gamma 0.99, alpha 0.001, a few max epochs then min epochs."""
    student = task.model
    teacher = copy.deepcopy(student).eval()
    optimizer = _sgd(student.parameters(), lr)

    def kl(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.softmax(teacher(x) / temperature, dim=1)
        return F.kl_div(F.log_softmax(student(x) / temperature, dim=1), target,
                        reduction="batchmean") * temperature ** 2

    # interleave: the max phase spread over the first part of training, as SCRUB alternates
    retain_steps = task.steps("retain", share)
    max_total = task.steps("forget", max_share)
    forget = task.batches("forget", max_share, tag="scrub-max")
    max_done = 0
    for t, (x, y) in enumerate(task.batches("retain", share, tag="scrub-min")):
        due = min(max_total, math.ceil((t + 1) * max_total / max(1, retain_steps // 2)))
        while max_done < due:
            fx, _ = next(forget)
            _step(optimizer, -kl(fx))
            max_done += 1
        _step(optimizer, gamma * F.cross_entropy(student(x), y) + alpha * kl(x))


def _importance(task: ForgetTask, X: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean over mini-batches of the squared gradient of the batch loss (SSD's importance)."""
    model = task.model
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    size, batches = task.settings.batch_size, 0
    for start in range(0, len(y), size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(task.inputs(X[start:start + size])), y[start:start + size]).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.detach() ** 2
        batches += 1
    model.zero_grad(set_to_none=True)
    return {n: t / max(1, batches) for n, t in total.items()}


@register("ssd", "dampen weights far more important to forget than to all data", alpha=10.0, lam=1.0)
def ssd(task: ForgetTask, *, alpha: float, lam: float) -> None:
    """Selective Synaptic Dampening (Foster et al. 2024), no training: with importances
    (mean squared gradients) I_D on all training rows and I_f on forget, every weight with
    I_f > alpha * I_D is multiplied by min(lam * I_D / I_f, 1). Reference alpha 10, lambda 1."""
    task.model.eval()  # importances of the trained model as it predicts
    all_X = torch.cat([task.retain_X, task.forget_X])
    all_y = torch.cat([task.retain_y, task.forget_y])
    overall = _importance(task, all_X, all_y)
    forget = _importance(task, task.forget_X, task.forget_y)
    with torch.no_grad():
        for n, p in task.model.named_parameters():
            select = forget[n] > alpha * overall[n]
            factor = torch.clamp(lam * overall[n] / forget[n].clamp_min(1e-30), max=1.0)
            p.mul_(torch.where(select, factor, torch.ones_like(p)))


def per_sample_fisher(task: ForgetTask, X: torch.Tensor, y: torch.Tensor, *,
                      chunk: int = 128) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over rows of each row's squared loss gradient."""
    from torch.func import functional_call, grad, vmap

    model = task.model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss(p, x, target):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, target.unsqueeze(0))

    per_row = vmap(grad(loss), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for start in range(0, len(y), chunk):
        grads = per_row(params, task.inputs(X[start:start + chunk]), y[start:start + chunk])
        for n, g in grads.items():
            total[n] += (g ** 2).sum(0)
    return {n: t / max(1, len(y)) for n, t in total.items()}


@register("fisher", "Gaussian noise shaped by the inverse Fisher of retain", alpha=1e-6, max_var=1e3)
def fisher(task: ForgetTask, *, alpha: float, max_var: float) -> None:
    """Fisher forgetting (Golatkar et al. 2020): add noise with variance alpha * 1/F (F the
    retain set's diagonal Fisher, capped at ``max_var``, averaged per output unit as in the
    reference), so weights the retain set does not pin down move most. Empirical Fisher
    with the true labels. Reference alpha about 1e-6; larger values collapse the model."""
    information = per_sample_fisher(task, task.retain_X, task.retain_y)
    g = torch.Generator().manual_seed(derive_seed(task.settings.seed, "unlearn", "fisher-noise"))
    with torch.no_grad():
        for n, p in task.model.named_parameters():
            var = alpha * torch.clamp(1.0 / (information[n] + 1e-8), max=max_var)
            if p.ndim > 1:
                var = var.flatten(1).mean(1).view(-1, *([1] * (p.ndim - 1))).expand_as(p)
            noise = torch.randn(p.shape, generator=g).to(p.device)
            p.add_(var.sqrt() * noise)


class AmnesiacLog:
    """Logs, while a model trains, the parameter update of every batch that holds a tracked
    row, with the positions of the rows in that batch (Graves et al. 2021, Amnesiac ML).

    The original method records the batches of data that may later have to be forgotten.
    Updates are kept as one float64 sum (exact: each update is the difference of two float32
    tensors), enough to forget exactly the tracked rows; ``keep_updates=True`` also keeps each
    batch's update, to forget any subset of them, at the cost of one model copy per batch.

    Pass it as ``observer`` to :func:`sisa.training.slices.train_slice`.
    """

    def __init__(self, model: nn.Module, tracked: np.ndarray, *, keep_updates: bool = False) -> None:
        self.model = model
        self.tracked = torch.from_numpy(np.asarray(tracked, dtype=bool))
        self.keep_updates = keep_updates
        self.total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
        self.batches: list[np.ndarray] = []      # positions of the rows of each logged batch
        self.updates: list[dict[str, torch.Tensor]] = []
        self.steps = 0
        self._before: Optional[dict[str, torch.Tensor]] = None

    def before_step(self, batch: torch.Tensor) -> None:
        positions = batch.cpu()
        self._before = None
        if bool(self.tracked[positions].any()):
            self._before = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def after_step(self, batch: torch.Tensor) -> None:
        self.steps += 1
        if self._before is None:
            return
        update = {n: p.detach().double() - self._before[n].double()
                  for n, p in self.model.named_parameters()}
        for n, u in update.items():
            self.total[n] += u
        self.batches.append(batch.cpu().numpy().copy())
        if self.keep_updates:
            self.updates.append({n: u.float() for n, u in update.items()})
        self._before = None

    def updates_for(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """Sum of the updates of every logged batch holding any of ``positions``."""
        positions = np.asarray(positions)
        wanted = np.zeros(len(self.tracked), dtype=bool)
        wanted[positions] = True
        if not self.tracked[torch.from_numpy(wanted)].all():
            raise SisaError("the Amnesiac log did not track some of the rows to forget: their "
                            "batches' updates were not recorded")
        if np.array_equal(wanted, self.tracked.numpy()):
            return self.total
        if not self.keep_updates:
            raise SisaError("this Amnesiac log kept only the sum of updates for the tracked rows; "
                            "forgetting a subset needs keep_updates=True")
        total = {n: torch.zeros_like(t) for n, t in self.total.items()}
        for batch, update in zip(self.batches, self.updates):
            if wanted[batch].any():
                for n, u in update.items():
                    total[n] += u.double()
        return total


@register("amnesiac", "subtract the logged updates of batches that held forget rows, then repair",
          repair_share=0.1, lr=0.01)
def amnesiac(task: ForgetTask, *, repair_share: float, lr: float, positions: Optional[np.ndarray] = None) -> None:
    """Amnesiac unlearning (Graves et al. 2021) in its original form: training logged every
    update of a batch holding a forget row (:class:`AmnesiacLog`); forgetting subtracts them
    all, then fine-tunes briefly on retain to repair the damage. ``positions`` are the forget
    rows' positions in the training order (default: every tracked row)."""
    log = task.amnesiac_log
    if log is None:
        raise SisaError("amnesiac needs the update log kept while the original model trained")
    updates = log.total if positions is None else log.updates_for(positions)
    with torch.no_grad():
        for n, p in task.model.named_parameters():
            p.copy_((p.double() - updates[n].to(p.device)).to(p.dtype))
    if repair_share > 0:
        finetune(task, share=repair_share, lr=lr)


def tiny_task(n: int = 120, forget: int = 20, seed: int = 0) -> ForgetTask:
    """A small trained task on random data, for examples and tests."""
    from sisa.models import build_model

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    model = build_model("mlp", (8,), 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        _step(optimizer, F.cross_entropy(model(X), y))
    settings = Settings(shards=1, slices=1, epochs=10, batch_size=16, seed=seed)
    return ForgetTask(model, X[forget:], y[forget:], X[:forget], y[:forget],
                      DataSpec((8,), "float32", 1.0, 3), settings)
