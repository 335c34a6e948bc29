"""Model registry: each entry builds a fresh ``nn.Module`` for an input shape and class count.

torch is imported by the builders, not by this module: settings validate a model's name
against the registry, and ``import sisa; sisa.Settings()`` must stay free of torch.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from sisa.errors import ModelChanged, SisaError
from sisa.registry import Registry

if TYPE_CHECKING:
    from torch import nn

ModelFactory = Callable[[Sequence[int], int], "nn.Module"]
"""(input shape without the batch axis, number of classes) -> module returning logits."""

MODELS: Registry[ModelFactory] = Registry("model")


def _features(shape: Sequence[int]) -> int:
    n = 1
    for dim in shape:
        n *= int(dim)
    return n


def _image_shape(name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise SisaError(f"model {name!r} needs image data (channels, height, width); "
                        f"this data has rows of {_features(shape)} features. Use logreg or mlp.")
    return int(shape[0]), int(shape[1]), int(shape[2])


@MODELS.register("logreg")
def logreg(shape: Sequence[int], n_classes: int) -> nn.Module:
    """Multinomial logistic regression on the flattened input."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(_features(shape), n_classes))


@MODELS.register("mlp")
def mlp(shape: Sequence[int], n_classes: int) -> nn.Module:
    """Two hidden layers (256, 128) with ReLU, on the flattened input."""
    from torch import nn

    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_features(shape), 256), nn.ReLU(),
        nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, n_classes),
    )


@MODELS.register("cnn")
def cnn(shape: Sequence[int], n_classes: int) -> nn.Module:
    """A small conv net for small images: two conv+pool blocks, then two linear layers."""
    from torch import nn

    channels, height, width = _image_shape("cnn", shape)
    flat = 64 * (height // 4) * (width // 4)
    if flat == 0:
        raise SisaError(f"model 'cnn' needs images of at least 4x4 pixels, got {height}x{width}")
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 128), nn.ReLU(),
        nn.Linear(128, n_classes),
    )


@MODELS.register("resnet18")
def resnet18(shape: Sequence[int], n_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3, stride-1 stem and no max-pool, for small images."""
    from torch import nn
    from torchvision.models import resnet18 as tv_resnet18

    channels, _, _ = _image_shape("resnet18", shape)
    model = tv_resnet18(weights=None, num_classes=n_classes)
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, shape: Sequence[int], n_classes: int) -> nn.Module:
    """Build model ``name`` (a registered name, or ``package.module:factory``) for rows of
    ``shape`` and ``n_classes`` classes.

    >>> import torch
    >>> build_model("logreg", (64,), 10)(torch.zeros(2, 64)).shape
    torch.Size([2, 10])
    """
    if is_custom(name):
        return _build_custom(name, tuple(shape), n_classes)
    if name not in MODELS:
        raise SisaError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}, or name a model of your "
                        f"own as package.module:factory (a model registered from Python exists only in the "
                        f"process that registered it)")
    return MODELS.get(name)(tuple(shape), n_classes)


# -------------------------------------------------------------------------- models of one's own

CUSTOM_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
"""``package.module:factory``, where ``factory(input_shape, n_classes)`` returns an nn.Module."""


def is_custom(name: str) -> bool:
    return ":" in name


def check_name(name: str) -> None:
    """Refuse a model name that is neither registered nor ``package.module:factory`` (without
    importing anything: settings stay free of torch)."""
    if name in MODELS or (is_custom(name) and CUSTOM_NAME.fullmatch(name)):
        return
    raise SisaError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}, or name a model of your own "
                    f"as package.module:factory")


def _import(module_name: str):
    """Import the module of a custom model: from sys.path, else from the current folder (as
    ``python -m`` would; the ``sisa`` script's own folder is on sys.path, the user's is not)."""
    try:
        return _import_once(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise SisaError(f"cannot import the model module {module_name!r}: {exc}") from None
    sys.path.append(os.getcwd())
    try:
        return _import_once(module_name)
    except ModuleNotFoundError as exc:
        raise SisaError(f"cannot import the model module {module_name!r} ({exc}); run sisa from the folder "
                        f"that holds it, or put that folder on PYTHONPATH") from None


def _import_once(module_name: str):
    """``import_module``, with a failure of the module's own code (or its ``sys.exit``) as a
    message; a module not found is left to the caller."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise
    except (Exception, SystemExit) as exc:
        raise SisaError(f"importing the model module {module_name!r} failed: {type(exc).__name__}: {exc}") from None


def _factory(name: str):
    module_name, _, attr = name.partition(":")
    factory = getattr(_import(module_name), attr, None)
    if not callable(factory):
        raise SisaError(f"model {name!r}: module {module_name!r} has no function {attr!r}")
    return factory


def _build_custom(name: str, shape: tuple[int, ...], n_classes: int) -> nn.Module:
    from torch import nn

    try:
        model = _factory(name)(shape, n_classes)
    except SisaError:
        raise
    except Exception as exc:
        raise SisaError(f"model {name!r} failed to build for rows of shape {shape} and {n_classes} classes: "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SisaError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def model_source(name: str) -> Optional[dict[str, str]]:
    """Where a custom model's code is: its module's file, that file's sha256, and the folder
    its import starts from (what a worker puts on sys.path). None for a registered model."""
    if not is_custom(name):
        return None
    path, root = _located(name)
    return {"model": name, "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "root": str(root)}


def import_root(name: str) -> Optional[str]:
    """The folder a custom model's import starts from (None for a registered model)."""
    return str(_located(name)[1]) if is_custom(name) else None


def _located(name: str) -> tuple[Path, Path]:
    """A custom model's module file, and the sys.path folder its import starts from."""
    module_name = name.partition(":")[0]
    file = getattr(_import(module_name), "__file__", None)
    if not file:
        raise SisaError(f"model {name!r}: module {module_name!r} has no source file to record")
    path = Path(file).resolve()
    package = path.parent if path.name == "__init__.py" else path
    return path, package.parents[len(module_name.split(".")) - 1]


def check_output(model: nn.Module, name: str, shape: Sequence[int], n_classes: int) -> None:
    """Refuse a model that cannot be trained on these rows: no parameters, or not one logit
    per class for a batch of rows of ``shape`` (found before anything is written)."""
    import torch

    if not any(True for _ in model.parameters()):
        raise SisaError(f"model {name!r} has no parameters to train")
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape))
    except Exception as exc:
        raise SisaError(f"model {name!r} fails on a batch of rows of shape {tuple(shape)}: "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_classes):
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SisaError(f"model {name!r} gives {got} per row; it must give one logit per class ({n_classes} "
                        f"classes)")


def check_source(name: str, recorded: Optional[dict]) -> None:
    """Refuse a model of one's own whose source file differs from the ``recorded`` one: the
    checkpoints were trained by other code (retraining would not give their bits, and
    inference would run other code on them)."""
    if not recorded:
        return
    current = model_source(name)
    if current is None or current["sha256"] == recorded.get("sha256"):
        return
    raise ModelChanged(
        f"the source of model {name!r} changed since the workspace recorded it: {current['file']} has sha256 "
        f"{current['sha256'][:12]}..., the workspace recorded {str(recorded.get('sha256'))[:12]}... "
        f"({recorded.get('file')})",
        "Its checkpoints were trained by the recorded code: retraining with other code forgets the rows but "
        "is no longer bit-identical to training without them, and predicting runs other code on them. Restore "
        "the file, or pass --accept-model-change (delete, add, revert, recover) to record the new source")


def add_import_root(root: Optional[str]) -> None:
    """Let this process import a custom model from ``root`` (a worker, given its driver's)."""
    if root and root not in sys.path:
        sys.path.append(root)
