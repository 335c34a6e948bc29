"""Model registry: each entry builds a fresh ``nn.Module`` for an input shape and class count.

torch is imported by the builders, not by this module: settings validate a model's name
against the registry, and ``import sisa; sisa.Settings()`` must stay free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from sisa.errors import SisaError
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
    """Build model ``name`` for rows of ``shape`` and ``n_classes`` classes.

    >>> import torch
    >>> build_model("logreg", (64,), 10)(torch.zeros(2, 64)).shape
    torch.Size([2, 10])
    """
    return MODELS.get(name)(tuple(shape), n_classes)
