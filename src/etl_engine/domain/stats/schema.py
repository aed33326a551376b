"""JSON Schema pieces that several record types' statistics share.

Why here: the keys they describe are made by this package's shared helpers (``daily.py``
for the day coverage, ``origins.py`` for the per-origin figures and the origin chosen per
day), so their published shape is written once, next to that code, and each type's
``STATISTICS_SCHEMA`` spells out only what is its own. ``$ref`` targets are the shared
``#/$defs/`` entries of ``domain/output_schema.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Schema = dict[str, Any]

LOCAL_DATE_REF: Schema = {"$ref": "#/$defs/localDate"}
COUNT: Schema = {"type": "integer", "minimum": 0}
AMOUNT: Schema = {"type": "number", "minimum": 0}
PERCENT: Schema = {"type": "number", "minimum": 0, "maximum": 100}


def by_local_date(value: Schema, description: str | None = None) -> Schema:
    """A map from local date (``YYYY-MM-DD``) to ``value``."""
    head: Schema = {"type": "object"}
    if description:
        head["description"] = description
    return {**head, "propertyNames": LOCAL_DATE_REF, "additionalProperties": value}


def closed(properties: Mapping[str, Schema], description: str | None = None,
           nullable: bool = False) -> Schema:
    """An object holding exactly these keys, every one required."""
    head: Schema = {"type": ["object", "null"] if nullable else "object"}
    if description:
        head["description"] = description
    return {**head, "required": list(properties), "properties": dict(properties),
            "additionalProperties": False}


def each(names: Iterable[str], value: Schema) -> dict[str, Schema]:
    """The same schema under each name: zone or stage maps."""
    return {name: value for name in names}


def per_origin(figures: Mapping[str, Schema]) -> Schema:
    """``origins``: the named figures per data origin, over all of that origin's records."""
    return {
        "type": "object",
        "description": "Figures per dataOriginPackageName, all of that origin's records.",
        "additionalProperties": closed(figures),
    }


# origins.py's choice of one origin per local day
ORIGIN_BY_DAY: dict[str, Schema] = {
    "origin_by_day": by_local_date({"type": "string", "minLength": 1},
                                   "Local date -> the origin used for that day."),
    "days_with_multiple_origins": COUNT,
}

# daily.py's coverage of additive daily totals: complete and partial days, and sufficiency
DAY_COVERAGE: dict[str, Schema] = {
    "complete_days": {
        **COUNT,
        "description": (
            "Days that had ended when exported; averages, extremes and grades use these only."
        ),
    },
    "partial_days": {**COUNT, "description": "Days still in progress at their export."},
    "partial": {"type": "boolean"},
    "days_detail": by_local_date({"$ref": "#/$defs/dayDetail"}),
    "sufficiency": {"$ref": "#/$defs/daySufficiency"},
}
