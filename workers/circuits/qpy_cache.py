"""QPY sections of prepared jobs, encoded and decoded once per process for repeated templates.

A prepared job's templates travel as QPY: the preparation sandbox encodes them, and every
process the job passes through decodes them (the worker, the simulator process, the execute
and mitigate stages). Jobs of one program share their templates: the transpile cache hands
out the same objects, folding is cached beside it, and the parameter values travel in the
job's JSON header. So most encodes and decodes repeat one another, and both are kept here,
least recently used out, bounded by the bytes of the sections held (a section above a tenth
of the bound is never kept: one hostile program cannot take the cache).

Templates are shared and never modified (PreparedJob.templates); each caller gets a list of
its own. Both caches are locked: the worker's stage threads encode and decode too.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

from cachetools import LRUCache
from qiskit import QuantumCircuit, qpy

from workers.circuits.qpy_bounds import MAX_TEMPLATES, check_section

DEFAULT_MAX_BYTES = 4 << 20


class _SectionCache:
    """What both caches share: entries bounded by the bytes of their sections, least recently
    used out, a section above a tenth of the bound never kept, a lock, hit and miss counts."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._entries: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=lambda entry: entry[-1])
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def _get(self, key, holds=lambda entry: True):
        """The entry for `key` when there is one and `holds(entry)`, counted as a hit."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and holds(entry):
                self.hits += 1
                return entry
            self.misses += 1
            return None

    def _keep(self, key, entry: tuple, size: int) -> None:
        if size * 10 <= self.max_bytes:
            with self._lock:
                self._entries[key] = entry

    @property
    def held_bytes(self) -> int:
        return self._entries.currsize

    def __len__(self) -> int:
        return len(self._entries)


class DecodedSections(_SectionCache):
    """Templates by the QPY bytes they were decoded from; a section is checked against the
    bounds of a prepared job before it is first loaded (workers.circuits.qpy_bounds)."""

    def load(self, section: bytes, max_templates: int = MAX_TEMPLATES) -> list[QuantumCircuit]:
        entry = self._get(section)
        if entry is not None:
            return list(entry[0])
        check_section(section, max_templates=max_templates)
        templates = tuple(qpy.load(io.BytesIO(section)))
        self._keep(section, (templates, len(section)), len(section))
        return list(templates)


    def holds(self, section: bytes) -> bool:
        """Whether `section` is decoded here already (not counted as a hit or a miss)."""
        with self._lock:
            return section in self._entries


def load_uncached(section: bytes, max_templates: int = MAX_TEMPLATES) -> list[QuantumCircuit]:
    """A section's templates, checked and loaded afresh, not kept."""
    check_section(section, max_templates=max_templates)
    return list(qpy.load(io.BytesIO(section)))


class EncodedSections(_SectionCache):
    """QPY bytes by the template objects encoded (identity: the cached entry holds them, so
    their ids cannot be reused while it is there)."""

    def dump(self, templates: Sequence[QuantumCircuit]) -> bytes:
        key = tuple(id(template) for template in templates)
        entry = self._get(key, lambda entry: all(
            a is b for a, b in zip(entry[0], templates, strict=True)))
        if entry is not None:
            return entry[1]
        buffer = io.BytesIO()
        qpy.dump(list(templates), buffer)
        section = buffer.getvalue()
        self._keep(key, (tuple(templates), section, len(section)), len(section))
        return section


DECODED = DecodedSections()
ENCODED = EncodedSections()
