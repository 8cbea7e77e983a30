"""Compiled twins of a few hot pure-Python modules, used only when they are the source's.

``scripts/build_native.py`` (run by ``scripts/bootstrap.sh``) compiles each module of
``NATIVE_MODULES`` with mypyc, the compiler of mypy-typed Python into C extensions, into a twin
beside it named ``<module>_native``. The twin is the same source, so it behaves the same (the
tests run against it), only faster: the Avro codecs decode an event in 2.9 µs instead of 6.9.

The twin carries ``SOURCE_SHA256``, the hash of the source it was compiled from. ``load_native``
returns it only if that hash is the pure module's source's hash now; else (no compiler on the
machine, a module edited since the build, another Python) it returns the pure module, which is
always there. So a build never shadows the source: a stale twin is never run.

The choice is ``Settings.native`` (``ASSESSMENT_STORE_NATIVE``), read when a module using a twin is
imported (codecs are chosen when they load, before any ``Settings`` exists):

* ``auto`` (the default): the twin when it is current, else the pure module (logged at WARNING
  when a twin is there but stale, at DEBUG when there is none);
* ``off``: always the pure module;
* ``require``: the twin, or ``ImportError`` naming the module and why (CI sets it, so the suite
  runs what a bootstrapped deployment runs).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

__all__ = ["NATIVE_MODULES", "NATIVE_SETTING", "load_native", "native_status", "source_sha256"]

log = logging.getLogger(__name__)

NATIVE_MODULES = (
    "assessment_store.schemas._fast_event",
    "assessment_store.schemas._fast_command",
)
"""The modules ``scripts/build_native.py`` compiles: byte-level loops on every record."""

NATIVE_SETTING = "ASSESSMENT_STORE_NATIVE"
"""The environment variable of ``Settings.native``."""

_CHOICES = ("auto", "off", "require")
_status: dict[str, str] = {}


def source_sha256(path: str | Path) -> str:
    """The hash a twin records of the source it was compiled from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _choice() -> str:
    value = os.environ.get(NATIVE_SETTING, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ImportError(f"{NATIVE_SETTING}={value!r}: expected one of {', '.join(_CHOICES)}")
    return value


def load_native(pure: ModuleType) -> ModuleType:
    """``pure``'s compiled twin if it is current and allowed (module docstring), else ``pure``."""
    choice = _choice()
    name = pure.__name__
    if choice == "off":
        _status[name] = f"python ({NATIVE_SETTING}=off)"
        return pure
    why = ""
    try:
        twin = importlib.import_module(name + "_native")
    except ImportError as e:
        why = f"no compiled twin ({e})"
    else:
        built = getattr(twin, "SOURCE_SHA256", None)
        if pure.__file__ is not None and built == source_sha256(pure.__file__):
            _status[name] = f"compiled ({twin.__file__})"
            return twin
        why = f"the compiled twin {twin.__file__} is of another source than {pure.__file__}: rebuild it " \
              "(python scripts/build_native.py)"
        log.warning("%s: %s; using the Python module", name, why)
    if choice == "require":
        raise ImportError(f"{name}: {NATIVE_SETTING}=require, but {why}")
    log.debug("%s: %s; using the Python module", name, why)
    _status[name] = f"python ({why})"
    return pure


def native_status() -> dict[str, str]:
    """Each module loaded through ``load_native`` so far: ``compiled (<file>)`` or ``python (<why>)``."""
    return dict(_status)
