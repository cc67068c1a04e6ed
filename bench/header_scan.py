"""What the header pre-scan (streams/kafka/record_batches.py) adds to reading a fetched batch.

For each codec, a batch of typical job records (1 KB values, 3 headers) as a foreign producer
would send it, read the way a worker's fetcher reads it: the guarded batch (header count, then
aiokafka's decode) against aiokafka's decode alone, in one run. A compressed batch is
decompressed twice on the guarded path: once for the count, once by aiokafka.

Run: python bench/header_scan.py [--records N] [--repeat R]
Prints one JSON object: per codec, µs per batch for both paths and their ratio (median of R).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from streams.kafka import record_batches

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def built_batch(codec: int, records: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=64 * 1024 * 1024)
    for offset in range(records):
        value = (b'{"qasm": "OPENQASM 3.0; qubit[2] q; h q[0]; cx q[0], q[1];"}'
                 + os.urandom(256).hex().encode() + b" " * 400)
        builder.append(offset, timestamp=1_700_000_000_000 + offset,
                       key=f"wf-{offset}".encode(), value=value,
                       headers=[("qlane-tenant", b"acme"), ("trace", b"x" * 32),
                                ("content-type", b"avro")])
    return bytes(builder.build())


def read_plain(raw: bytes) -> int:
    return len(list(MemoryRecords(raw).next_batch()))


def read_guarded(raw: bytes) -> int:
    return len(list(record_batches.GuardedMemoryRecords(raw).next_batch()))


def median_us(read, raw: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        read(raw)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=41)
    args = parser.parse_args()
    record_batches.install(64 * 1024 * 1024)
    results = {}
    for name, codec in CODECS.items():
        raw = built_batch(codec, args.records)
        assert read_plain(raw) == read_guarded(raw) == args.records
        plain = guarded = 0.0
        # Alternate the two paths so that noise from other processes falls on both.
        plain_runs, guarded_runs = [], []
        for _ in range(5):
            plain_runs.append(median_us(read_plain, raw, args.repeat))
            guarded_runs.append(median_us(read_guarded, raw, args.repeat))
        plain, guarded = statistics.median(plain_runs), statistics.median(guarded_runs)
        results[name] = {"batch_bytes": len(raw), "plain_us": round(plain, 1),
                         "guarded_us": round(guarded, 1),
                         "guarded_vs_plain": round(guarded / plain, 3)}
    print(json.dumps({"records_per_batch": args.records, "codecs": results}, indent=1))


if __name__ == "__main__":
    main()
