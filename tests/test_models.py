import pytest
import torch

from sisa.errors import SisaError
from sisa.models import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_model_maps_images_to_logits(name, shape):
    model = build_model(name, shape, 7)
    model.eval()
    assert model(torch.zeros((2,) + shape)).shape == (2, 7)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_flat_models_take_tables(name):
    assert build_model(name, (5,), 3)(torch.zeros(4, 5)).shape == (4, 3)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_image_models_refuse_tables(name):
    with pytest.raises(SisaError, match="needs image data"):
        build_model(name, (5,), 3)


def test_unknown_model():
    with pytest.raises(SisaError, match="unknown model 'vit'"):
        build_model("vit", (1, 8, 8), 10)
