"""What Slicer runs, checked as Slicer runs it: the Slicer part of the library never reaches the
training part, it runs end to end on real MRML with the training extras impossible to import, and
the module's dependency list is the one the package metadata declares."""

import ast
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

from MultiviewCRLLib.dependencies import REQUIREMENTS_FILE, missing_requirements, requirements, unmet

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "MultiviewCRLLib"
# What the Slicer module's run path may reach: the runtime part, the shared modules, the node layer.
SLICER_PART = [
    *sorted((LIBRARY / "runtime").glob("*.py")),
    *sorted((LIBRARY / "config").glob("*.py")),
    *(LIBRARY / n for n in ("dependencies.py", "slicer_nodes.py")),
]
TRAINING_EXTRAS = ("tqdm", "sklearn", "matplotlib", "tensorboard", "nilearn", "pandas")
ALLOWED_TOP_LEVEL = {
    "torch",
    "monai",
    "nibabel",
    "numpy",
    "scipy",
    "SimpleITK",
    "slicer",
    "vtk",
    "packaging",
    "MultiviewCRLLib",
}


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Absolute names of every module a file imports, at any depth (relative imports resolved
    against ``package``, by default the file's own package in the repository)."""
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_slicer_part_never_imports_the_training_part_or_extras():
    assert SLICER_PART and all(p.is_file() for p in SLICER_PART)
    for path in SLICER_PART:
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert not name.startswith("MultiviewCRLLib.training"), f"{path.name} imports {name}"
            assert top in ALLOWED_TOP_LEVEL or top in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_the_import_walk_sees_a_stray_import(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("def helper():\n    from ..training.trainer import Trainer\n")
    assert "MultiviewCRLLib.training.trainer" in imported_modules(stray, "MultiviewCRLLib.runtime")


def test_module_run_path_without_training_extras(tmp_path):
    """A subprocess in which the training extras cannot be imported runs the module's analysis
    (the one orchestration, on its background runner) on real MRML nodes with the bundled model."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = {TRAINING_EXTRAS!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not installed in Slicer)")

        sys.meta_path.insert(0, Block())
        for extra in BLOCKED:
            try:
                __import__(extra)
            except ModuleNotFoundError:
                continue
            raise SystemExit(f"{{extra}} could still be imported")

        import importlib, pkgutil
        import MultiviewCRLLib.runtime as runtime
        for module in pkgutil.iter_modules(runtime.__path__):
            importlib.import_module(f"MultiviewCRLLib.runtime.{{module.name}}")
        import slicer
        from MultiviewCRLLib.slicer_nodes import BackgroundRunner, analyse_nodes, read_volume_node

        slicer.mrmlScene = scene = slicer.vtkMRMLScene()
        data = {str(ROOT / "Resources" / "TestData")!r}
        t1, t2 = (read_volume_node(f"{{data}}/synthetic_{{view}}.nii.gz", scene) for view in ("T1w", "T2w"))
        result = analyse_nodes(
            {str(ROOT / "Resources" / "Models" / "demo")!r}, t1, t2, "cpu", scene, BackgroundRunner()
        )
        assert len(result["volumes"]) == 10, result["volumes"]
        assert result["analysis"].content_cosine > 0.5, result["analysis"].content_cosine
        assert result["transform"] is not None  # the raw pair was prepared
        # The check ran and passed the prepared raw pair: each view its own contrast, like the
        # training data, and the two one person.
        assert result["analysis"].check.figures
        assert result["analysis"].check.passed, result["analysis"].check.warnings
        leaked = sorted(
            m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("MultiviewCRLLib.training")
        )
        assert not leaked, leaked
        print("analysed", sorted(result["volumes"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "analysed" in done.stdout


def test_module_requirements_are_the_package_requirements():
    declared = [r for r in metadata.requires("MultiviewCRLLib") if "extra ==" not in r]
    assert sorted(declared) == sorted(requirements())
    assert REQUIREMENTS_FILE.parent.name == "Resources"  # packaged with the module (CMakeLists)
    assert "Resources/requirements.txt" in (ROOT / "CMakeLists.txt").read_text()
    assert missing_requirements() == []
    assert unmet("a-package-that-is-not-installed>=1.0")
    assert unmet("torch>=999")
    assert not unmet("torch>=2.1")
