"""The house's rules, read from the code's own imports (no stack): every package imports only packages
below it, never another package's private modules, and the wheel's top level stays one name.

The layers, bottom first (docs/architecture.md draws them):

    core < schemas < streams < projections < client < bridge < migration < monitoring < stack < api
        < assessment_store (the façade: re-exports and ``testing``) < cli
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = ["core", "schemas", "streams", "projections", "client", "bridge", "migration", "monitoring", "stack", "api",
          "assessment_store", "cli"]
"""Package folders, bottom first; each may import the ones before it and none after it."""


def _imports(package: str) -> Iterator[tuple[Path, int, str]]:
    """(file, line, absolute module) for every absolute import of ``assessment_store…`` in a package folder."""
    for path in sorted((ROOT / package).rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "assessment_store" or name.startswith("assessment_store."):
                    yield path, node.lineno, name


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "assessment_store"


def test_imports_run_downward_only() -> None:
    """No package imports a package above it (or the façade), so there is no cycle between packages."""
    upward = []
    for rank, package in enumerate(LAYERS):
        for path, line, module in _imports(package):
            target = _package_of(module)
            if target != package and LAYERS.index(target) > rank:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({package} -> {target})")
    assert upward == []


def test_no_package_reaches_into_another_packages_private_modules() -> None:
    """Packages use each other's public faces (``__init__``), never ``assessment_store.<other>._module``."""
    private = []
    for package in LAYERS:
        for path, line, module in _imports(package):
            parts = module.split(".")
            target = _package_of(module)
            inner = parts[2:] if target != "assessment_store" else parts[1:]
            if target != package and any(p.startswith("_") for p in inner):
                private.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert private == []


def test_every_package_folder_is_installed_and_type_checked() -> None:
    """Each layer is in pyproject's packages, package-dir and mypy list, and visible to mypy through .typecheck."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in LAYERS:
        if package == "assessment_store":
            continue
        assert f'"assessment_store.{package}" = "{package}"' in pyproject, package
        assert pyproject.count(f'"assessment_store.{package}",') == 2, package
        assert (ROOT / ".typecheck" / "assessment_store" / package).resolve() == (ROOT / package).resolve(), package
        assert (ROOT / package / "py.typed").exists(), package
