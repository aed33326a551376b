"""The record types the engine knows: one ``RecordTypeSpec`` each, found or registered.

Why a registry: validation, transform, narratives and the record-type contract
(``record_types.py``) used to repeat every type in dicts and ``if`` chains; now they ask
here, once per file, and so do the published training-record schema
(``output_schema.py``) and the drawings of ``inspect --html`` (``ops/report_html.py``). The
shipped types are discovered at import: every module of ``etl_engine.domain.records`` that
defines ``SPEC`` contributes it. A type defined elsewhere (a plugin, a test) joins with
``register`` and leaves with ``unregister``.

Imports stay acyclic: this module imports the type files; they import only the shared
helpers (``checks``, ``wording``, ``stats``) and ``records.spec``, never this module,
``validation``, ``transform`` or ``narratives``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from etl_engine.domain.records.spec import RecordTypeSpec

__all__ = ["SHIPPED", "SPECS", "RecordTypeSpec", "canonical_name", "find", "get", "names",
           "register", "specs", "unregister"]

_SPECS: dict[str, RecordTypeSpec] = {}
_BY_KEY: dict[str, str] = {}  # lower-case name -> name (see ``canonical_name``)
_ordered: tuple[RecordTypeSpec, ...] = ()
_names: tuple[str, ...] = ()  # of _ordered: every message's parse asks for it

SPECS: Mapping[str, RecordTypeSpec] = MappingProxyType(_SPECS)
"""Every known type by name: a live, read-only view."""


def _reorder() -> None:
    global _ordered, _names
    _ordered = tuple(sorted(_SPECS.values(), key=lambda s: (s.order, s.name)))
    _names = tuple(s.name for s in _ordered)


def register(spec: RecordTypeSpec, *, replace: bool = False) -> RecordTypeSpec:
    """Make ``spec`` known; ValueError if its name is taken (unless ``replace``)."""
    if not replace and spec.name in _SPECS:
        raise ValueError(f"record type already registered: {spec.name!r}")
    _SPECS[spec.name] = spec
    _BY_KEY[spec.name.lower()] = spec.name
    _reorder()
    return spec


def unregister(name: str) -> RecordTypeSpec | None:
    """Forget a type (a registered one, usually); returns its spec, None if unknown."""
    spec = _SPECS.pop(name, None)
    if spec is not None:
        _BY_KEY.pop(name.lower(), None)
        _reorder()
    return spec


def find(name: str) -> RecordTypeSpec | None:
    """The spec of a canonical type name (``canonical_name``), None if unknown."""
    return _SPECS.get(name)


def get(name: str) -> RecordTypeSpec:
    """The spec of a canonical type name; KeyError for a type we have no contract for."""
    spec = _SPECS.get(name)
    if spec is None:
        raise KeyError(f"unsupported record type: {name!r}")
    return spec


def specs() -> tuple[RecordTypeSpec, ...]:
    """Every known spec, by ``order`` then name."""
    return _ordered


def names() -> tuple[str, ...]:
    """Every known type name, by ``order`` then name."""
    return _names


@lru_cache(maxsize=1024)
def _name_key(name: str) -> tuple[str, str]:
    """(lookup key, short name) of a spelling: pure string work, so it is cached."""
    short = name.rsplit(".", 1)[-1]
    key = short.replace("_", "").lower()
    if key.startswith("avro"):
        key = key[4:]
    if not key.endswith("record"):
        key += "record"
    return key, short


def canonical_name(name: str) -> str:
    """Map ``BloodGlucoseRecord``, ``AvroBloodGlucoseRecord``, a namespaced Avro name or
    ``blood_glucose`` to the canonical type name; unknown names come back unchanged (their
    last dotted part)."""
    key, short = _name_key(name)
    return _BY_KEY.get(key, short)


def _discover() -> tuple[RecordTypeSpec, ...]:
    """The ``SPEC`` of every module of ``etl_engine.domain.records``, in ``order``."""
    package = importlib.import_module("etl_engine.domain.records")
    found: dict[str, RecordTypeSpec] = {}
    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        spec = getattr(importlib.import_module(info.name), "SPEC", None)
        if not isinstance(spec, RecordTypeSpec):
            continue
        if spec.name in found:
            raise ValueError(f"two modules define record type {spec.name!r}")
        found[spec.name] = spec
    return tuple(sorted(found.values(), key=lambda s: (s.order, s.name)))


SHIPPED: tuple[RecordTypeSpec, ...] = _discover()
"""The types defined in ``etl_engine.domain.records`` (not those registered later)."""
for _spec in SHIPPED:
    register(_spec)
del _spec
