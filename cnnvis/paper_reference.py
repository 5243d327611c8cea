"""The papers' own numbers, taken from the parsed ``reports/paper_reference.yaml`` (its ``tables[].paper_rows``).

A stage that prints a paper's number beside its own reads it from that one
committed file (an input of the stage), never from a constant in the code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cnnvis import ConfigError


def paper_numbers(reference: Any, table_id: str, keys: Sequence[str], columns: Sequence[str],
                  source: str = "paper_reference.yaml") -> dict[str, dict[str, float]]:
    """Row key → {column: number} of the paper rows of table ``table_id``, for each of ``keys``.

    ``ConfigError`` naming ``source`` when the table, a row or a number is missing (a committed file: restore it).
    """
    tables = reference.get("tables") if isinstance(reference, Mapping) else None
    table = next((t for t in tables or () if isinstance(t, Mapping) and t.get("id") == table_id), None)
    if table is None:
        raise ConfigError(f"{source}: no table {table_id!r}; restore the committed file (git checkout {source})")
    rows = {r.get("key") or r.get("label"): r for r in table.get("paper_rows") or () if isinstance(r, Mapping)}
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        row = rows.get(key, {})
        values = {c: row.get(c) for c in columns}
        bad = [c for c, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ConfigError(f"{source}: table {table_id!r} needs paper row {key!r} with number(s) {', '.join(bad)}; "
                              f"restore the committed file (git checkout {source})")
        out[key] = {c: float(v) for c, v in values.items()}
    return out
