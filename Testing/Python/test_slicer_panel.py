"""What the module panel decides without a Slicer application: when Apply and Align are enabled,
where the bundle's model card is, and the remedy it shows for each library error, found by type."""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from MultiviewCRLLib import runtime, slicer_nodes
from MultiviewCRLLib.runtime.alignment import AlignmentError
from MultiviewCRLLib.runtime.bundle import BundleError
from MultiviewCRLLib.runtime.control import MODEL_CARD, Cancelled, can_align, can_apply, model_card
from MultiviewCRLLib.runtime.preparation import BrainMaskError
from MultiviewCRLLib.runtime.registration import require_content_maps
from MultiviewCRLLib.slicer_nodes import REMEDIES, NodeError, remedy

ROOT = Path(__file__).resolve().parents[2]
NODE = object()  # stands for a volume node: the panel only asks whether one is chosen


def library_errors() -> set[type]:
    """Every exception class defined in the Slicer part (runtime/*.py and slicer_nodes.py), less
    Cancelled, which is no failure: the panel says it was cancelled."""
    modules = [importlib.import_module(f"{runtime.__name__}.{m.name}") for m in pkgutil.iter_modules(runtime.__path__)]
    return {
        value
        for module in [*modules, slicer_nodes]
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == module.__name__
    } - {Cancelled}


def test_every_library_error_gets_a_remedy():
    errors = library_errors()
    assert {NodeError, BundleError, AlignmentError, BrainMaskError} <= errors  # the walk finds them
    for error in errors:
        assert remedy(error(f"a {error.__name__}")).strip(), f"{error.__module__}.{error.__name__} has no remedy"


def test_a_remedy_is_found_by_type_not_by_name():
    class Subclassed(AlignmentError):
        pass

    assert remedy(Subclassed("diverged")) == REMEDIES[AlignmentError]  # the nearest class in the MRO
    assert remedy(type("BundleError", (ValueError,), {})("same name")) == ""  # a name alone is nothing
    assert remedy(ValueError("unexpected")) == ""
    assert REMEDIES[BrainMaskError] != REMEDIES[AlignmentError]


def test_the_module_maps_no_error_by_its_class_name():
    tree = ast.parse((ROOT / "MultiviewCRL.py").read_text())
    names = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "__name__"]
    assert not names, [ast.unparse(node) for node in names]
    assert "REMEDIES" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_a_bundle_without_content_maps_is_a_bundle_error():
    with pytest.raises(BundleError, match="global family and has no content maps"):
        require_content_maps(SimpleNamespace(model=SimpleNamespace(family="global")))


def test_apply_needs_a_model_and_an_input_align_needs_both(tmp_path):
    for chosen in [(NODE, None), (None, NODE), (NODE, NODE)]:
        assert can_apply(*chosen, tmp_path)
    assert not can_apply(None, None, tmp_path)
    assert can_align(NODE, NODE, tmp_path)
    assert not can_align(NODE, None, tmp_path) and not can_align(None, NODE, tmp_path)
    for no_model in [None, "", Path(""), tmp_path / "missing", tmp_path / "file.txt"]:
        (tmp_path / "file.txt").write_text("not a folder")
        assert not can_apply(NODE, NODE, no_model), no_model
        assert not can_align(NODE, NODE, no_model), no_model


def test_the_model_card_is_offered_only_when_the_bundle_has_one(tmp_path):
    assert model_card(tmp_path) is None
    assert model_card(None) is None
    (tmp_path / MODEL_CARD).write_text("# Model card\n")
    assert model_card(tmp_path) == tmp_path / MODEL_CARD
    assert model_card(str(tmp_path)) == tmp_path / MODEL_CARD
