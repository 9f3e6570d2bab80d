"""Static checks of the Slicer module that need no Slicer application: the .ui and the module agree,
MultiviewCRL.py imports nothing heavy at file scope, and the extension metadata is declared."""

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MultiviewCRL.py"
UI = ROOT / "Resources" / "UI" / "MultiviewCRL.ui"
ALLOWED_AT_FILE_SCOPE = {"slicer", "vtk", "qt", "ctk", "numpy", "scipy", "SimpleITK"}


@pytest.fixture(scope="module")
def module_tree():
    return ast.parse(MODULE.read_text())


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def test_every_ui_name_the_module_uses_exists(module_tree):
    used = {
        node.attr
        for node in ast.walk(module_tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used, "the module uses no self.ui widgets?"
    assert used <= set(ui_widgets()), sorted(used - set(ui_widgets()))


def test_ui_parameter_bindings_match_the_parameter_node(module_tree):
    bound = set()
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.add(prop.find("string").text)
    wrapper = next(n for n in module_tree.body if isinstance(n, ast.ClassDef) and n.name == "MultiviewCRLParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert bound == fields


def test_no_heavy_import_or_work_at_file_scope(module_tree):
    for node in module_tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in ALLOWED_AT_FILE_SCOPE or top in sys.stdlib_module_names, f"file-scope import of {name}"
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
            assert all(ast.unparse(c.func) in {"Path", "Path(__file__).resolve"} for c in calls), ast.unparse(node)
        else:
            assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.Expr), ast.unparse(node)[:80]
    assert "import torch" not in "\n".join(ast.unparse(n) for n in module_tree.body if not isinstance(n, ast.ClassDef))


def test_cmake_declares_the_extension_and_its_tests():
    """The metadata and the self-test; which files are installed: test_cmake_install.py."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for needed in ("project(MultiviewCRL)", 'EXTENSION_DEPENDS "PyTorch"', "WITH_GENERIC_TESTS"):
        assert needed in cmake
    assert "slicer_add_python_unittest" in (ROOT / "Testing" / "Python" / "CMakeLists.txt").read_text()


def test_icon_is_128_square_png():
    from PIL import Image

    with Image.open(ROOT / "Resources" / "Icons" / "MultiviewCRL.png") as icon:
        assert icon.size == (128, 128) and icon.format == "PNG"
