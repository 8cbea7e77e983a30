"""Compile the hot modules of ``core._native.NATIVE_MODULES`` into their twins, with mypyc.

    .venv/bin/python scripts/build_native.py [--force]

Run by scripts/bootstrap.sh after the install. Each module ``<package>/<name>.py`` gets a twin
``<name>_native`` beside it: a C extension compiled from a copy of the source that records the
source's SHA-256 (``SOURCE_SHA256``), so ``core.load_native`` uses a twin only while it is the
source's (core/_native.py). The twins of one run are one mypyc group, so their calls into each
other are native calls; imports between the listed modules are pointed at the twins in the copies.

Nothing is rebuilt when the stamp (.cache/native/stamp) says the twins are of the current sources,
Python and mypy. Without a C compiler or Python's headers the build fails: the script says why and
exits 1 (bootstrap.sh then goes on with the Python modules, unless ASSESSMENT_STORE_NATIVE=require).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from assessment_store.core import NATIVE_MODULES, source_sha256

ROOT = Path(__file__).resolve().parent.parent

WORK = ROOT / ".cache" / "native"
TREE = WORK / "tree"
"""assessment_store/ under its installed name, for mypy: the package's __init__ and each role folder, as symlinks."""
GROUP = "assessment_store.core._twins"
"""The mypyc group's name: its runtime library is the extension ``assessment_store.core._twins__mypyc``,
in the kernel, which every twin's package may import (and core's own twin, while core loads)."""


def _source(module: str) -> Path:
    _, role, *rest = module.split(".")
    return ROOT / role / Path(*rest).with_suffix(".py")


def _stamp(sources: dict[str, Path]) -> str:
    import mypy.version

    h = hashlib.sha256(f"{sys.version}|{mypy.version.__version__}|{GROUP}".encode())
    for module, path in sorted(sources.items()):
        h.update(f"{module}={source_sha256(path)}".encode())
    return h.hexdigest()


def _built(sources: dict[str, Path]) -> list[Path]:
    suffix = ".cpython-%d%d" % sys.version_info[:2]
    found = []
    for module, path in sources.items():
        found += list(path.parent.glob(f"{path.stem}_native{suffix}*.so"))
    found += list((ROOT / "core").glob(f"_twins__mypyc{suffix}*.so"))
    return found


def _twin_text(module: str, path: Path, modules: set[str]) -> str:
    text = path.read_text()
    package = module.rsplit(".", 1)[0]
    # A relative import of another listed module of the same package goes to its twin.
    for other in modules:
        other_package, other_name = other.rsplit(".", 1)
        if other_package == package:
            text = re.sub(rf"^from \.{other_name} import", f"from .{other_name}_native import", text, flags=re.M)
    return text + f'\n\nSOURCE_SHA256 = "{source_sha256(path)}"\n"""The hash of {path.name} this twin was compiled from."""\n'


def build(force: bool) -> int:
    sources = {m: _source(m) for m in NATIVE_MODULES}
    stamp_file = WORK / "stamp"
    stamp = _stamp(sources)
    if not force and stamp_file.exists() and stamp_file.read_text() == stamp and \
            len(_built(sources)) == len(sources) + 1:
        print("native twins are current", file=sys.stderr)
        return 0
    for old in _built(sources):
        old.unlink()
    stamp_file.unlink(missing_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(TREE, ignore_errors=True)
    (TREE / "assessment_store").mkdir(parents=True)
    for entry in (ROOT / "assessment_store").iterdir():
        (TREE / "assessment_store" / entry.name).symlink_to(entry)
    for role in (ROOT / ".typecheck" / "assessment_store").iterdir():
        (TREE / "assessment_store" / role.name).symlink_to(role.resolve())
    twins: list[Path] = []
    try:
        # The copies are written beside their sources for the compile only (mypy must see them in
        # their package), and removed after it whatever happens.
        for module, path in sources.items():
            twin = path.with_name(path.stem + "_native.py")
            twin.write_text(_twin_text(module, path, set(sources)))
            twins.append(twin)
        rel = [str(Path("assessment_store", *m.split(".")[1:-1], m.rsplit(".", 1)[1] + "_native.py")) for m in sources]
        script = (
            "import sys\n"
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='assessment-store-native', script_args=['build_ext', '--inplace', '--build-temp', {str(WORK / 'temp')!r}],\n"
            f"      ext_modules=mypycify(['--config-file', {str(ROOT / 'pyproject.toml')!r}, *{rel!r}],\n"
            f"                           group_name={GROUP!r}, target_dir={str(WORK / 'c')!r}, opt_level='3'))\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(script)
        print(f"compiling {', '.join(sources)} with mypyc (about 20 s)", file=sys.stderr)
        env = {**os.environ, "MYPYPATH": str(TREE)}  # the config's mypy_path is relative to the repository
        done = subprocess.run([sys.executable, f.name], cwd=TREE, env=env, capture_output=True, text=True)
        os.unlink(f.name)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            print(f"build_native: mypyc failed (exit {done.returncode}); the Python modules stay in use:\n{tail}",
                  file=sys.stderr)
            return 1
    finally:
        for twin in twins:
            twin.unlink(missing_ok=True)
        shutil.rmtree(TREE, ignore_errors=True)
    built = _built(sources)
    if len(built) != len(sources) + 1:
        print(f"build_native: expected {len(sources) + 1} extensions, found {[p.name for p in built]}", file=sys.stderr)
        return 1
    stamp_file.write_text(stamp)
    print("built " + ", ".join(str(p.relative_to(ROOT)) for p in built), file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp says the twins are current")
    sys.exit(build(parser.parse_args().force))
