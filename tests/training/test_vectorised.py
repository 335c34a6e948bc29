"""Shards trained together as one vectorised model (Settings.vectorise > 1): isolation and
exactness hold on that path too, and it trains what one model at a time trains."""

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_identical, records, run_cli, shard_layout, without

from sisa.data.sources import load
from sisa.ops.delete import delete
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.executors import work_units
from sisa.workspace.files import Workspace

pytestmark = pytest.mark.numerics  # .ci/run runs these again under ATEN_CPU_CAPABILITY=default
# 3 shards in groups of 2: group 0 holds shards 0 and 1, group 1 holds shard 2 and an empty position
SETTINGS = Settings(shards=3, slices=3, epochs=2, batch_size=32, model="cnn", vectorise=2)
VARIANTS = {
    "adam": {},
    "sgd-cosine-decay": dict(optimizer="sgd", lr=0.01, weight_decay=0.01, scheduler="cosine"),
    "adamw-decay": dict(optimizer="adamw", weight_decay=0.01),
}


@pytest.fixture(scope="module")
def digits():
    return load("digits")  # 8x8 images: the cnn's convolutions run as grouped convolutions under vmap


def checkpoint_states(workdir: Path, slice_: int) -> dict:
    workspace = Workspace(workdir)
    return {r.shard: workspace.load_checkpoint(r) for r in workspace.checkpoints().checkpoints if r.slice == slice_}


@pytest.mark.parametrize("variant", VARIANTS)
def test_vectorised_delete_equals_training_without(variant, digits, tmp_path):
    settings = SETTINGS.replace(**VARIANTS[variant])
    train_workspace(tmp_path / "ws", digits, settings)
    layout = shard_layout(tmp_path / "ws")
    ids = sorted(layout)
    # both shards of group 0 from different slices, then shard 2 alone in group 1, then shard 0
    # again with its companion idle
    batches = [[next(i for i in ids if layout[i] == (0, 2)), next(i for i in ids if layout[i] == (1, 1))],
               [next(i for i in ids if layout[i] == (2, 0))],
               [i for i in ids if layout[i][0] == 0][5:8]]
    for batch in batches:
        delete(Workspace(tmp_path / "ws"), batch)
    removed = {i for batch in batches for i in batch}
    train_workspace(tmp_path / "fresh", without(digits, removed), settings)
    assert_identical(tmp_path / "ws", tmp_path / "fresh")


def test_a_shards_bits_do_not_depend_on_its_companions_rows(digits, tmp_path):
    """Isolation: removing rows of shard 1 leaves every checkpoint of shard 0, trained in the
    same vectorised group, bit for bit as it was."""
    settings = SETTINGS.replace(shards=2)
    train_workspace(tmp_path / "all", digits, settings)
    layout = shard_layout(tmp_path / "all")
    removed = [i for i in sorted(layout) if layout[i][0] == 1][::3]
    train_workspace(tmp_path / "fewer", without(digits, removed), settings)
    before, after = records(tmp_path / "all"), records(tmp_path / "fewer")
    assert {k: v for k, v in before.items() if k[0] == 0} == {k: v for k, v in after.items() if k[0] == 0}
    assert all(before[(1, r)] != after[(1, r)] for r in range(settings.slices))


def train_in_float64(monkeypatch) -> None:
    """Every model sisa builds from here on has float64 parameters and casts its inputs to
    float64: the same code paths (single-model and vectorised), in double precision."""
    import sisa.models

    build = sisa.models.build_model

    def build64(*args, **kwargs):
        model = build(*args, **kwargs).double()  # initialised in float32 as always, then widened exactly
        model.register_forward_pre_hook(lambda module, inputs: tuple(x.double() for x in inputs))
        return model

    monkeypatch.setattr(sisa.models, "build_model", build64)


class StepLog:
    """For every optimizer.step() while it is registered (the single-model run's): the largest
    change of any weight in that step and the largest |weight| before it."""

    def __init__(self) -> None:
        self.moves: list[float] = []
        self.sizes: list[float] = []
        self._before: list[torch.Tensor] = []

    def pre(self, optimizer, args, kwargs) -> None:
        self._before = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]

    def post(self, optimizer, args, kwargs) -> None:
        after = [p.detach() for group in optimizer.param_groups for p in group["params"]]
        self.moves.append(max(float((a - b).abs().max()) for a, b in zip(after, self._before)))
        self.sizes.append(max(float(b.abs().max()) for b in self._before))


@pytest.mark.parametrize("variant", VARIANTS)
def test_vectorised_training_matches_one_model_at_a_time(variant, digits, tmp_path, monkeypatch):
    """Training shards together follows training each on its own: weights and optimizer state
    agree, up to a bound derived from the arithmetic below.

    Both trainings run in float64. In float32 no useful bound exists: the two paths round
    differently (the kernels differ), and once two values in a max-pool window are within a
    rounding error of each other the paths can pick different maxima, so that row's gradient
    goes to other weights and the trajectories part by far more than rounding (seen with
    AVX-512 kernels, AdamW: such a flip at step 36 of shard 1's 46 left 5e-5 between the
    weights; with AVX2 kernels nothing flipped and they stayed within 1e-6). In float64 the
    rounding is 2^29 times smaller, so such near-ties are that much rarer, and what separates
    the two paths is known. The updates are the same arithmetic: the vectorised path steps
    torch's own Adam, AdamW or SGD on each member's slice of the stacked parameters, with that
    member's state and learning rate (sisa.training.vectorised._step; bit for bit what the
    member's own optimizer does, see test_the_group_optimizer_steps_each_member_as_its_own_does).
    The gradients differ by float64 rounding (vmap runs the batch's convolutions grouped, and
    sums in another order).

    Bound. The test holds the paths to a float32-sized ceiling: the error that computing the
    optimizer's per-member scalars in float32 would inject (as an earlier hand-written
    vectorised update did: Adam's step size lr/(1-b1^t) and sqrt(1-b2^t), AdamW's decay factor
    1 - lr*wd, SGD's lr). An update that departs from torch's by more than that (a member
    stepped with another's step count or learning rate, or on a step it had no batch for)
    fails it; float64 rounding of the gradients stays orders of magnitude below it. With
    u = 2^-24 (float32 rounding: |fl(x) - x| <= u|x|), a step that moves a weight by d in
    torch's optimizer moves it by d(1 + e), |e| <= k*u: k = 2 for Adam/AdamW (step size, bias
    correction), 1 for SGD (lr). AdamW's decay factor also adds
    |fl(1 - lr*wd) - (1 - lr*wd)| * |p| per step. Summed over the steps (largest d and |p| of
    each step, read from the single-model run; both shards' steps, so a bound for either) that
    is E, the error such rounding injects. An error made at one step is carried
    by the later ones (a moved weight changes later gradients), and we allow it to grow at
    most linearly: up to T-fold over the T steps of a shard. Weights: |vec - one| <= T * E.
    Float64's own rounding (about 1e-16 relative) is not counted.
    Optimizer state (moments, momentum buffers) averages the gradients along the trajectory;
    near a minimum a gradient is proportional to the distance from it, so its relative error
    is that of the trajectory, rho = T * E / (sum of the steps d). Each state tensor is held
    to rho times its largest value (2 rho for the second moment: squared gradients).
    """
    import numpy as np
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    train_in_float64(monkeypatch)
    states, log = {}, StepLog()
    for width in (1, 2):
        settings = SETTINGS.replace(shards=2, vectorise=width, **VARIANTS[variant])
        hooks = []
        if width == 1:  # the single-model run's steps only: the vectorised run steps torch's optimizers too
            hooks = [register_optimizer_step_pre_hook(log.pre), register_optimizer_step_post_hook(log.post)]
        try:
            train_workspace(tmp_path / f"v{width}", digits, settings)
        finally:
            for hook in hooks:
                hook.remove()
        states[width] = checkpoint_states(tmp_path / f"v{width}", settings.slices - 1)
    assert states[1][0]["model"]["0.weight"].dtype == torch.float64

    u = 2.0 ** -24
    k = 1 if settings.optimizer == "sgd" else 2
    decay = 1 - settings.lr * settings.weight_decay if settings.optimizer == "adamw" else 1.0
    decay_error = abs(float(np.float32(decay)) - decay)
    steps = max(states[1][shard]["counters"]["steps"] for shard in (0, 1))
    assert len(log.moves) == sum(states[1][shard]["counters"]["steps"] for shard in (0, 1))
    injected = sum(k * u * d + decay_error * p for d, p in zip(log.moves, log.sizes))
    atol = steps * injected
    rho = atol / sum(log.moves)

    for shard in (0, 1):
        one, vec = states[1][shard], states[2][shard]
        for name, value in one["model"].items():
            torch.testing.assert_close(vec["model"][name], value, rtol=0, atol=atol)
        assert vec["optimizer"]["param_groups"] == one["optimizer"]["param_groups"]
        for index, state in one["optimizer"]["state"].items():
            assert set(vec["optimizer"]["state"][index]) == set(state)
            for key, value in state.items():
                other = vec["optimizer"]["state"][index][key]
                if key == "step":
                    assert float(other) == float(value)
                    continue
                share = 2 * rho if key == "exp_avg_sq" else rho
                torch.testing.assert_close(other, value, rtol=0, atol=share * float(value.abs().max()))
        assert vec["scheduler"] == one["scheduler"] and vec["counters"] == one["counters"]


def assert_same_state(a, b) -> None:
    """Nested state dicts equal, tensors bit for bit (dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, z in zip(a, b):
            assert_same_state(x, z)
    else:
        assert a == b


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_group_optimizer_steps_each_member_as_its_own_does(variant):
    """One torch optimizer over the members' slices of the stacked parameters gives each member,
    bit for bit, what its own optimizer gives on the same gradients: with members at different
    step counts (one with optimizer state, one without yet) and learning rates, a step a member
    sits out (no change, no state, no step count), and an empty position in the group."""
    from types import SimpleNamespace

    from sisa.training.jobs import DataSpec
    from sisa.training.slices import make_training_state
    from sisa.training.vectorised import _group_optimizer, _stack, _step, _unstack

    settings = SETTINGS.replace(vectorise=3, **VARIANTS[variant])
    data = DataSpec((1, 8, 8), "uint8", 1 / 16, 10)
    rng = torch.Generator().manual_seed(0)
    own = [make_training_state(settings, data, shard) for shard in (0, 1)]
    grouped = [make_training_state(settings, data, shard) for shard in (0, 1)]
    for model, optimizer, _ in (own[0], grouped[0]):  # member 0: 3 steps and a lower lr
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
            optimizer.step()
        optimizer.param_groups[0]["lr"] *= 0.5
    members = [SimpleNamespace(position=position, training=training)
               for position, training in zip((0, 2), grouped)]  # position 1: no member
    stack = _stack(members, 3)
    for moving in ([0, 2], [2], [0, 2], [0]):
        grads = {name: torch.randn(p.shape, generator=rng) for name, p in stack.params.items()}
        _step(_group_optimizer(members, stack), stack, grads, moving)  # a fresh optimizer each step, as each epoch
        for k, (model, optimizer, _) in zip((0, 2), own):
            if k in moving:
                for name, p in model.named_parameters():
                    p.grad = grads[name][k].clone()
                optimizer.step()
    _unstack(members, stack)
    for (model, optimizer, _), (g_model, g_optimizer, _) in zip(own, grouped):
        assert_same_state(g_model.state_dict(), model.state_dict())
        assert_same_state(g_optimizer.state_dict(), optimizer.state_dict())
    assert grouped[0][1].param_groups[0]["lr"] == settings.lr * 0.5 != grouped[1][1].param_groups[0]["lr"]


def test_groups_are_fixed_by_shard_number(digits, tmp_path):
    train_workspace(tmp_path / "ws", digits, SETTINGS.replace(shards=5, slices=1, epochs=1, vectorise=2))
    manifest = json.loads((tmp_path / "ws" / "checkpoints" / "manifest.json").read_text())
    assert [r["shared_by"] for r in sorted(manifest["checkpoints"], key=lambda r: r["shard"])] == [2, 2, 2, 2, 1]

    class Job:
        def __init__(self, shard):
            self.shard, self.settings = shard, SETTINGS.replace(shards=5, vectorise=2)

    assert [[j.shard for j in unit] for unit in work_units([Job(4), Job(1), Job(2)])] == [[1], [2], [4]]
    assert [[j.shard for j in unit] for unit in work_units([Job(3), Job(0), Job(2), Job(1)])] == [[0, 1], [2, 3]]


def test_the_cli_trains_vectorised_and_audit_replays_it(tmp_path):
    done = run_cli("train", "--workdir", tmp_path / "ws", "--model", "cnn", "--shards", "2", "--slices", "2",
                   "--epochs", "2", "--vectorise", "2", "--json")
    assert done.code == 0, done.err
    assert done.json["accuracy"] > 0.5
    manifest = json.loads((tmp_path / "ws" / "shards" / "manifest.json").read_text())
    assert manifest["settings"]["vectorise"] == 2
    forget = sorted(shard_layout(tmp_path / "ws"))[:3]
    assert run_cli("delete", "--workdir", tmp_path / "ws", "--ids", ",".join(map(str, forget)), "--no-serve").code == 0
    audited = run_cli("audit", "--workdir", tmp_path / "ws", "--replay")
    assert audited.code == 0, audited.err + audited.out


def test_a_model_with_buffers_is_refused_before_anything_is_written(tmp_path):
    done = run_cli("train", "--workdir", tmp_path / "ws", "--model", "resnet18", "--vectorise", "2",
                   "--epochs", "1")
    assert done.code == 1  # a SisaError: the message, no traceback
    assert "vectorise" in done.err and "buffers" in done.err
    assert not (tmp_path / "ws").exists()
    bad = run_cli("train", "--workdir", tmp_path / "ws", "--vectorise", "0")
    assert bad.code == 1 and "vectorise must be a positive integer" in bad.err
    assert not (tmp_path / "ws").exists()
