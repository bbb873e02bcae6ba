"""The JSON Schemas of ``result.json`` and of the audit's ``audit-*.json``
(``harness/schemas/``, shipped in the package), and a validator for them.

Validation uses ``jsonschema`` (draft 2020-12) with a ``referencing`` registry,
so the audit schema's references into the result schema resolve offline. It is
a dev dependency: the harness writes results without it; the tests validate
every result they produce (tests/conftest.py), and so can a user's CI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final

SCHEMA_DIR: Final = Path(__file__).resolve().parent / "schemas"
KINDS: Final = {"result": "result.schema.json", "audit": "audit.schema.json"}
ERRORS_MAX: Final = 20


def schema(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMA_DIR / KINDS[kind]).read_text())
    return data


@cache
def _validator(kind: str) -> Any:
    import jsonschema
    from referencing import Registry, Resource

    resources = [(s["$id"], Resource.from_contents(s)) for s in map(schema, KINDS)]
    registry: Any = Registry().with_resources(resources)
    cls = jsonschema.validators.validator_for(schema(kind))
    return cls(schema(kind), registry=registry, format_checker=cls.FORMAT_CHECKER)


def errors(kind: str, payload: Mapping[str, Any]) -> list[str]:
    """Every way ``payload`` breaks the schema of ``kind`` (``result`` or ``audit``),
    as ``path: message`` lines (at most ERRORS_MAX); empty when it validates."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use {' or '.join(KINDS)}")
    from jsonschema.exceptions import best_match

    out = []
    for top in sorted(_validator(kind).iter_errors(payload), key=lambda e: list(e.path)):
        # Inside an anyOf (a broker or null), the branch that came closest says why.
        e = best_match([top]) or top
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        out.append(f"{where}: {e.message[:300]}")
        if len(out) >= ERRORS_MAX:
            break
    return out


def kind_of(path: Path) -> str | None:
    """``result`` for a result.json, ``audit`` for an audit-*.json, else None."""
    if path.name == "result.json":
        return "result"
    if path.name.startswith("audit-") and path.suffix == ".json":
        return "audit"
    return None
