"""Where a worker keeps the workflow table: Faust's memory store, or RocksDB with bounded memory.

The RocksDB store is a cache of the table's changelog, not a second source of truth: every
process opens it in a fresh directory and rebuilds it from the changelog at start, exactly as
the memory store does. A reused directory would hand a restarted worker the writes of
transactions that were aborted when it died (Faust writes the local store before the
transaction commits), and two workers on one host would contend for the same database locks.
What it changes is memory: entries live on disk, and RSS is bounded by the write buffers and
block caches (per table partition) instead of growing about 1 KB per workflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from streams.settings import Settings

DIRECTORY_PREFIX = "qlane-tables-"
MIB = 1024 * 1024


def faust_store_settings(settings: Settings) -> dict:
    """The Faust app settings for the chosen store. Faust's data directory is a fresh one of
    this process's for either store (Faust's default, `<app id>-data` in the working
    directory, was left behind by every worker)."""
    store = "rocksdb://" if settings.table_store == "rocksdb" else "memory://"
    return {"store": store, "datadir": fresh_directory()}


def table_options(settings: Settings) -> dict | None:
    """The per-table RocksDB options (Faust's defaults are 3 × 64 MiB write buffers and a 2 GiB
    block cache per partition database)."""
    if settings.table_store != "rocksdb":
        return None
    return {
        "driver": "rocksdict",
        "write_buffer_size": settings.table_write_buffer_mb * MIB,
        "max_write_buffer_number": 2,
        "target_file_size_base": 4 * settings.table_write_buffer_mb * MIB,
        "block_cache_size": settings.table_block_cache_mb * MIB,
    }


def fresh_directory(parent: Path | None = None) -> str:
    """A new directory for this process, removed at exit; those of dead processes go first."""
    remove_orphans(parent)
    path = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-", dir=parent)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def remove_orphans(parent: Path | None = None) -> list[Path]:
    """Remove the directories left by killed workers (their pid no longer runs)."""
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*-*"):
        pid_text = path.name[len(DIRECTORY_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _running(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True
