"""Networks at the report's size and the two losses against their reference values."""

import math
from dataclasses import replace

import pytest
import torch

from MultiviewCRLLib.config import PRESETS, ModelConfig
from MultiviewCRLLib.runtime.networks import (
    Decoder,
    Encoder,
    SpatialEncoder,
    build_networks,
    count_parameters,
    residual_unit,
)
from MultiviewCRLLib.training.losses import BaurLoss, ContentInfoNCE, DenseInfoNCE, box_means_at, retrieval_top1
from MultiviewCRLLib.training.objectives import SpatialObjective


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


@pytest.mark.parametrize("name", ["tiny-spatial", "spatial-demo"])
def test_spatial_family_shapes_and_map(name):
    preset = PRESETS[name]
    encoder, decoder = build_networks(preset.model, preset.preprocessing.spatial_size)
    assert isinstance(encoder, SpatialEncoder)
    x = torch.randn(2, 1, *preset.preprocessing.spatial_size)
    z, content_map = encoder(x, with_content=True, views=torch.tensor([0, 1]))
    assert z.shape == (2, preset.model.latent_dim) and torch.equal(encoder.eval()(x, views=0), encoder(x, views=0))
    assert content_map.shape == (2, preset.model.map_channels, *preset.preprocessing.spatial_size)
    assert torch.allclose(content_map.sum(1), torch.ones(1), atol=1e-5)  # a softmax code at every voxel
    style = preset.model.style(z)
    assert decoder.decode(content_map, style).shape == x.shape
    assert decoder.decode(content_map, style[:1]).shape == x.shape  # one style (a cohort mean) for all


def test_content_infonce_trains_the_head_not_the_map():
    preset = PRESETS["tiny-spatial"]
    encoder, _ = build_networks(preset.model, preset.preprocessing.spatial_size)
    z = encoder(torch.randn(2, 1, *preset.preprocessing.spatial_size), views=0)
    preset.model.content(z).square().sum().backward()
    assert all(p.grad is None for p in (*encoder.local.parameters(), *encoder.unet.parameters()))
    assert all(p.grad is not None for p in encoder.content_head.parameters())


def test_spatial_decoder_draws_a_smooth_field_from_the_style():
    preset = PRESETS["tiny-spatial"]
    _, decoder = build_networks(preset.model, preset.preprocessing.spatial_size)
    flat = torch.full((1, preset.model.map_channels, *preset.preprocessing.spatial_size), 1 / preset.model.map_channels)
    torch.manual_seed(0)
    a, b = (
        decoder.decode(flat, torch.randn(1, preset.model.style_dim)),
        decoder.decode(flat, torch.randn(1, preset.model.style_dim)),
    )
    difference = (a - b)[0, 0]
    assert difference.std() > 0  # the style alone changes the image, and not as a constant
    assert difference.diff(dim=0).abs().mean() < difference.abs().mean()  # smoothly across space


@pytest.mark.parametrize("size", [3, 7])
def test_box_means_at_sampled_voxels_equal_a_dense_average_pool(size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 9, 11, 8)
    index = torch.cat([torch.tensor([[0, 9 * 11 * 8 - 1]] * 2), torch.randint(0, 9 * 11 * 8, (2, 30))], dim=1)
    dense = torch.nn.functional.avg_pool3d(x, size, stride=1, padding=size // 2)  # zeros beyond the edges
    expected = torch.gather(dense.flatten(2), 2, index[:, None].expand(-1, 3, -1))
    torch.testing.assert_close(box_means_at(x, index, size), expected, atol=1e-5, rtol=1e-5)


def test_dense_infonce_prefers_agreeing_maps():
    torch.manual_seed(0)
    loss = DenseInfoNCE(channels=4, locations=64, tau=0.1)
    logits = torch.randn(2, 4, 16, 16, 16) * 3
    same = torch.softmax(logits, 1)
    other = torch.softmax(torch.randn_like(logits) * 3, 1)
    mask = torch.ones(2, 1, 16, 16, 16)
    agreeing = torch.stack([loss(same, same, mask) for _ in range(5)]).mean()
    disagreeing = torch.stack([loss(same, other, mask) for _ in range(5)]).mean()
    assert agreeing < disagreeing
    assert math.log(2 * 64) - 1.0 < disagreeing  # unrelated maps stay near chance
    mask[:, :, :8] = 0  # locations are drawn inside the mask only
    index = torch.multinomial(mask.flatten(1) + 1e-6, 256, replacement=True)
    assert (index >= 8 * 16 * 16).float().mean() > 0.99


@pytest.mark.parametrize("width", [64, 256, 512])
def test_separable_mid_flow_block_has_about_20x_fewer_parameters(width):
    standard, separable = residual_unit(width, 16, False), residual_unit(width, 16, True)
    ratio = count_parameters(standard) / count_parameters(separable)
    assert 15 < ratio < 30
    x = torch.randn(1, width, 6, 6, 6)
    assert separable(x).shape == standard(x).shape == x.shape


@pytest.mark.parametrize("name", ["tiny", "tiny-spatial"])
def test_separable_option_in_both_families(name):
    preset = PRESETS[name]
    model = replace(preset.model, separable=True)
    assert ModelConfig.from_dict(model.to_dict()).separable
    encoder, decoder = build_networks(model, preset.preprocessing.spatial_size)
    standard = sum(count_parameters(m) for m in build_networks(preset.model, preset.preprocessing.spatial_size))
    assert count_parameters(encoder) + count_parameters(decoder) < standard
    assert any(m.groups > 1 for m in encoder.modules() if isinstance(m, torch.nn.Conv3d))  # depthwise convolutions
    x = torch.randn(2, 1, *preset.preprocessing.spatial_size)
    z, content = encoder(x, with_content=True, views=1)
    decoded = decoder.decode(content, model.style(z))
    assert decoded.shape == x.shape
    decoded.abs().mean().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_the_content_map_starts_as_one_tissue_code_for_both_contrasts():
    """The map starts by binning intensities in each view's tissue order, so a T1w and the T2w of
    the same tissues (the T2w's contrast reversed) begin with one code; outside the brain is channel 0."""
    preset = PRESETS["tiny-spatial"]
    encoder = build_networks(preset.model, preset.preprocessing.spatial_size)[0].eval()
    t1 = torch.rand(1, 1, *preset.preprocessing.spatial_size) * 4 - 2
    t1[..., :4] = 0  # outside the brain
    with torch.no_grad():
        _, (t1_map, t2_map) = encoder(torch.cat([t1, -t1]), with_content=True, views=torch.tensor([0, 1]))
        _, given_as_t1 = encoder(-t1, with_content=True, views=0)
    assert (t1_map.argmax(0) == t2_map.argmax(0)).float().mean() > 0.99
    # The view given matters: only the middle intensities keep their channel (all would, were it ignored).
    assert (given_as_t1[0].argmax(0) == t2_map.argmax(0))[..., 4:].float().mean() < 0.6
    assert (t1_map.argmax(0)[..., :4] == 0).all() and (t1_map.argmax(0)[..., 4:] != 0).all()
    with pytest.raises(ValueError, match="needs each image's view"):
        encoder(t1)


def test_a_map_input_gives_the_map_while_the_style_stays_the_views():
    preset = PRESETS["tiny-spatial"]
    encoder, _ = build_networks(preset.model, preset.preprocessing.spatial_size)
    encoder.eval()
    x, other = torch.randn(2, 2, 1, *preset.preprocessing.spatial_size)
    z, content = encoder(x, with_content=True, views=0)
    z_other, content_other = encoder(other, with_content=True, views=0)
    z_mixed, content_mixed = encoder(x, with_content=True, views=0, map_input=other)
    torch.testing.assert_close(content_mixed, content_other)
    torch.testing.assert_close(preset.model.style(z_mixed), preset.model.style(z))
    torch.testing.assert_close(preset.model.content(z_mixed), preset.model.content(z_other))


def test_a_map_input_leaves_the_style_running_statistics_to_the_views():
    preset = PRESETS["tiny-spatial"]
    x, other = torch.randn(2, 4, 1, *preset.preprocessing.spatial_size)
    statistics = []
    for map_input in (None, other * 3 + 1):
        torch.manual_seed(0)
        encoder, _ = build_networks(preset.model, preset.preprocessing.spatial_size)
        encoder(x, views=0, map_input=map_input)  # training mode: running statistics move
        statistics.append({k: v.clone() for k, v in encoder.style_encoder.state_dict().items() if "running" in k})
    assert statistics[0] and all(torch.equal(statistics[0][k], statistics[1][k]) for k in statistics[0])


def test_the_spatial_objective_reads_the_map_from_the_batchs_map_input():
    preset = PRESETS["tiny-spatial"]
    encoder, decoder = build_networks(preset.model, preset.preprocessing.spatial_size)
    objective = SpatialObjective(preset.model, preset.train, DenseInfoNCE(preset.model.map_channels, 32))
    x = torch.randn(4, 1, *preset.preprocessing.spatial_size)
    mask = torch.ones(2, 1, *preset.preprocessing.spatial_size)
    batch = {"t1": x[:2], "t2": x[2:], "mask_t1": mask, "mask_t2": mask}

    def reconstruction(extra: dict) -> float:
        torch.manual_seed(0)  # the same flips and dense samples each time
        return objective(encoder, decoder, x, {**batch, **extra}, step=0).reconstruction.item()

    assert reconstruction({"map_input": x}) == pytest.approx(reconstruction({}), rel=1e-5)
    assert reconstruction({"map_input": torch.randn_like(x)}) != pytest.approx(reconstruction({}), rel=1e-3)
