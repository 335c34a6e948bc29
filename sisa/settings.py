"""Training settings: a frozen, validated dataclass saved into every workspace."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sisa.errors import SisaError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine")
EPOCH_SCHEDULES = ("recalibrated", "uniform")
DEVICES = ("cpu", "cuda")
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"model": "mlp"},
    "tables": {"model": "mlp"},
    # Fashion-MNIST's lr: at S = 8, R = 4 (cnn, 5 epochs) Adam at 3e-3 lifted the ensemble from
    # 0.8751 to 0.8927 and the monolithic model from 0.9089 to 0.9120, against 1e-3
    # (benchmarks/results/tuning-fashion-mnist-cnn.md); the mlp ensemble gained 0.7 points too.
    "fashion-mnist": {"model": "cnn", "epochs": 5, "batch_size": 64, "lr": 3e-3},
    "mnist": {"model": "cnn", "epochs": 5, "batch_size": 64},
    "cifar10": {"model": "cnn", "epochs": 10, "batch_size": 64},
}
"""Settings each data source trains with unless a flag says otherwise (then Settings' own)."""


def default_for(name: str) -> str:
    """``name``'s default per data source, for help texts: "30; fashion-mnist 5, ..."."""
    base = getattr(Settings, name)
    special = ", ".join(f"{source} {values[name]:g}" if isinstance(values[name], float) else
                        f"{source} {values[name]}"
                        for source, values in DATASET_DEFAULTS.items() if name in values and values[name] != base)
    text = f"{base:g}" if isinstance(base, float) else str(base)
    return text + (f"; {special}" if special else "")


MAX_COUNT = 1_000_000
"""Upper bound for shards, slices, epochs and the like: far beyond any real setting, and low
enough that nothing is allocated for an absurd value before it is refused."""


@dataclass(frozen=True)
class Settings:
    """Everything that determines the trained ensemble, besides the set of training rows.

    Two workspaces trained on the same rows with equal settings hold bit-identical
    checkpoints (on the same numerics environment: torch version, CPU capability, threads).

    Args:
        shards: number of shards S; each trains its own model in isolation.
        slices: number of slices R per shard; a checkpoint is kept after each.
        model: a name from :data:`sisa.models.MODELS`, or ``package.module:factory`` for a
            model of one's own (``factory(input_shape, n_classes)`` returns an ``nn.Module``).
        epochs: epochs of an unsliced shard. With ``epoch_schedule="recalibrated"`` (SISA's
            recalibration) the slices share ``2R/(R+1) * epochs`` epochs, so slicing costs
            no extra sample-passes; with ``"uniform"`` every slice trains ``epochs`` epochs.
        batch_size: mini-batch size.
        lr: learning rate.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9).
        weight_decay: L2 penalty passed to the optimizer.
        scheduler: ``none`` or ``cosine`` (cosine decay over all epochs of a shard).
        seed: seeds the partition, the initialisation and every shuffle.
        threads: torch intra-op threads while training; part of the numerics environment.
        device: ``cpu`` or ``cuda``.
        aggregation: a name from :data:`sisa.aggregation.AGGREGATORS`.
        vectorise: shards trained at once as one vectorised model (torch.func), in fixed
            groups of this many (see :mod:`sisa.training.vectorised`); 1 trains one model at a time.
            For accelerators; it changes the trained bits, so deletions retrain the same way.

    >>> Settings(shards=2, slices=3).shards
    2
    """

    shards: int = 5
    slices: int = 4
    model: str = "mlp"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "none"
    epoch_schedule: str = "recalibrated"
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    aggregation: str = "mean-proba"
    vectorise: int = 1

    def __post_init__(self) -> None:
        from sisa.aggregation import AGGREGATORS
        from sisa.models import check_name

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SisaError(f"{name} must be a positive integer, got {value!r}")

        for name in ("shards", "slices", "epochs", "batch_size", "threads", "vectorise"):
            positive_int(name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise SisaError(f"seed must be an integer from 0 to 2^63 - 1, got {str(self.seed)[:40]}")
        for name in ("shards", "slices", "vectorise", "threads"):
            if getattr(self, name) > MAX_COUNT:
                raise SisaError(f"{name} must be at most {MAX_COUNT}, got {str(getattr(self, name))[:40]}")
        if self.epochs > MAX_COUNT or self.batch_size > 2**31 - 1:
            raise SisaError(f"epochs must be at most {MAX_COUNT} and batch_size at most 2^31 - 1")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise SisaError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise SisaError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                              ("epoch_schedule", EPOCH_SCHEDULES), ("device", DEVICES),
                              ("aggregation", tuple(AGGREGATORS))):
            if getattr(self, name) not in allowed:
                raise SisaError(f"unknown {name} {getattr(self, name)!r}; "
                                f"choose one of: {', '.join(allowed)}")
        if not isinstance(self.model, str):
            raise SisaError(f"model must be a name, got {self.model!r}")
        check_name(self.model)

    def slice_epochs(self) -> list[int]:
        """Epochs trained on each slice (slice r trains on slices 0..r).

        Recalibrated as in SISA's reference code: ``e' = 2R/(R+1) * e`` epochs in total, and
        slice i gets ``int((i+1) e'/R) - int(i e'/R)``, so the sample-passes add up to those
        of an unsliced shard trained for ``e`` epochs; but every slice gets at least one epoch,
        so that every row is trained on. When ``e' < R`` (``e < (R+1)/2``) that floor costs
        more sample-passes than the unsliced shard's ``e`` epochs: R epochs in all.

        >>> Settings(slices=4, epochs=10).slice_epochs()
        [4, 4, 4, 4]
        >>> Settings(slices=1, epochs=10).slice_epochs()
        [10]
        >>> Settings(slices=4, epochs=1).slice_epochs()  # e' = 1.6 would give [0, 0, 1, 0]
        [1, 1, 1, 1]
        """
        r = self.slices
        if self.epoch_schedule == "uniform":
            return [self.epochs] * r
        total = 2 * r * self.epochs / (r + 1)
        # Rounded so that float error in e' never drops a whole epoch (2R/(R+1)*e is rational).
        return [max(1, int(round((i + 1) * total / r, 9)) - int(round(i * total / r, 9))) for i in range(r)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Settings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SisaError(f"unknown settings in workspace: {', '.join(sorted(unknown))}")
        return cls(**data)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)
