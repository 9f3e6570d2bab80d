"""Restoring a low-resolution or thick-slice view on a finer grid, alone or guided by the other view.

A restoration network reads the low-resolution view interpolated onto the target grid (the grid
of the guide view, or the view's own model grid) and adds a learnt residual to it. Guided, it
also reads the other view's image and that view's content map from the model bundle (computed on
the bundle's grid and interpolated onto the target grid): where the tissues are, at the guide's
resolution.

Networks live in the bundle folder: ``restoration.pt`` (state dicts, plain tensors) and
``restoration.json`` (their settings); loading never executes code from them.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet
from monai.transforms.utils_morphological_ops import erode
from torch import nn
from torch.nn import functional as F

from ..config import VIEWS, PreprocessingConfig
from .alignment import from_sitk, to_sitk
from .precision import inference_precision, precision_policy
from .storage import atomic_torch_save, atomic_write_json

RESTORATION_WEIGHTS = "restoration.pt"
RESTORATION_SETTINGS = "restoration.json"
GUIDES = ("unguided", "guided")
# A view needs restoring when its coarsest axis is this much coarser than the target grid's.
COARSER_BY = 1.25
# The grid views are restored onto: the report's preprocessing (2 mm), whatever the bundle's grid.
RESTORATION_GRID = PreprocessingConfig()
# A view whose coarsest axis (at least the restoration grid's) is this much coarser than its finest
# is a stack of slices; thick ones from THICK_SLICES_MM.
SLAB_ANISOTROPY = 1.5
THICK_SLICES_MM = 4.5
ACQUISITION_KINDS = (f"slices under {THICK_SLICES_MM:g} mm", "thick slices", "coarse voxels")
# The share of the guide's brain a view may have no data in before the notes say so, and the share
# it must have data in: the rest of a restoration is drawn from the guide alone.
UNCOVERED_NOTED = 0.01
MIN_COVERED_SHARE = 0.5
# The guide check leaves out the brain's outer rim, where the guide's mask ends both restorations.
GUIDE_CHECK_EDGE_MM = 6.0
# A voxel's footprint as a Gaussian: its full width at half maximum is the voxel's size.
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))


class RestorationError(ValueError):
    """An input that cannot, or need not, be restored; the message names it."""


class GuideMismatch(RestorationError):
    """A guide that does not fit the low-resolution view: another person's, by the guide check.
    ``alone`` is the view restored without it."""

    def __init__(self, message: str, alone: Restored | None = None):
        super().__init__(message)
        self.alone = alone


@dataclass(frozen=True)
class RestorationConfig:
    """One restoration network: ``view`` it restores (a VIEWS name), ``guided`` whether it reads the
    other view, ``map_channels`` of the bundle's content map it then reads, U-Net ``channels`` and
    ``norm`` (a MONAI norm name, or None)."""

    view: str = "T2w"
    guided: bool = True
    map_channels: int = 0
    channels: tuple[int, ...] = (16, 32, 64)
    # None: instance norm takes its statistics over a 32^3 training patch and over the whole
    # volume when restoring, and that mismatch cost 0.6 dB on the test subjects.
    norm: str | None = None

    @property
    def in_channels(self) -> int:
        return 1 + (1 + self.map_channels if self.guided else 0)

    @property
    def name(self) -> str:
        return GUIDES[self.guided]


class RestorationNetwork(nn.Module):
    """(B, in_channels, X, Y, Z): the interpolated low-resolution view, then (guided) the guide image
    and its content map -> (B, 1, X, Y, Z): the view restored, the interpolation plus a residual."""

    def __init__(self, config: RestorationConfig):
        super().__init__()
        self.config = config
        strides = (2,) * (len(config.channels) - 1)
        self.unet = UNet(3, config.in_channels, 1, config.channels, strides, num_res_units=1, norm=config.norm)
        self.multiple = 2 ** len(strides)  # inputs are padded to it, so every level halves exactly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        padding = [p for n in reversed(size) for p in (0, -n % self.multiple)]
        residual = self.unet(F.pad(x, padding))[..., : size[0], : size[1], : size[2]]
        return x[:, :1] + residual


def guide_channels(bundle, guide: torch.Tensor, mask: torch.Tensor, spacing_mm: float, view: str) -> torch.Tensor:
    """The guide image (1, X, Y, Z) of ``view`` on a ``spacing_mm`` grid and its brain mask ->
    (1 + K, X, Y, Z): the image and the bundle's content map of it, computed at the bundle's grid
    spacing (the map is convolutional) and interpolated back."""
    encoder = bundle.encoder
    device = next(encoder.parameters()).device
    scale = spacing_mm / float(bundle.preprocessing.spacing_mm[0])
    coarse = [max(1, round(n * scale)) for n in guide.shape[1:]]
    x, inside = guide[None].float().to(device), mask[None].float().to(device)
    coarse_image = F.interpolate(x, size=coarse, mode="area") * (F.interpolate(inside, size=coarse, mode="area") > 0.5)
    with inference_precision(encoder):
        _, content = encoder(precision_policy(device).place(coarse_image), with_content=True, views=VIEWS.index(view))
    content_map = F.interpolate(content.float(), size=tuple(guide.shape[1:]), mode="trilinear", align_corners=False)
    return torch.cat([x, content_map * inside], dim=1)[0].cpu()


INTERPOLATORS = {"linear": sitk.sitkLinear, "B-spline": sitk.sitkBSpline}


def onto_grid(array: np.ndarray, affine: np.ndarray, grid: MetaTensor, interpolator: str = "linear") -> torch.Tensor:
    """An acquisition [i, j, k] with its RAS affine resampled onto a preprocessed grid (a
    (1, X, Y, Z) MetaTensor) in world coordinates (the views of one session share them):
    (1, X, Y, Z) float32."""
    fixed = to_sitk(np.zeros(grid.shape[1:], dtype=np.float32), np.asarray(grid.affine))
    moved = sitk.Resample(to_sitk(array, affine), fixed, sitk.Transform(), INTERPOLATORS[interpolator], 0.0)
    return torch.from_numpy(np.ascontiguousarray(from_sitk(moved)[0]))[None].float()


def standardised(volume: torch.Tensor, mask: torch.Tensor, measured: torch.Tensor | None = None) -> torch.Tensor:
    """z-scored by the mean and spread of the voxels inside ``measured`` (default ``mask``; the
    preprocessing's normalisation), zero outside ``mask``."""
    values = volume[(mask if measured is None else measured) > 0.5]
    return (volume - values.mean()) / values.std().clamp_min(1e-6) * (mask > 0.5)


def with_data(interpolated: torch.Tensor) -> torch.Tensor:
    """(1, X, Y, Z) a view resampled onto a grid, exactly zero where the grid lies outside its field
    of view (``onto_grid``) or outside its own brain mask -> (1, X, Y, Z): 1 where it has data, else 0."""
    return (interpolated != 0).float()


def network_input(lowres: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
    """(1, X, Y, Z) interpolated view and the (1 + K, X, Y, Z) guide channels or None -> (1, C, X, Y, Z)."""
    parts = [lowres] if guide is None else [lowres, guide]
    return torch.cat(parts, dim=0)[None].float()


def restore(network: RestorationNetwork, lowres: torch.Tensor, guide: torch.Tensor | None, mask: torch.Tensor):
    """The restored view (1, X, Y, Z), float32, zero outside ``mask`` (1, X, Y, Z)."""
    device = next(network.parameters()).device
    x = precision_policy(device).place(network_input(lowres, guide))
    with inference_precision(network):
        restored = network(x).float()
    return restored[0].cpu() * mask


def is_coarse(lowres_spacing, target_spacing=RESTORATION_GRID.spacing_mm) -> bool:
    """Whether voxels of ``lowres_spacing`` (mm per axis) are much coarser than the target grid's."""
    return float(np.max(lowres_spacing)) >= COARSER_BY * float(np.max(target_spacing))


def needs_restoration(lowres_spacing, target_spacing, name: str) -> None:
    """Raise RestorationError when the view ``name`` is not coarser than the target grid."""
    if not is_coarse(lowres_spacing, target_spacing):
        target = float(np.max(target_spacing))
        raise RestorationError(
            f"{name}: its voxels ({' x '.join(f'{s:.2f}' for s in lowres_spacing)} mm) are not coarser than "
            f"the {target:.2f} mm grid it would be restored onto; it needs no restoration"
        )


def save_restoration(folder: Path, networks: dict[str, RestorationNetwork], extra: dict | None = None) -> None:
    """Write ``networks`` (by GUIDES name) into a bundle folder, beside what is there."""
    folder = Path(folder)
    states = {name: {k: v.detach().cpu() for k, v in net.state_dict().items()} for name, net in networks.items()}
    atomic_torch_save(folder / RESTORATION_WEIGHTS, states)
    settings = {name: asdict(net.config) for name, net in networks.items()}
    atomic_write_json(folder / RESTORATION_SETTINGS, {**(extra or {}), "networks": settings})


def save_guide_check(folder: Path, calibration: dict) -> None:
    """Write the guide check's ``calibration`` (its ``thresholds`` by GUIDE_CHECK_THRESHOLDS name and
    how they were found) into a bundle folder's restoration settings."""
    path = Path(folder) / RESTORATION_SETTINGS
    atomic_write_json(path, {**json.loads(path.read_text()), "guide_check": calibration})


def load_restoration(folder: Path, device="cpu") -> dict[str, RestorationNetwork]:
    """The restoration networks of a bundle folder by GUIDES name; {} when it has none."""
    folder = Path(folder)
    if not (folder / RESTORATION_WEIGHTS).is_file():
        return {}
    try:
        settings = json.loads((folder / RESTORATION_SETTINGS).read_text())["networks"]
        states = torch.load(folder / RESTORATION_WEIGHTS, map_location="cpu", weights_only=True)
        networks = {}
        for name, values in settings.items():
            # Settings written before ``norm`` was saved are of networks with instance norm.
            config = RestorationConfig(**{"norm": "instance", **values, "channels": tuple(values["channels"])})
            network = RestorationNetwork(config)
            network.load_state_dict(states[name])
            networks[name] = network.to(device, memory_format=precision_policy(torch.device(device)).memory_format)
            networks[name].eval()
    except (OSError, json.JSONDecodeError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as err:
        raise RestorationError(
            f"model bundle {folder}: {RESTORATION_WEIGHTS} or {RESTORATION_SETTINGS} refused "
            f"({type(err).__name__}: {err})"
        ) from err
    return networks


def uncovered_words(record: dict, names: dict[str, str], guided: bool = True) -> str | None:
    """What a restoration's ``record`` says of the share of the guide's brain the view had no data
    in, worded with ``names`` {"lowres", "guide"}; None below ``UNCOVERED_NOTED`` or unmeasured.
    ``guided``: whether the guide drew that part (not when the guide check refused it)."""
    share = record.get("uncovered_share")
    if share is None or share < UNCOVERED_NOTED:
        return None
    there = f"drawn from the anatomy of {names['guide']}" if guided else "guessed by the restoration alone"
    return (
        f"{names['lowres']} has no data in {share:.0%} of the brain of {names['guide']} (its field of view ends "
        f"inside it, or its brain was cut tighter); there the restoration is {there}"
    )


def threshold_name(kind: str, prepared: bool) -> str:
    """The name of the guide check's threshold for an ACQUISITION_KINDS ``kind`` of pair as acquired
    or ``prepared`` from raw scans: the preparation's resampling and the pair's residual
    misregistration raise one person's figures, so prepared pairs have thresholds of their own."""
    return f"{kind}, prepared from raw scans" if prepared else kind


GUIDE_CHECK_THRESHOLDS = tuple(
    threshold_name(kind, prepared) for prepared in (False, True) for kind in ACQUISITION_KINDS
)


def load_guide_check(folder: Path) -> dict[str, float]:
    """The guide check's thresholds of a bundle folder, by GUIDE_CHECK_THRESHOLDS name ({} when none)."""
    path = Path(folder) / RESTORATION_SETTINGS
    if not path.is_file():
        return {}
    try:
        thresholds = json.loads(path.read_text()).get("guide_check", {}).get("thresholds", {})
        return {name: float(thresholds[name]) for name in GUIDE_CHECK_THRESHOLDS if name in thresholds}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise RestorationError(
            f"model bundle {folder}: the guide check in {RESTORATION_SETTINGS} refused ({err})"
        ) from err


@dataclass
class Restored:
    """A restored view: ``image`` (1, X, Y, Z) on the restoration grid (``image.affine`` places it
    in the inputs' world space, so it overlays them), and what was done, for the record."""

    image: MetaTensor
    record: dict


def acquisition_kind(spacing, grid_mm: float = max(RESTORATION_GRID.spacing_mm)) -> str:
    """``ACQUISITION_KINDS``' name for voxels of ``spacing`` (mm per axis) restored onto a grid of
    ``grid_mm``: slices thinner or thicker than THICK_SLICES_MM, or coarse voxels (as k-space
    truncation gives). Detail finer than the grid counts as the grid's."""
    # To the 0.01 mm a header states: a resampled affine's rounding must not move 3 mm slices
    # (exactly SLAB_ANISOTROPY times a 2 mm grid) between kinds.
    effective = np.maximum(np.round(np.asarray(spacing, dtype=float), 2), grid_mm)
    if effective.max() < SLAB_ANISOTROPY * effective.min():
        return ACQUISITION_KINDS[2]
    return ACQUISITION_KINDS[int(effective.max() >= THICK_SLICES_MM)]


def acquisition_blur(volume: torch.Tensor, grid_affine, acquired_axes) -> torch.Tensor:
    """(1, X, Y, Z) on a grid (RAS ``grid_affine``) -> the same, smoothed to the acquisition's
    voxels: ``acquired_axes`` (3 x 3, its voxel edges in mm as columns, in the grid's world), each
    grid axis taking the voxel size of the acquired axis nearest to it, as a Gaussian footprint
    beyond the grid's own voxel."""
    grid = np.asarray(grid_affine, dtype=float)[:3, :3]
    grid_mm = np.linalg.norm(grid, axis=0)
    acquired_mm = np.linalg.norm(acquired_axes, axis=0)
    cosines = np.abs((grid / grid_mm).T @ (np.asarray(acquired_axes) / acquired_mm))  # (grid axis, acquired axis)
    along = acquired_mm[np.argmax(cosines, axis=1)]
    sigma_mm = np.sqrt(np.maximum(along**2 - grid_mm**2, 0.0)) / FWHM_PER_SIGMA
    image = to_sitk(volume[0].numpy(), np.asarray(grid_affine))
    smoothed = sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigma_mm])
    return torch.from_numpy(np.ascontiguousarray(from_sitk(smoothed)[0]))[None].float()


def guide_disagreement(guided, alone, acquired, mask, grid_affine, acquired_axes) -> float:
    """How far the guide moves the restoration, in units of what the view's own data leave open: the
    mean absolute difference between the guided and the unguided restoration over the unguided
    one's mean absolute difference from the acquisition, inside ``mask`` less its outer
    ``GUIDE_CHECK_EDGE_MM`` (where both end at the guide's brain outline), each (1, X, Y, Z) in the
    view's standardised units, all smoothed to the acquisition's voxels. With the same person's
    guide the guided restoration stays within what the data leave open; another person's anatomy
    moves it further, all over the brain. Absolute, not squared, differences: where a prepared
    pair's brain mask reaches past the brain, the guide's skull moves a thin rim a long way, and
    that rim must weigh as the few voxels it is. Misfits to the data alone would not do: with
    another person's guide a restoration can lose contrast, and smoothed it then fits the data no
    worse."""
    edge = int(round(GUIDE_CHECK_EDGE_MM / float(np.linalg.norm(np.asarray(grid_affine)[:3, :3], axis=0).min())))
    inside = erode((mask > 0.5).float()[None], 2 * edge + 1)[0] > 0.5
    data, guided_blurred, alone_blurred = (
        acquisition_blur(volume, grid_affine, acquired_axes)[inside] for volume in (acquired, guided, alone)
    )
    moved = float((guided_blurred - alone_blurred).abs().mean())
    return moved / max(float((alone_blurred - data).abs().mean()), 1e-6)


def restore_scan(
    bundle,
    lowres: tuple[np.ndarray, np.ndarray],
    guide: tuple[np.ndarray, np.ndarray] | None = None,
    names: dict[str, str] | None = None,
    grid: PreprocessingConfig | None = None,
    acquired_axes=None,
    prepared: bool = False,
) -> Restored:
    """Restore the low-resolution view (array, RAS affine) on the 2 mm grid (``grid``) of the
    guide (array, affine) when given, else on its own, with the bundle's restoration networks;
    inputs skull-stripped, as the cohort's. The restored image keeps the view's intensity units
    (its mean and spread inside the brain, where it has data), zero outside.

    With a guide, the guide check runs first: the view is also restored alone,
    and when the guide moves the restoration further from it than the bundle's threshold for its
    kind of acquisition allows (``guide_disagreement``), the guide is another person's, and
    GuideMismatch is raised (carrying the restoration alone). Its figure goes into the record.
    ``prepared``: the pair was prepared from raw scans, and is held to the thresholds of prepared pairs.
    Guided, the record gives the share of the guide's brain that the view has no data in
    (``uncovered_share``; ``uncovered_words``): the restoration draws that part from the guide.

    Raises RestorationError when no network fits, when the view is not coarser than the grid, or
    when it has data in less than ``MIN_COVERED_SHARE`` of the guide's brain;
    ``names`` {"lowres", "guide"} word them. ``acquired_axes`` (3 x 3, mm): the view's voxel edges
    as acquired, in the world of ``lowres``, when ``lowres`` was resampled since (the scan
    preparation); by default its affine's.
    """
    from .preprocessing import preprocess_array

    names = {"lowres": "the low-resolution view", "guide": "the guide", **(names or {})}
    grid = grid or RESTORATION_GRID
    network = bundle.restoration.get(GUIDES[guide is not None])
    if network is None:
        raise RestorationError(f"this model bundle has no {GUIDES[guide is not None]} restoration network")
    axes = np.asarray(lowres[1], dtype=float)[:3, :3] if acquired_axes is None else np.asarray(acquired_axes)
    spacing = np.linalg.norm(axes, axis=0)
    needs_restoration(spacing, grid.spacing_mm, names["lowres"])
    view = network.config.view
    start = time.perf_counter()
    target, mask = preprocess_array(*(guide if guide is not None else lowres), grid)
    mask = mask.as_tensor()
    if not (mask > 0.5).any():
        raise RestorationError(f"{names['guide' if guide is not None else 'lowres']}: its brain mask is empty")
    interpolated = onto_grid(*lowres, target, "linear")
    covered = with_data(interpolated) * mask
    covered_share = float(covered.sum() / (mask > 0.5).sum())
    if covered_share < MIN_COVERED_SHARE:
        raise RestorationError(
            f"{names['lowres']}: it has data in only {covered_share:.0%} of the brain of {names['guide']}; a "
            f"restoration needs {MIN_COVERED_SHARE:.0%} at least, and would draw the rest from the guide alone"
        )
    data = interpolated[covered > 0.5]
    # Units from where the view has data; where it has none it stays apart from any tissue.
    acquired = standardised(interpolated, mask, covered)
    # Kept above the view's own darkest brain voxels, so that a brain mask by threshold still holds it.
    floor = torch.quantile(data, 0.01)
    record = {
        "view": view,
        "network": network.config.name,
        "lowres_spacing_mm": [round(float(s), 3) for s in spacing],
        "grid_spacing_mm": list(grid.spacing_mm),
        "grid_shape": list(grid.spatial_size),
        "intensities": (
            "the low-resolution view's units (its mean and spread inside the brain, where it has data), zero outside"
        ),
        # Without a guide the brain mask is the view's own, so the share is not measured.
        "uncovered_share": None if guide is None else round(1.0 - covered_share, 4),
    }

    def finished(restored: torch.Tensor) -> Restored:
        image = (restored * data.std() + data.mean()).clamp_min(floor) * (mask > 0.5)
        seconds = round(time.perf_counter() - start, 2)
        return Restored(MetaTensor(image, affine=target.affine.clone()), {**record, "seconds": seconds})

    if guide is None:
        return finished(restore(network, acquired, None, mask))
    guide_view = next(v for v in VIEWS if v != view)
    channels = guide_channels(bundle, target.as_tensor(), mask, grid.spacing_mm[0], guide_view)
    restored = restore(network, acquired, channels, mask)
    alone_network = bundle.restoration.get(GUIDES[False])
    if alone_network is not None:
        alone = restore(alone_network, acquired, None, mask)
        kind = threshold_name(acquisition_kind(spacing), prepared)
        # Only where the view has data: elsewhere the guide alone draws the restoration.
        disagreement = guide_disagreement(restored, alone, acquired, covered, target.affine, axes)
        threshold = bundle.guide_check.get(kind)
        record["guide_check"] = {
            "acquisition": kind,
            "disagreement": round(disagreement, 4),
            "threshold": "not calibrated in this bundle" if threshold is None else threshold,
        }
        if threshold is not None and disagreement > threshold:
            raise GuideMismatch(
                f"{names['guide']} does not look like the same person as {names['lowres']}: it moves the "
                f"restoration {disagreement:.2f} times as far from the restoration alone as that lies from "
                f"{names['lowres']}'s own data (one person's pairs stay below {threshold:.2f} for {kind}); "
                "restoring with it would copy another anatomy",
                finished(alone),
            )
    else:
        record["guide_check"] = "not run: this bundle has no unguided restoration network to compare with"
    return finished(restored)
