"""Dotted field paths into seed rows: `conversations.0.value` is the `value` of the first entry of the
`conversations` list, as in OpenThoughts3's chat rows.

A name that is itself a column is read as that column, dots and all. Each step after the first is a
list position (digits) or a key of an object. A row where the path runs out (a list too short, a key
absent, a null on the way) has no value there (None), so the caller's rule for a missing value
applies, naming the row. A path that cannot fit the data's shape at all (a position into text, a key
a record type lacks) is a ValueError naming the field and what is there instead.

Tables are walked column by column in Arrow, so a set of a million chat rows is never turned into
Python objects beyond the one field asked for.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def steps(name: str) -> list[str | int]:
    """The path's steps: list positions as ints, keys as text."""
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def _kind(value: Any) -> str:
    return "text" if isinstance(value, str) else type(value).__name__


def value_at(row: dict, name: str, where: str, key: str) -> Any:
    """The value `name` points at in one row, or None where the path runs out.

    ValueError (naming `where`, the row, and `key`, the config key) when a step meets a value it
    cannot step into.
    """
    if name in row or "." not in name:
        return row.get(name)
    value: Any = row
    walked = []
    for step in steps(name):
        if value is None:
            return None
        if isinstance(value, dict):
            value = value.get(str(step))
        elif isinstance(value, list) and isinstance(step, int):
            value = value[step] if step < len(value) else None
        else:
            at = ".".join(map(str, walked)) or "the row"
            raise ValueError(
                f"{where}: field '{name}' ({key}) does not resolve: '{at}' holds {_kind(value)}, "
                f"which has no {'position' if isinstance(step, int) else 'key'} '{step}'; check the path."
            )
        walked.append(step)
    return value


def column_at(table: pa.Table, name: str, label: str, key: str) -> pa.ChunkedArray:
    """The column `name` points at in `table` (null where the path runs out in a row).

    ValueError naming `label` (the file or dataset), the field and `key` when the path does not fit
    the table's schema; its message lists the fields there are at the step that failed.
    """
    if name in table.column_names:
        return table.column(name)
    parts = steps(name)
    if parts[0] not in table.column_names:
        raise ValueError(
            f"{label} has no field '{parts[0]}' (named in {key}); its fields are: {', '.join(table.column_names)}."
        )
    column = table.column(parts[0])
    walked = [parts[0]]
    for step in parts[1:]:
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            if not isinstance(step, int):
                raise _misfit(label, name, key, walked, "a list", f"key '{step}'; use a position (0, 1, ...)")
            # a row whose list is too short has no value here, as a missing key has none
            long_enough = pc.fill_null(pc.greater(pc.list_value_length(column), step), False)
            column = pc.list_element(pc.if_else(long_enough, column, pa.scalar(None, kind)), step)
        elif pa.types.is_struct(kind):
            keys = [kind.field(i).name for i in range(kind.num_fields)]
            if str(step) not in keys:
                raise _misfit(label, name, key, walked, "records", f"key '{step}'; its keys are: {', '.join(keys)}")
            column = pc.struct_field(column, str(step))
        else:
            raise _misfit(
                label, name, key, walked, str(kind), f"{'position' if isinstance(step, int) else 'key'} '{step}'"
            )
        walked.append(step)
    return column


def _misfit(label: str, name: str, key: str, walked: list, holds: str, lacks: str) -> ValueError:
    at = ".".join(map(str, walked))
    return ValueError(f"{label}: field '{name}' ({key}) does not resolve: '{at}' holds {holds}, which has no {lacks}.")


def equals(value: Any, wanted: str) -> bool:
    """Whether a row's filter value is `wanted`: its text form equal, so a number or a flag matches too."""
    if value is None:
        return False
    if isinstance(value, bool):
        return str(value).lower() == wanted.lower()
    return str(value) == wanted


def filter_mask(column: pa.ChunkedArray, wanted: str, label: str, name: str, key: str) -> pa.ChunkedArray:
    """Per row, whether the column's value equals `wanted` as `equals` decides (nulls: no)."""
    text = wanted.lower() if pa.types.is_boolean(column.type) else wanted  # Arrow writes flags as true/false
    try:
        column = pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ValueError(
            f"{label}: field '{name}' ({key}) holds {column.type}; a filter field must hold text, numbers or flags."
        ) from None
    return pc.fill_null(pc.equal(column, text), False)
