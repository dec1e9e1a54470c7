"""pyproject.toml declares exactly what the code imports, and ships what the code looks up at run time."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"napari_ddunet", "training"}
#: Imported from files that the named extra serves, never from the plain install's code paths.
EXTRA_ONLY = {"monai": "bench"}


def _project() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files of src/ and training/ importing it (stdlib and first party left out)."""
    found: dict[str, set[str]] = {}
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "training").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def test_runtime_dependencies_are_exactly_the_imports():
    project = _project()
    runtime = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    imports = _third_party_imports()
    provided: dict[str, set[str]] = {}
    for module, files in imports.items():
        dists = _distributions(module)
        assert dists, f"{module} (imported in {sorted(files)}) is not installed"
        wanted = extras[EXTRA_ONLY[module]] if module in EXTRA_ONLY else runtime
        assert dists & wanted, f"{module} (imported in {sorted(files)}) comes from {sorted(dists)}: declare it"
        provided[module] = dists & wanted
    used = set().union(*provided.values())
    assert runtime <= used, f"declared but never imported: {sorted(runtime - used)}"
    qt_bindings = {"pyqt5", "pyqt6", "pyside2", "pyside6"}
    assert not runtime & qt_bindings, "napari plugins leave the Qt binding to the user"
    assert "pyqt6" in extras["testing"]


def test_version_entry_points_and_package_data():
    import napari_ddunet

    metadata = importlib.metadata.metadata("napari-ddunet")
    assert metadata["Version"] == napari_ddunet.__version__
    points = importlib.metadata.entry_points()

    def target(group: str) -> list[str]:
        return [p.value for p in points.select(group=group, name="napari-ddunet")]

    assert target("console_scripts") == ["napari_ddunet.cli:main"]
    assert target("napari.manifest") == ["napari_ddunet:napari.yaml"]
    assert not (ROOT / "setup.cfg").exists()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in package_data["napari_ddunet"] for p in (ROOT / "src" / "napari_ddunet").glob(pattern)}
    models = ROOT / "src" / "napari_ddunet" / "models"
    assert set(models.glob("*.pt")) | {models / "RECIPES.md"} <= shipped
    assert ROOT / "src" / "napari_ddunet" / "napari.yaml" in shipped


@pytest.mark.parametrize("module", ["training.train", "training.evaluate", "training.reproduce"])
def test_training_is_installed_with_the_plugin(module, tmp_path):
    """``python -m training.<tool> --help`` runs from any directory, not only from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module}")
