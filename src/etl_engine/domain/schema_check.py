"""Is a writer schema readable with our reader schema, and if not, which field breaks it?

Why our own check: fastavro resolves a file against the reader schema record by record and
says only "Schema mismatch: string is not double". An operator reading a quarantine reason
needs the field, and a file with no records would never be checked at all. This walks the
two schemas once (Avro's resolution rules: names and aliases, promotions, unions, defaults)
and names the first reader field that cannot be filled. Paths are built from *our* field
names only, so nothing an uploader chose ends up in a log line or reason file.
"""

from __future__ import annotations

from typing import Any

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes",
                         "string"})
# Avro's promotions: a writer type on the left can be read as any type on the right.
_PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"},
               "float": {"double"}, "string": {"bytes"}, "bytes": {"string"}}
_MAX_DEPTH = 32
_MAX_STEPS = 20_000  # type comparisons per schema pair: ours need a few hundred

Named = dict[str, Any]


def _full(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect(node: Any, namespace: str, out: Named, depth: int = 0) -> None:
    """Every named type of a schema, by full and by short name."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, list):
        for branch in node:
            _collect(branch, namespace, out, depth + 1)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        full = _full(str(node.get("name", "")), str(node.get("namespace") or namespace))
        out.setdefault(full, node)
        out.setdefault(full.rsplit(".", 1)[-1], node)
        namespace = full.rsplit(".", 1)[0] if "." in full else ""
        for field in node.get("fields") or []:
            if isinstance(field, dict):
                _collect(field.get("type"), namespace, out, depth + 1)
    elif kind in ("array", "map"):
        _collect(node.get("items" if kind == "array" else "values"), namespace, out, depth + 1)
    elif isinstance(kind, dict | list):
        _collect(kind, namespace, out, depth + 1)


def _deref(node: Any, named: Named) -> Any:
    if isinstance(node, str) and node not in _PRIMITIVES:
        return named.get(node, named.get(node.rsplit(".", 1)[-1], node))
    if isinstance(node, dict) and not isinstance(node.get("type"), str):
        return _deref(node.get("type"), named)
    if isinstance(node, dict) and node.get("type") in _PRIMITIVES:
        return node["type"]
    return node


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        return str(node.get("type"))
    return str(node)


def _names(node: dict[str, Any]) -> set[str]:
    names = [str(node.get("name", ""))] + [str(a) for a in node.get("aliases") or []]
    return {n.rsplit(".", 1)[-1] for n in names}


class _Pair:
    """Both schemas' named types, for one comparison."""

    def __init__(self, writer: Any, reader: Any) -> None:
        self.wn: Named = {}
        self.rn: Named = {}
        self.budget = _MAX_STEPS
        _collect(writer, "", self.wn)
        _collect(reader, "", self.rn)

    def first_mismatch(self, w: Any, r: Any, path: str, depth: int = 0) -> str | None:
        """The path of the first reader field the writer cannot fill, or None."""
        self.budget -= 1
        if depth > _MAX_DEPTH or self.budget < 0:  # a hostile schema: refuse, don't spin
            return path or "(schema)"
        w, r = _deref(w, self.wn), _deref(r, self.rn)
        wk, rk = _kind(w), _kind(r)
        if wk == "union":  # every branch the writer may use must resolve
            bad = (self.first_mismatch(b, r, path, depth + 1) for b in w)
            return next((b for b in bad if b is not None), None)
        if rk == "union":
            ok = any(self.first_mismatch(w, b, path, depth + 1) is None for b in r)
            return None if ok else path or "(schema)"
        if wk in _PRIMITIVES or rk in _PRIMITIVES:
            same = wk == rk or rk in _PROMOTIONS.get(wk, ())
            return None if same else path or "(schema)"
        if wk != rk:
            return path or "(schema)"
        if rk in ("record", "error"):
            return self._record(w, r, path, depth)
        if rk == "array":
            return self.first_mismatch(w.get("items"), r.get("items"), path + "[]", depth + 1)
        if rk == "map":
            return self.first_mismatch(w.get("values"), r.get("values"), path + "{}",
                                       depth + 1)
        if rk == "enum":
            unknown = set(w.get("symbols") or ()) - set(r.get("symbols") or ())
            return path or "(schema)" if unknown and "default" not in r else None
        if rk == "fixed":
            return None if w.get("size") == r.get("size") else path or "(schema)"
        return path or "(schema)"

    def _record(self, w: dict[str, Any], r: dict[str, Any], path: str,
                depth: int) -> str | None:
        if not _names(w) & _names(r):
            return path or "(schema)"
        by_name = {str(f.get("name")): f for f in w.get("fields") or [] if isinstance(f, dict)}
        for field in r.get("fields") or []:
            name = str(field.get("name"))
            where = f"{path}.{name}" if path else name
            wf = next((by_name[n] for n in [name, *(field.get("aliases") or [])]
                       if n in by_name), None)
            if wf is None:
                if "default" not in field:
                    return where
                continue
            bad = self.first_mismatch(wf.get("type"), field.get("type"), where, depth + 1)
            if bad is not None:
                return bad
        return None


def first_mismatch(writer: Any, reader: Any) -> str | None:
    """None when every file written with ``writer`` reads with ``reader``; else the path
    of the first reader field that breaks it (``stages[].stage``), or ``(schema)``."""
    return _Pair(writer, reader).first_mismatch(writer, reader, "")
