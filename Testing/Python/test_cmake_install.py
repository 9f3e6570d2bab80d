"""CMake installs the module and its Slicer-side library, nothing else: Slicer loads every top-level
.py of the module folder as a module, and the training part is for trainer_cli.py outside Slicer.
The expected files come from the folders, so a new library file that is not listed fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "MultiviewCRLLib"
CMAKE = (ROOT / "CMakeLists.txt").read_text()


def listed(variable: str) -> list[str]:
    """The entries of ``set(<variable> ...)``, with ${MODULE_NAME} expanded."""
    found = re.search(rf"set\({variable}\s(.*?)\)", CMAKE, re.DOTALL)
    assert found, f"CMakeLists.txt sets no {variable}"
    entries = [line.split("#", 1)[0].strip() for line in found.group(1).splitlines()]
    return [entry.replace("${MODULE_NAME}", "MultiviewCRL") for entry in entries if entry]


def slicer_side() -> set[str]:
    """The library's files that Slicer runs: every .py under MultiviewCRLLib but the training part."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in LIBRARY.rglob("*.py")
        if "training" not in path.relative_to(LIBRARY).parts
    }


def test_the_scripts_are_the_module_and_its_slicer_side_library():
    scripts = listed("MODULE_PYTHON_SCRIPTS")
    assert len(scripts) == len(set(scripts)), "a script is listed twice"
    assert [s for s in scripts if "/" not in s] == ["MultiviewCRL.py"], "only the module is a top-level script"
    assert not [s for s in scripts if s.startswith("MultiviewCRLLib/training/")]
    runtime = {p.relative_to(ROOT).as_posix() for p in (LIBRARY / "runtime").rglob("*.py")}
    assert runtime and runtime <= set(scripts), sorted(runtime - set(scripts))
    assert set(scripts) == {"MultiviewCRL.py"} | slicer_side()


def test_the_resources_hold_the_ui_icon_bundled_model_and_test_pair():
    resources = set(listed("MODULE_PYTHON_RESOURCES"))
    shipped = {
        path.relative_to(ROOT).as_posix()
        for folder in ("Models", "TestData")
        for path in (ROOT / "Resources" / folder).rglob("*")
        if path.is_file()
    }
    needed = {
        "Resources/UI/MultiviewCRL.ui",
        "Resources/Icons/MultiviewCRL.png",
        "Resources/requirements.txt",
        "Resources/Models/demo/MODEL_CARD.md",
    }
    assert shipped and (shipped | needed) <= resources, sorted((shipped | needed) - resources)
    assert not [r for r in resources if r.endswith(".py")]
