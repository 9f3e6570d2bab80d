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
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet
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


class RestorationError(ValueError):
    """An input that cannot, or need not, be restored; the message names it."""


@dataclass(frozen=True)
class RestorationConfig:
    """One restoration network: ``view`` it restores (a VIEWS name), ``guided`` whether it reads the
    other view, ``map_channels`` of the bundle's content map it then reads, U-Net ``channels``."""

    view: str = "T2w"
    guided: bool = True
    map_channels: int = 0
    channels: tuple[int, ...] = (16, 32, 64)

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
        self.unet = UNet(3, config.in_channels, 1, config.channels, strides, num_res_units=1, norm="instance")
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


def standardised(volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """z-scored over the voxels inside ``mask`` (the preprocessing's normalisation), zero outside."""
    inside = mask > 0.5
    values = volume[inside]
    return (volume - values.mean()) / values.std().clamp_min(1e-6) * inside


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
            network = RestorationNetwork(RestorationConfig(**{**values, "channels": tuple(values["channels"])}))
            network.load_state_dict(states[name])
            networks[name] = network.to(device, memory_format=precision_policy(torch.device(device)).memory_format)
            networks[name].eval()
    except (OSError, json.JSONDecodeError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as err:
        raise RestorationError(
            f"model bundle {folder}: {RESTORATION_WEIGHTS} or {RESTORATION_SETTINGS} refused "
            f"({type(err).__name__}: {err})"
        ) from err
    return networks


@dataclass
class Restored:
    """A restored view: ``image`` (1, X, Y, Z) on the restoration grid (``image.affine`` places it
    in the inputs' world space, so it overlays them), and what was done, for the record."""

    image: MetaTensor
    record: dict


def same_person_problem(bundle, scans: dict[str, tuple], names: dict[str, str]) -> str | None:
    """The input check's warning when the two ``scans`` {view: (array, affine)} do not look like one
    person, else None (also without an input check in the bundle)."""
    from .inference import analyse_pair

    if bundle.input_check is None:
        return None
    analysis = analyse_pair(bundle, *(scans[v] for v in VIEWS), names=names, prepare=False)
    if analysis.content_cosine is None or analysis.content_cosine >= bundle.input_check.same_subject_threshold:
        return None
    return next(w for w in analysis.check.warnings if "one person" in w)


def restore_scan(
    bundle,
    lowres: tuple[np.ndarray, np.ndarray],
    guide: tuple[np.ndarray, np.ndarray] | None = None,
    names: dict[str, str] | None = None,
    grid: PreprocessingConfig | None = None,
    check_guide: bool = True,
    acquired_spacing=None,
) -> Restored:
    """Restore the low-resolution view (array, RAS affine) on the 2 mm grid (``grid``) of the
    guide (array, affine) when given, else on its own, with the bundle's restoration networks;
    inputs skull-stripped, as the cohort's. The restored image keeps the view's intensity units
    (its mean and spread inside the brain), zero outside.

    Raises RestorationError when no network fits, when the view is not coarser than the grid, or
    (``check_guide``, with the bundle's input check) when the guide does not look like the same
    person; ``names`` {"lowres", "guide"} word them. ``acquired_spacing`` (mm per axis): the view's
    voxels as acquired, when ``lowres`` was resampled since (the scan preparation); by default its
    affine's.
    """
    from .preprocessing import preprocess_array

    names = {"lowres": "the low-resolution view", "guide": "the guide", **(names or {})}
    grid = grid or RESTORATION_GRID
    network = bundle.restoration.get(GUIDES[guide is not None])
    if network is None:
        raise RestorationError(f"this model bundle has no {GUIDES[guide is not None]} restoration network")
    spacing = np.linalg.norm(np.asarray(lowres[1])[:3, :3], axis=0) if acquired_spacing is None else acquired_spacing
    needs_restoration(spacing, grid.spacing_mm, names["lowres"])
    view = network.config.view
    guide_view = next(v for v in VIEWS if v != view)
    if guide is not None and check_guide:
        called = {guide_view: names["guide"], view: names["lowres"]}
        problem = same_person_problem(bundle, {guide_view: guide, view: lowres}, called)
        if problem:
            raise RestorationError(
                f"{problem}; restoring {names['lowres']} with {names['guide']} would copy another anatomy"
            )
    start = time.perf_counter()
    target, mask = preprocess_array(*(guide if guide is not None else lowres), grid)
    mask = mask.as_tensor()
    if not (mask > 0.5).any():
        raise RestorationError(f"{names['guide' if guide is not None else 'lowres']}: its brain mask is empty")
    interpolated = onto_grid(*lowres, target, "linear")
    channels = (
        None if guide is None else guide_channels(bundle, target.as_tensor(), mask, grid.spacing_mm[0], guide_view)
    )
    restored = restore(network, standardised(interpolated, mask), channels, mask)
    inside = interpolated[mask > 0.5]
    # Kept above the view's own darkest brain voxels, so that a brain mask by threshold still holds it.
    floor = torch.quantile(inside, 0.01)
    restored = (restored * inside.std() + inside.mean()).clamp_min(floor) * (mask > 0.5)
    record = {
        "view": view,
        "network": network.config.name,
        "lowres_spacing_mm": [round(float(s), 3) for s in spacing],
        "grid_spacing_mm": list(grid.spacing_mm),
        "grid_shape": list(grid.spatial_size),
        "seconds": round(time.perf_counter() - start, 2),
        "intensities": "the low-resolution view's units (its mean and spread inside the brain), zero outside",
    }
    return Restored(MetaTensor(restored, affine=target.affine.clone()), record)
