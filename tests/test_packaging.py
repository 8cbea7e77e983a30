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
ROLES = ("api", "bridge", "monitoring", "projections", "schemas", "stack", "streams")


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
