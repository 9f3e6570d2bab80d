"""Networks at the report's size and the two losses against their reference values."""

import math

import pytest
import torch

from MultiviewCRLLib.config import PRESETS, ModelConfig
from MultiviewCRLLib.training.losses import BaurLoss, ContentInfoNCE, retrieval_top1
from MultiviewCRLLib.runtime.networks import Decoder, Encoder, count_parameters


def test_seed_preset_matches_the_report_size_and_shapes():
    preset = PRESETS["seed"]
    encoder, decoder = Encoder(preset.model), Decoder(preset.model, preset.preprocessing.spatial_size)
    assert abs(count_parameters(encoder) / 15.5e6 - 1) <= 0.10
    assert abs(count_parameters(decoder) / 27.8e6 - 1) <= 0.10
    torch.manual_seed(0)
    with torch.no_grad():
        z = encoder.eval()(torch.randn(1, 1, *preset.preprocessing.spatial_size))
        assert z.shape == (1, 512)
        assert decoder(z).shape == (1, 1, 91, 109, 91)


@pytest.mark.parametrize("name", ["demo", "tiny"])
def test_presets_round_trip_shapes(name):
    preset = PRESETS[name]
    encoder, decoder = Encoder(preset.model), Decoder(preset.model, preset.preprocessing.spatial_size)
    x = torch.randn(2, 1, *preset.preprocessing.spatial_size)
    z = encoder(x)
    assert z.shape == (2, preset.model.latent_dim)
    assert (z < 0).any()  # a linear head: the latent is signed, unlike a ReLU + pooling end
    assert decoder(z).shape == x.shape


def test_content_dim_must_leave_style():
    with pytest.raises(ValueError, match="content_dim"):
        ModelConfig(latent_dim=8, content_dim=8)


def regular_simplex(batch: int, extra_dims: int = 3) -> torch.Tensor:
    points = torch.eye(batch) - 1.0 / batch
    return torch.cat([points / points.norm(dim=1, keepdim=True), torch.zeros(batch, extra_dims)], 1)


@pytest.mark.parametrize("batch,tau,floor", [(2, 1.0, 0.240), (4, 1.0, 0.948), (4, 0.5, 0.349), (8, 1.0, 1.698)])
def test_infonce_reference_values(batch, tau, floor):
    loss = ContentInfoNCE(content_dim=batch, tau=tau)
    same = torch.ones(batch, batch + 3)
    assert loss(same, same).item() == pytest.approx(math.log(2 * batch - 1), abs=1e-5)
    z = regular_simplex(batch)
    formula = math.log(1 + 2 * (batch - 1) * math.exp(-batch / ((batch - 1) * tau)))
    assert loss(z, z).item() == pytest.approx(formula, abs=1e-5)
    assert loss(z, z).item() == pytest.approx(floor, abs=1e-3)


def test_infonce_ignores_style_dims():
    torch.manual_seed(0)
    z1 = torch.randn(4, 10, requires_grad=True)
    z2 = torch.randn(4, 10, requires_grad=True)
    loss = ContentInfoNCE(content_dim=6)
    loss(z1, z2).backward()
    assert z1.grad[:, 6:].abs().max() == 0 and z2.grad[:, 6:].abs().max() == 0
    assert z1.grad[:, :6].abs().max() > 0
    shuffled_style = torch.cat([z1[:, :6], torch.randn(4, 4)], 1)
    assert loss(shuffled_style, z2).item() == pytest.approx(loss(z1, z2).item())


def test_retrieval_top1():
    z = regular_simplex(4)
    assert retrieval_top1(z, z, 4) == 1.0
    flipped = torch.cat([z[:, :4], torch.zeros(4, 3)], 1)
    assert retrieval_top1(z, flipped.roll(1, 0), 4) == 0.0


def test_baur_loss_definition():
    torch.manual_seed(0)
    x, x_hat = torch.randn(3, 1, 4, 5, 6), torch.randn(3, 1, 4, 5, 6)
    d = (x_hat - x).flatten(1) + 1e-6
    expected = (d.abs().sum(1) + d.pow(2).sum(1).sqrt()).mean()
    assert BaurLoss()(x_hat, x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_baur_loss_is_float32_under_autocast():
    torch.manual_seed(0)
    x, x_hat = torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 8, 8, 8)
    reference = BaurLoss()(x_hat, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = BaurLoss()(x_hat, x)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)
