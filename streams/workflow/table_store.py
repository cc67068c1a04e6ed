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
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from faust.serializers import codecs

from streams.settings import Settings

log = logging.getLogger("qlane")

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


# --- what the table's changelog may hold -------------------------------------------------
class _TableCodec(codecs.Codec):
    """JSON for the workflow table's changelog that never raises on what it reads: a value
    that does not decode, or decodes to something other than the `kind` qlane writes, reads
    as None (no entry). The changelog is internal, but one forged or broken record of it
    (the embedded broker has no ACLs) made every worker fail: a list where an entry belongs
    failed the stage that read it, bytes that are not UTF-8 JSON stopped table recovery for
    good (Faust logs the error and never completes), again at every start."""

    kind: type = object

    def _loads(self, s: bytes):
        try:
            value = json.loads(s)
        except (TypeError, ValueError, RecursionError) as error:  # UnicodeDecodeError is a
            # ValueError; RecursionError: nested past the stack (a forged record)
            log.warning("workflow table: ignored a changelog record that is not JSON (%s)",
                        type(error).__name__)
            return None
        if not isinstance(value, self.kind):
            log.warning("workflow table: ignored a changelog %s that is a %s",
                        self.part, type(value).__name__)
            return None
        return value

    def _dumps(self, obj) -> bytes:
        return json.dumps(obj).encode()


class TableKeyCodec(_TableCodec):
    kind, part = str, "key"


class TableEntryCodec(_TableCodec):
    kind, part = dict, "value"


TABLE_KEYS, TABLE_ENTRIES = "qlane_table_key", "qlane_table_entry"
codecs.register(TABLE_KEYS, TableKeyCodec())
codecs.register(TABLE_ENTRIES, TableEntryCodec())


def workflow_table(app, name: str, **options):
    """The app's table `name` (as `app.Table(name, default=None, ...)`), its keys and entries
    read and written with the codecs above: set before the app registers it, which makes
    its changelog topic with the table's serializers."""
    table = app.conf.Table(app, name=name, default=None, beacon=app.tables.beacon, **options)
    table.key_serializer = TABLE_KEYS
    table.value_serializer = TABLE_ENTRIES
    return app.tables.add(table)
