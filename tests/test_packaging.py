"""The built wheel: one top-level package, the role folders under it, their data files. Builds from a copy of
the working tree (pip's isolated build), no stack."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import assessment_store

ROOT = Path(__file__).resolve().parent.parent
DIST_INFO = f"assessment_store-{assessment_store.__version__}.dist-info"
ROLES = ("api", "bridge", "cli", "client", "core", "migration", "monitoring", "projections", "schemas", "stack",
         "streams")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the repository (a build in place would leave build/ behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".data", ".cache", "node_modules", "build", "*.egg-info", "__pycache__", ".mypy_cache",
        ".pytest_cache"))
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = out.glob("assessment_store-*.whl")
    return built


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_wheel_installs_only_the_one_namespace(wheel: Path) -> None:
    """The wheel's top-level names are assessment_store and its .dist-info, nothing else."""
    assert {name.split("/", 1)[0] for name in _names(wheel)} == {"assessment_store", DIST_INFO}


def test_wheel_carries_the_role_packages_and_their_data(wheel: Path) -> None:
    """Each role folder is a subpackage of assessment_store, with its SQL, Avro, Maven files and py.typed."""
    names = set(_names(wheel))
    for role in ROLES:
        assert f"assessment_store/{role}/__init__.py" in names, role
        assert f"assessment_store/{role}/py.typed" in names, role
    assert "assessment_store/py.typed" in names
    sql = {n for n in names if n.startswith("assessment_store/projections/sql/") and n.endswith(".sql")}
    assert {Path(n).name for n in sql} == {p.name for p in (ROOT / "projections" / "sql").glob("*.sql")}
    assert "assessment_store/stack/kafka/pom.xml" in names
    assert "assessment_store/stack/kafka/log4j2.properties" in names
    assert "assessment_store/schemas/assessment_event.avsc" in names
    assert "assessment_store/schemas/history/assessment_command.v1.avsc" in names


def test_installed_wheel_imports_and_finds_its_files(wheel: Path, tmp_path: Path) -> None:
    """Installed on its own (outside the repository), the wheel imports and reads its data files."""
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
                        "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # pip puts the console script into bin/ of a --target directory; a venv has its own bin/.
    assert {p.name for p in target.iterdir()} - {"bin"} == {"assessment_store", DIST_INFO}
    probe = (
        "import sys; from importlib import resources\n"
        "import assessment_store.api, assessment_store.bridge, assessment_store.stack\n"
        "import assessment_store.streams as s\n"
        "from assessment_store.schemas import CommandCodec\n"
        "assert s.__file__.startswith(sys.argv[1]), s.__file__\n"
        "assert list((resources.files('assessment_store.projections') / 'sql').iterdir())\n"
        "assert (resources.files('assessment_store.stack') / 'kafka' / 'pom.xml').is_file()\n"
        "CommandCodec()\n"
    )
    # cwd outside the repository and the target first on the path: the wheel's files, not the checkout's.
    r = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


_BASE_IMPORTS = {"aiokafka", "fastavro", "asyncpg", "pydantic", "pydantic_settings"}
"""What the base install (`pip install assessment-store`, no extras) provides, by import name."""


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "assessment_store":
        return None
    folder = ROOT / "assessment_store" if len(parts) == 1 else (
        ROOT / parts[1] if (ROOT / parts[1] / "__init__.py").exists() else ROOT / "assessment_store" / parts[1])
    rest = parts[2:]
    base = folder.joinpath(*rest) if rest else folder
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else None


def _module_level_imports(path: Path, module: str) -> list[str]:
    """Modules imported when ``module`` is imported: top-level statements, not inside functions or
    ``if TYPE_CHECKING``; a ``from package import name`` counts ``package.name`` too (a submodule or not)."""
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[str] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.append(target)
                found.extend(f"{target}.{a.name}" for a in node.names)

    visit(ast.parse(path.read_text()).body)
    return found


def test_the_client_needs_nothing_beyond_the_base_install() -> None:
    """`import assessment_store` (the client and its model) imports only the base dependencies, and those
    are exactly pyproject's `dependencies`: the server, the HTTP API and the CLI stay in extras."""
    seen: set[str] = set()
    third_party: dict[str, str] = {}
    todo = ["assessment_store", "assessment_store.cli"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        for imported in _module_level_imports(path, module):
            top = imported.split(".")[0]
            if top == "assessment_store":
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.setdefault(top, module)
    assert set(third_party) <= _BASE_IMPORTS, third_party
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip().replace("-", "_") for d in declared}
    assert names == _BASE_IMPORTS
