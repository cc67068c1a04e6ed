"""Schema walkers the codec needs beyond fastavro: default filling and a strict type guard.

fastavro's writer is lenient where the Avro spec is not: it truncates floats written to
`int`/`long`, accepts `True` as an int, writes any truthy object as `true`, and neither it
nor its reader range-checks 32-bit `int`s. The guard closes exactly those gaps, and is
compiled once per schema into closures that visit only the int/long/boolean positions.
One leniency is left on purpose: a `double` record field goes through float(), so "0.5"
encodes as 0.5. It loses nothing, and guarding every double costs ~1 µs per JobRequest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from numbers import Integral
from typing import Any

from workers.errors import CorruptRecord

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class Names:
    """Named types of one schema, by full and short name (for by-name references)."""

    def __init__(self, schema: Any) -> None:
        self.types: dict[str, dict] = {}
        self._collect(schema, "")

    def _collect(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch, namespace)
        elif isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "error", "enum", "fixed"):
                full = self._full_name(schema, namespace)
                self.types[full] = schema
                self.types.setdefault(full.rsplit(".", 1)[-1], schema)
                namespace = full.rpartition(".")[0]
            if kind in ("record", "error"):
                for field in schema["fields"]:
                    self._collect(field["type"], namespace)
            elif kind == "array":
                self._collect(schema["items"], namespace)
            elif kind == "map":
                self._collect(schema["values"], namespace)

    @staticmethod
    def _full_name(schema: dict, namespace: str) -> str:
        name = schema["name"]
        if "." in name:
            return name
        namespace = schema.get("namespace", namespace)
        return f"{namespace}.{name}" if namespace else name

    def resolve(self, schema: Any) -> Any:
        """A by-name reference resolved to its definition; anything else unchanged."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return self.types[schema]
        if isinstance(schema, dict) and schema.get("type") not in (None, *PRIMITIVES):
            return schema
        if isinstance(schema, dict):
            return schema["type"]  # {"type": "int"} is just "int"
        return schema


# --- fill_defaults ---------------------------------------------------------------------
def fill_defaults(schema: dict, partial: Any, names: Names, path: str = "") -> dict:
    """A complete record of `schema`: missing fields take (a copy of) their default."""
    if not isinstance(partial, dict):
        raise CorruptRecord(f"{path or schema['name']}: expected a record, got {_kind(partial)}")
    fields = {field["name"]: field for field in schema["fields"]}
    unknown = sorted(set(partial) - set(fields))
    if unknown:
        raise CorruptRecord(f"{path or schema['name']}: unknown field(s) {', '.join(unknown)}")
    full = {}
    for name, field in fields.items():
        where = f"{path}.{name}" if path else name
        if name in partial:
            full[name] = _fill_value(field["type"], partial[name], names, where)
        elif "default" in field:
            full[name] = _fill_value(field["type"], copy.deepcopy(field["default"]), names, where)
        else:
            raise CorruptRecord(f"{where}: required field is missing")
    return full


def _fill_value(schema: Any, value: Any, names: Names, path: str) -> Any:
    schema = names.resolve(schema)
    if isinstance(schema, list):
        records = [b for b in map(names.resolve, schema) if _is_record(b)]
        if isinstance(value, dict) and len(records) == 1:
            return fill_defaults(records[0], value, names, path)
        return value
    if not isinstance(schema, dict):
        return value
    kind = schema["type"]
    if kind in ("record", "error"):
        return fill_defaults(schema, value, names, path)
    if kind == "array" and isinstance(value, list):
        return [_fill_value(schema["items"], v, names, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "map" and isinstance(value, dict):
        return {
            k: _fill_value(schema["values"], v, names, f"{path}[{k!r}]") for k, v in value.items()
        }
    return value


def _is_record(schema: Any) -> bool:
    return isinstance(schema, dict) and schema["type"] in ("record", "error")


def _kind(value: Any) -> str:
    return type(value).__name__


# --- strict type guard -----------------------------------------------------------------
class BadValue(ValueError):
    """A value the spec forbids at `path` (a list of field names, innermost last)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def __str__(self) -> str:
        return f"{'.'.join(self.path)}: {self.message}" if self.path else self.message


Check = Callable[[Any], None]


def compile_guard(schema: Any, names: Names, kinds: frozenset[str]) -> Check | None:
    """A checker that raises BadValue for a value of a type in `kinds` the spec forbids.

    `kinds` is a subset of {"int", "long", "boolean"}. Returns None when the schema has no
    such position, so callers skip the walk entirely.
    """
    return _guard(schema, names, kinds, building=set())


def _guard(schema: Any, names: Names, kinds: frozenset[str], building: set[int]) -> Check | None:
    schema = names.resolve(schema)
    if isinstance(schema, str):
        if schema not in kinds:
            return None
        return _check_boolean if schema == "boolean" else _integer_check(schema)
    if isinstance(schema, list):
        others = [b for b in map(names.resolve, schema) if b != "null"]
        if len(others) != 1:
            return None  # only ["null", X] unions occur here; others are left to fastavro
        return _optional(_guard(others[0], names, kinds, building))
    kind = schema["type"]
    if kind in ("record", "error"):
        if id(schema) in building:  # a recursive type: not worth guarding
            return None
        building.add(id(schema))
        try:
            fields = [
                (f["name"], _guard(f["type"], names, kinds, building)) for f in schema["fields"]
            ]
        finally:
            building.discard(id(schema))
        return _record([(name, check) for name, check in fields if check is not None])
    if kind == "array":
        return _each(_guard(schema["items"], names, kinds, building), iter)
    if kind == "map":
        return _each(_guard(schema["values"], names, kinds, building), _values)
    return None


def _record(checks: list[tuple[str, Check]]) -> Check | None:
    if not checks:
        return None

    def check_record(value: Any) -> None:
        if not isinstance(value, dict):
            return  # not a record: fastavro itself rejects it
        for name, check in checks:
            if name in value:
                try:
                    check(value[name])
                except BadValue as bad:
                    bad.path.insert(0, name)
                    raise

    return check_record


def _optional(inner: Check | None) -> Check | None:
    if inner is None:
        return None

    def check_optional(value: Any) -> None:
        if value is not None:
            inner(value)

    return check_optional


def _each(inner: Check | None, values_of: Callable[[Any], Any]) -> Check | None:
    if inner is None:
        return None

    def check_each(value: Any) -> None:
        try:
            values = values_of(value)
        except (TypeError, AttributeError):
            return  # wrong container type: fastavro itself rejects it
        for item in values:
            inner(item)

    return check_each


def _values(mapping: Any) -> Any:
    return mapping.values()


def _integer_check(kind: str) -> Check:
    low, high = _RANGES[kind]

    def check_integer(value: Any) -> None:
        if value.__class__ is not int:
            # numpy integers are fine; bool and float (silently truncated by fastavro) are not
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise BadValue(f"expected {kind}, got {_kind(value)}")
            value = int(value)
        if not low <= value <= high:
            raise BadValue(f"{value} is out of range for {kind}")

    return check_integer


def _check_boolean(value: Any) -> None:
    if value is True or value is False:
        return
    cls = value.__class__
    if cls.__module__ == "numpy" and cls.__name__ in ("bool", "bool_"):
        return
    raise BadValue(f"expected boolean, got {_kind(value)}")
