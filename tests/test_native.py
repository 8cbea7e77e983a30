"""Compiled twins of hot modules (core/_native.py, scripts/build_native.py): used only while they are
their source's, chosen by ASSESSMENT_STORE_NATIVE, and the codecs pass the same tests either way."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import get_args

import pytest

from assessment_store.core import NATIVE_MODULES, NATIVE_SETTING, Settings, load_native, native_status, source_sha256

ROOT = Path(__file__).resolve().parent.parent


def _package(root: Path, name: str, twin_hash: str | None) -> ModuleType:
    """A package ``name`` with a module ``mod`` (X = "pure") and, unless ``twin_hash`` is None, a
    stand-in twin ``mod_native`` (X = "twin") recording ``twin_hash`` ("source" for mod's own)."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text('X = "pure"\n')
    if twin_hash is not None:
        recorded = source_sha256(pkg / "mod.py") if twin_hash == "source" else twin_hash
        (pkg / "mod_native.py").write_text(f'X = "twin"\nSOURCE_SHA256 = "{recorded}"\n')
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    return importlib.import_module(f"{name}.mod")


def test_a_current_twin_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A twin recording its source's hash replaces the module, and the status says so."""
    monkeypatch.setenv("ASSESSMENT_STORE_NATIVE", "auto")
    chosen = load_native(_package(tmp_path, "native_current", "source"))
    assert chosen.X == "twin"
    assert native_status()["native_current.mod"].startswith("compiled (")


def test_a_stale_twin_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A twin of another source (the module edited since the build) is passed over with a warning."""
    monkeypatch.setenv("ASSESSMENT_STORE_NATIVE", "auto")
    with caplog.at_level(logging.WARNING, logger="assessment_store.core._native"):
        chosen = load_native(_package(tmp_path, "native_stale", "0" * 64))
    assert chosen.X == "pure"
    assert "rebuild it" in caplog.text and "native_stale.mod" in caplog.text


def test_require_refuses_a_missing_or_stale_twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ASSESSMENT_STORE_NATIVE=require, no twin or a stale one is an ImportError naming the module."""
    monkeypatch.setenv("ASSESSMENT_STORE_NATIVE", "require")
    with pytest.raises(ImportError, match="native_missing.mod: .*no compiled twin"):
        load_native(_package(tmp_path, "native_missing", None))
    with pytest.raises(ImportError, match="native_old.mod: .*another source"):
        load_native(_package(tmp_path, "native_old", "f" * 64))


def test_off_keeps_the_python_module_and_a_bad_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ASSESSMENT_STORE_NATIVE=off ignores a current twin; a value outside auto/off/require is an error."""
    mod = _package(tmp_path, "native_off", "source")
    monkeypatch.setenv("ASSESSMENT_STORE_NATIVE", "off")
    assert load_native(mod).X == "pure"
    monkeypatch.setenv("ASSESSMENT_STORE_NATIVE", "fast")
    with pytest.raises(ImportError, match="ASSESSMENT_STORE_NATIVE='fast'"):
        load_native(mod)


def test_the_setting_documents_what_the_loader_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings.native is the variable load_native reads, with the same three choices."""
    assert set(get_args(Settings.model_fields["native"].annotation)) == {"auto", "off", "require"}
    monkeypatch.setenv(NATIVE_SETTING, "off")
    assert Settings().native == "off"


@pytest.mark.skipif(os.environ.get("ASSESSMENT_STORE_NATIVE") != "require",
                    reason="only where the twins are required (CI): elsewhere a machine may lack a compiler")
def test_ci_runs_the_compiled_codecs() -> None:
    """Where twins are required, every listed module is loaded compiled."""
    import assessment_store.schemas  # noqa: F401  (loads the codecs)

    status = native_status()
    for module in NATIVE_MODULES:
        assert status.get(module, "").startswith("compiled ("), (module, status.get(module))


def test_the_codec_tests_pass_on_the_python_modules_too() -> None:
    """The fast codecs' tests, run again with ASSESSMENT_STORE_NATIVE=off, pass on the Python modules."""
    env = {**os.environ, "ASSESSMENT_STORE_NATIVE": "off"}
    probe = subprocess.run(
        [sys.executable, "-c", "import assessment_store.schemas; from assessment_store.core import native_status; "
                               "print(sorted(set(v.split()[0] for v in native_status().values())))"],
        env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "['python']", probe.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_codec_fast.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
