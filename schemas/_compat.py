"""Whether a reader schema can read what a writer schema wrote: the Avro specification's rules of
schema resolution, checked on the schemas themselves (before any record is met).

Used when a writer schema becomes known (``AvroRecordCodec.add_writer``) and by the suite's
compatibility check of every schema against its history (docs/events.md, "Compatibility").
Logical types are checked by their underlying type, as resolution does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["incompatibilities"]

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
# Writer type -> reader types it may be promoted to.
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def _collect(schema: Any, namespace: str, names: dict[str, Any]) -> None:
    """Index every named type of ``schema`` by full and by short name."""
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, namespace, names)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        name = str(schema["name"])
        ns = schema.get("namespace", namespace) if "." not in name else name.rsplit(".", 1)[0]
        full = name if "." in name else (f"{ns}.{name}" if ns else name)
        names[full] = schema
        names.setdefault(full.rsplit(".", 1)[-1], schema)
        for f in schema.get("fields", []):
            _collect(f["type"], ns or "", names)
    elif kind == "array":
        _collect(schema["items"], namespace, names)
    elif kind == "map":
        _collect(schema["values"], namespace, names)
    elif isinstance(kind, (dict, list)):
        _collect(kind, namespace, names)


def _deref(schema: Any, names: dict[str, Any]) -> Any:
    if isinstance(schema, str):
        return schema if schema in _PRIMITIVES else names.get(schema, names.get(schema.rsplit(".", 1)[-1], schema))
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
        return schema["type"]  # a primitive with a logical type: resolved by its underlying type
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list, str)) and schema.get("type") not in (
            "record", "error", "enum", "fixed", "array", "map"):
        return _deref(schema["type"], names)
    return schema


def _kind(s: Any) -> str:
    if isinstance(s, list):
        return "union"
    if isinstance(s, str):
        return s
    return "record" if s.get("type") == "error" else str(s.get("type"))


def _short(s: dict[str, Any]) -> str:
    return str(s["name"]).rsplit(".", 1)[-1]


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.rnames: dict[str, Any] = {}
        self.wnames: dict[str, Any] = {}
        _collect(reader, "", self.rnames)
        _collect(writer, "", self.wnames)
        self._seen: set[tuple[int, int]] = set()

    def check(self, reader: Any, writer: Any, path: str) -> list[str]:
        r, w = _deref(reader, self.rnames), _deref(writer, self.wnames)
        rk, wk = _kind(r), _kind(w)
        if wk == "union":
            # Every branch the writer may have written must be readable.
            return [p for i, branch in enumerate(w) for p in self.check(r, branch, f"{path}[{i}]")]
        if rk == "union":
            for branch in r:
                if not self.check(branch, w, path):
                    return []
            return [f"{path}: no branch of the reader's union reads the writer's {_describe(w)}"]
        if rk in _PRIMITIVES and wk in _PRIMITIVES:
            if rk == wk or rk in _PROMOTIONS.get(wk, set()):
                return []
            return [f"{path}: writer's {wk} cannot be read as {rk}"]
        if rk != wk:
            return [f"{path}: writer's {_describe(w)} cannot be read as {_describe(r)}"]
        if rk == "array":
            return self.check(r["items"], w["items"], path + "[]")
        if rk == "map":
            return self.check(r["values"], w["values"], path + "{}")
        if _short(r) != _short(w):
            return [f"{path}: writer's {wk} {_short(w)} is not the reader's {_short(r)}"]
        if rk == "fixed":
            return [] if r["size"] == w["size"] else [f"{path}: fixed {_short(r)} changed size"]
        if rk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                return [f"{path}: enum {_short(r)} lacks the writer's symbols {missing} and has no default"]
            return []
        key = (id(r), id(w))
        if key in self._seen:  # a recursive type, already being checked
            return []
        self._seen.add(key)
        problems: list[str] = []
        wfields = {f["name"]: f for f in w.get("fields", [])}
        for f in r.get("fields", []):
            where = f"{path}.{f['name']}" if path else f["name"]
            wf = wfields.get(f["name"]) or next(
                (wfields[a] for a in f.get("aliases", []) if a in wfields), None)
            if wf is None:
                if "default" not in f:
                    problems.append(f"{where}: the reader's field has no default and the writer does not write it")
                continue
            problems.extend(self.check(f["type"], wf["type"], where))
        return problems


def _describe(s: Any) -> str:
    k = _kind(s)
    return f"{k} {_short(s)}" if k in ("record", "enum", "fixed") else k


def incompatibilities(reader: Any, writer: Any) -> list[str]:
    """Why ``reader`` cannot read every record ``writer`` may write (empty: it can). Both are the
    schemas' JSON (parsed)."""
    return _Checker(reader, writer).check(reader, writer, "")
