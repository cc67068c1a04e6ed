import os
import subprocess
import sys

from streams.app import create_app, faust_settings
from streams.settings import Settings
from streams.workflow import table_store


def test_the_memory_store_is_faust_memory_store_without_table_options(tmp_path, monkeypatch):
    monkeypatch.setattr(table_store.tempfile, "tempdir", str(tmp_path))
    settings = Settings(table_store="memory")
    options = faust_settings(settings)
    assert options["store"] == "memory://"
    assert options["datadir"].startswith(str(tmp_path / table_store.DIRECTORY_PREFIX))
    assert table_store.table_options(settings) is None


def test_rocksdb_options_bound_each_partition_database():
    settings = Settings(table_store="rocksdb", table_write_buffer_mb=2, table_block_cache_mb=16)
    options = table_store.table_options(settings)
    assert options["driver"] == "rocksdict"
    assert options["write_buffer_size"] == 2 * table_store.MIB
    assert options["max_write_buffer_number"] == 2
    assert options["block_cache_size"] == 16 * table_store.MIB


def test_a_rocksdb_app_keeps_its_table_in_a_fresh_directory_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(table_store.tempfile, "tempdir", str(tmp_path))
    settings = Settings(table_store="rocksdb", app_id="store-test")
    first, _ = create_app(settings)
    second, _ = create_app(settings)
    directories = sorted(tmp_path.glob(f"{table_store.DIRECTORY_PREFIX}{os.getpid()}-*"))
    assert len(directories) == 2
    assert {first.conf.datadir, second.conf.datadir} == set(directories)
    assert first.conf.tabledir.is_relative_to(first.conf.datadir)
    store = first.tables["workflows"].data
    assert type(store).__module__ == "faust.stores.rocksdb"
    assert store.rocksdb_options.write_buffer_size == table_store.MIB


def test_directories_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_directory = tmp_path / f"{table_store.DIRECTORY_PREFIX}{dead.stdout.strip()}-abc"
    live_directory = tmp_path / f"{table_store.DIRECTORY_PREFIX}{os.getpid()}-def"
    unrelated = tmp_path / f"{table_store.DIRECTORY_PREFIX}notapid-x"
    for directory in (dead_directory, live_directory, unrelated):
        (directory / "v1").mkdir(parents=True)
    assert table_store.remove_orphans(tmp_path) == [dead_directory]
    assert not dead_directory.exists()
    assert live_directory.exists() and unrelated.exists()


def test_the_table_codecs_read_what_they_cannot_use_as_no_entry():
    from streams.workflow.table_store import TableEntryCodec, TableKeyCodec

    entries, keys = TableEntryCodec(), TableKeyCodec()
    entry = {"state": "done", "attempts": 1, "checkpoint": [{"value": 0.5}]}
    assert entries.loads(entries.dumps(entry)) == entry
    assert keys.loads(keys.dumps("wf-1")) == "wf-1"
    for broken in (b"\xff not json", b"[1]", b'"a string"', b"", b"{"):
        assert entries.loads(broken) is None, broken
    assert keys.loads(b"\xff\xfe") is None and keys.loads(b"[1, 2]") is None


def test_the_workflow_tables_changelog_uses_them():
    from streams.app import create_app
    from streams.settings import Settings
    from streams.workflow.table_store import TABLE_ENTRIES, TABLE_KEYS

    app, _ = create_app(Settings(topic_prefix="codec-test", app_id="qlane-codec-test"))
    table = app.tables["workflows"]
    topic = table.changelog_topic
    assert (topic.key_serializer, topic.value_serializer) == (TABLE_KEYS, TABLE_ENTRIES)
