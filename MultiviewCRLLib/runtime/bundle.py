"""The model bundle: what a trained model needs to run anywhere (trainer, evaluator, Slicer).

A folder with ``weights.pt`` (encoder and decoder state dicts, plain tensors only),
``settings.json`` (model config, preprocessing config, content/style split, the training
cohort's mean style vector per view) and, optionally, ``template.nii.gz`` with
``template_mask.nii.gz`` (the skull-stripped brain its training inputs were registered to, which
raw scans are prepared against), ``cohort.pt`` (the training subjects'
content embeddings, to place a new pair among them), ``strata.json`` (the cohort's strata, to
name the one a new pair falls in) and ``input_check.json`` (statistics that tell whether a new
pair looks like the training data) and ``restoration.pt`` with ``restoration.json`` (networks that
restore a low-resolution view, ``restoration.py``). Loading never executes code from the files.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, PreprocessingConfig
from .control import MODEL_CARD
from .input_check import INPUT_CHECK, InputCheck, load_input_check
from .networks import build_networks
from .precision import precision_policy
from .preparation import TEMPLATE_IMAGE, Template, load_template, save_template
from .restoration import (
    RESTORATION_SETTINGS,
    RESTORATION_WEIGHTS,
    RestorationNetwork,
    load_guide_check,
    load_restoration,
)
from .storage import atomic_torch_save, atomic_write_json, staged_folder
from .strata import STRATA, Strata, load_strata

WEIGHTS = "weights.pt"
SETTINGS = "settings.json"
COHORT = "cohort.pt"
BUNDLE_FORMAT = 1
# The evaluation of the run a bundle came from; travels with the bundle when it is exported.
EVALUATION_FILES = ("metrics.json", "report.png", STRATA, "strata.tsv", "strata.png", INPUT_CHECK, MODEL_CARD)
# Trained after the bundle, beside it; they travel with it too.
RESTORATION_FILES = (RESTORATION_WEIGHTS, RESTORATION_SETTINGS)


class BundleError(ValueError):
    """A bundle that is incomplete, unreadable, or does not match its own settings."""


@dataclass
class Bundle:
    encoder: nn.Module
    decoder: nn.Module
    model: ModelConfig
    preprocessing: PreprocessingConfig
    style_means: dict[str, torch.Tensor]  # view name -> (style_dim,)
    settings: dict
    cohort_subjects: list[str] | None = None
    cohort_content: torch.Tensor | None = None  # (N, content_dim), mean of both views
    strata: Strata | None = None
    input_check: InputCheck | None = None
    template: Template | None = None  # the space its training inputs were in; None: inputs taken as prepared
    restoration: dict[str, RestorationNetwork] = field(default_factory=dict)  # by GUIDES name
    guide_check: dict[str, float] = field(default_factory=dict)  # GUIDE_CHECK_THRESHOLDS name -> threshold

    @property
    def content_dim(self) -> int:
        return self.model.content_dim


def save_bundle(
    folder: Path,
    encoder: nn.Module,
    decoder: nn.Module,
    model: ModelConfig,
    preprocessing: PreprocessingConfig,
    style_means: dict[str, torch.Tensor],
    extra: dict | None = None,
    half: bool = False,
    cohort: tuple[list[str], torch.Tensor] | None = None,
    template: Template | None = None,
) -> Path:
    """Write a bundle; ``half`` stores float16 weights (loaded back as float32); ``cohort`` is
    (subject ids, (N, content_dim) content embeddings); ``template``: the skull-stripped brain
    the training inputs were registered to, which raw scans are prepared against."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def plain(module):
        return {
            k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
            for k, v in module.state_dict().items()
        }

    atomic_torch_save(folder / WEIGHTS, {"encoder": plain(encoder), "decoder": plain(decoder)})
    if cohort is not None:
        subjects, content = cohort
        atomic_torch_save(folder / COHORT, {"subjects": list(subjects), "content": content.detach().float().cpu()})
    settings = {
        **(extra or {}),
        "format": BUNDLE_FORMAT,
        "model": model.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "family": model.family,
        "content_dims": [0, model.content_dim],
        "style_dims": [model.content_dim, model.latent_dim],
        "style_means": {view: [float(v) for v in mean] for view, mean in style_means.items()},
        "weights_dtype": "float16" if half else "float32",
    }
    if template is not None:
        save_template(folder, template)
    atomic_write_json(folder / SETTINGS, settings)
    return folder


def load_bundle(folder: Path, device: str | torch.device = "cpu") -> Bundle:
    """Read a bundle, refusing with a message that names the folder and the problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder}: folder not found")
    for name in (WEIGHTS, SETTINGS):
        if not (folder / name).is_file():
            raise BundleError(f"model bundle {folder}: missing {name}")
    try:
        settings = json.loads((folder / SETTINGS).read_text())
        model = ModelConfig.from_dict(settings["model"])
        preprocessing = PreprocessingConfig.from_dict(settings["preprocessing"])
        style_means = {view: torch.tensor(mean, dtype=torch.float32) for view, mean in settings["style_means"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise BundleError(f"model bundle {folder}: {SETTINGS} is invalid ({type(err).__name__}: {err})") from err
    for view, mean in style_means.items():
        if mean.shape != (model.style_dim,):
            raise BundleError(
                f"model bundle {folder}: style mean of {view} has {len(mean)} values, expected {model.style_dim}"
            )
    try:
        weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise BundleError(f"model bundle {folder}: {WEIGHTS} refused ({type(err).__name__}: {err})") from err
    if not isinstance(weights, dict) or set(weights) != {"encoder", "decoder"}:
        raise BundleError(f"model bundle {folder}: {WEIGHTS} must hold 'encoder' and 'decoder' state dicts")
    encoder, decoder = build_networks(model, preprocessing.spatial_size)
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        try:
            module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights[name].items()})
        except RuntimeError as err:
            raise BundleError(f"model bundle {folder}: {name} weights do not match {SETTINGS}: {err}") from err
        module.to(device, memory_format=precision_policy(torch.device(device)).memory_format).eval()
    bundle = Bundle(encoder, decoder, model, preprocessing, style_means, settings)
    if (folder / COHORT).is_file():
        try:
            cohort = torch.load(folder / COHORT, map_location="cpu", weights_only=True)
            bundle.cohort_subjects, bundle.cohort_content = list(cohort["subjects"]), cohort["content"].float()
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, TypeError) as err:
            raise BundleError(f"model bundle {folder}: {COHORT} refused ({type(err).__name__}: {err})") from err
        if bundle.cohort_content.shape != (len(bundle.cohort_subjects), model.content_dim):
            raise BundleError(
                f"model bundle {folder}: {COHORT} content embeddings do not match the model's content_dim"
            )
    for name, attribute, load in (
        (STRATA, "strata", load_strata),
        (INPUT_CHECK, "input_check", load_input_check),
        (TEMPLATE_IMAGE, "template", load_template),
    ):
        try:
            setattr(bundle, attribute, load(folder))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError) as err:
            raise BundleError(f"model bundle {folder}: {name} is invalid ({type(err).__name__}: {err})") from err
    bundle.restoration = load_restoration(folder, device)
    bundle.guide_check = load_guide_check(folder)
    return bundle


def export_bundle(source: Path, destination: Path, half: bool = True) -> Path:
    """Copy the bundle ``source`` to the new folder ``destination`` with float16 weights (by
    default), its cohort embeddings and its evaluation files. An existing folder is never replaced."""
    source, destination = Path(source), Path(destination)
    if destination.exists():
        raise BundleError(f"export to {destination}: it already exists; remove it or choose another folder")
    bundle = load_bundle(source)
    cohort = None if bundle.cohort_content is None else (bundle.cohort_subjects, bundle.cohort_content)
    with staged_folder(destination) as staging:
        save_bundle(
            staging,
            bundle.encoder,
            bundle.decoder,
            bundle.model,
            bundle.preprocessing,
            bundle.style_means,
            extra=bundle.settings,
            half=half,
            cohort=cohort,
            template=bundle.template,
        )
        for name in EVALUATION_FILES + RESTORATION_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
    return destination
