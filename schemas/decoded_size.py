"""How much memory a datum would take once decoded, found without decoding it.

Avro spends almost nothing on an empty value: an empty array is one byte, so a 1 MB
JobRequest can hold a million observables with no terms. fastavro builds each as a dict and
a list, and that record took 253 MB and 1.4 CPU s to decode (measured; a 16 MB one on the
embedded broker, which has no record size limit, would take 4 GB). No reader option bounds
it, so before fastavro reads a large datum this walks it by the writer schema, adding up
what CPython would allocate, and stops at the budget. Runs of fixed-width items are
skipped in one step, so the walk costs a step per variable-width value and ends early.

The sizes are CPython 3.11's on 64-bit builds: an estimate, not a measurement. Against
tracemalloc it came out 0.99-1.02 times the decoded size of large JobRequests (terms,
parameter sets, metadata, a long circuit, empty observables); it is high where CPython
shares an object (every empty string is one). A record's dict was counted at 64 bytes and
24 a field where CPython's takes 184 up to five fields: empty observables came out at 0.61
of their size, so 210,000 of them (52 MB decoded, from a 210 KB record) passed a 32 MiB
budget (a red-team run).
"""

from __future__ import annotations

from typing import Any

from workers.errors import DecodedTooLarge

_LIST = 56
_SLOT = 8
_DICT = 64
_ENTRY = 24
# A dict filled key by key, as fastavro builds a record: its table doubles from 8 slots,
# two thirds of them usable (tracemalloc: 184 bytes up to 5 keys, 272 to 10, 464 to 21).
_DICT_TABLE_SLOTS = 8
_DICT_BYTES_PER_SLOT = 12
_DICT_BASE = 96
_STR = 49
_BYTES = 33
_FLOAT = 24
_INT = 28
_SHARED_INTS = (-5, 256)
_FIXED_WIDTH = {"null": 0, "float": 4, "double": 8}
_ITEM_COST = {"null": 0, "boolean": 0, "int": _INT, "long": _INT, "float": _FLOAT,
              "double": _FLOAT}


class _Walk:
    def __init__(self, data: bytes, position: int, named: dict[str, Any], budget: int) -> None:
        self.data = data
        self.position = position
        self.named = named
        self.budget = budget
        self.cost = 0

    def add(self, cost: int) -> None:
        self.cost += cost
        if self.cost > self.budget:
            raise DecodedTooLarge(
                f"the datum would take more than {self.budget >> 20} MiB once decoded "
                f"({len(self.data)} bytes on the wire)")

    def varint(self) -> int:
        data, position, shift, value = self.data, self.position, 0, 0
        while True:
            if position >= len(data) or shift > 63:
                raise _Truncated
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        self.position = position
        return (value >> 1) ^ -(value & 1)

    def skip(self, count: int) -> None:
        if count < 0 or self.position + count > len(self.data):
            raise _Truncated
        self.position += count

    def value(self, schema: Any) -> None:
        if isinstance(schema, str):
            if schema in _ITEM_COST:
                if schema in _FIXED_WIDTH:
                    self.skip(_FIXED_WIDTH[schema])
                elif schema == "boolean":
                    self.skip(1)
                elif _SHARED_INTS[0] <= self.varint() <= _SHARED_INTS[1]:
                    return  # CPython's one object for each small integer: nothing allocated
                self.add(_ITEM_COST[schema])
                return
            if schema in ("string", "bytes"):
                length = self.varint()
                self.skip(length)
                self.add((_STR if schema == "string" else _BYTES) + length)
                return
            schema = self.named[schema]
        if isinstance(schema, list):
            branch = self.varint()
            if not 0 <= branch < len(schema):
                raise _Truncated
            self.value(schema[branch])
            return
        kind = schema["type"]
        if kind == "record":
            self.add(record_bytes(len(schema["fields"])))
            for field in schema["fields"]:
                self.value(field["type"])
        elif kind == "array":
            self.blocks(schema["items"], entry=_SLOT)
        elif kind == "map":
            self.add(_DICT)
            self.blocks(schema["values"], entry=_ENTRY, keyed=True)
        elif kind == "enum":
            self.varint()
        elif kind == "fixed":
            self.skip(schema["size"])
            self.add(_BYTES + schema["size"])
        else:
            self.value(kind)  # {"type": "long", ...} and the like

    def blocks(self, items: Any, *, entry: int, keyed: bool = False) -> None:
        self.add(_LIST if not keyed else 0)
        width = _FIXED_WIDTH.get(items) if isinstance(items, str) and not keyed else None
        while True:
            count = self.varint()
            if count == 0:
                return
            if count < 0:
                count = -count
                self.varint()  # the block's size in bytes: walked item by item all the same
            if width is not None:
                self.add(count * (entry + _ITEM_COST[items]))
                self.skip(count * width)
                continue
            for _ in range(count):
                self.add(entry)
                if keyed:
                    length = self.varint()
                    self.skip(length)
                    self.add(_STR + length)
                self.value(items)


def record_bytes(fields: int) -> int:
    """What CPython takes for a dict of `fields` keys filled one by one (keys shared)."""
    slots = _DICT_TABLE_SLOTS
    while 2 * slots // 3 < fields:
        slots *= 2
    return _DICT_BASE + _DICT_BYTES_PER_SLOT * slots


class _Truncated(Exception):
    """The datum ends or breaks before the walk does: left for fastavro to report."""


def check_decoded_size(schema: dict, data: bytes, position: int, budget: int) -> int:
    """Raise DecodedTooLarge when the datum of `schema` (a fastavro-parsed writer schema)
    starting at `position` of `data` would take more than `budget` bytes decoded; else the
    bytes it would take. A datum that is malformed is left for the reader to refuse (the
    bytes walked until it broke)."""
    walk = _Walk(data, position, schema.get("__named_schemas", {}), budget)
    try:
        walk.value(schema)
    except _Truncated:
        pass
    return walk.cost
