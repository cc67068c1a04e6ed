"""Encode+decode time of a typical JobRequest: qlane's Codec vs plain json vs the avro package.

Run: python bench/codec_bench.py [--number N] [--repeat R]
Prints one JSON object of microseconds per encode+decode (median of R runs of N iterations).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import timeit
from collections.abc import Callable

import avro.io
import avro.schema
import fastavro

from schemas.codec import codec, fill_defaults, schema_path

TYPICAL_QASM = """OPENQASM 3.0;
include "stdgates.inc";
// ansatz: 2 layers
input float[64] phi;
input float[64] theta;
qubit[2] q;
bit[2] c;
h q[0];
ry(theta) q[0];
ry(phi) q[1];
cx q[0], q[1];
rz(theta) q[1];
cx q[0], q[1];
ry(phi) q[0];
rx(theta) q[1];
barrier q[0], q[1];
c[0] = measure q[0];
c[1] = measure q[1];
"""


def typical_job_request() -> dict:
    """~300-byte QASM, 3 parameter sets, 2 observables of 2 terms; the rest defaults."""
    return fill_defaults(
        "JobRequest",
        {
            "workflow_id": "wf-2f6c1a9e-6b1d-4c1e-9a57-3f0d2f1b8c11",
            "circuit": TYPICAL_QASM,
            "parameter_sets": [[0.1, 0.7], [0.2, 1.4], [0.3, 2.1]],
            "observables": [
                {"terms": [{"pauli": "ZZ", "coeff": 0.5}, {"pauli": "XX", "coeff": 1.0}]},
                {"terms": [{"pauli": "IZ", "coeff": 1.0}, {"pauli": "ZI", "coeff": -0.25}]},
            ],
            "shots": 4096,
            "tenant": "chem-team",
            "submitted_at_ms": 1763737200000,
        },
    )


def _median_us(round_trip: Callable[[], object], number: int, repeat: int) -> float:
    round_trip()  # warm up caches before timing
    runs = timeit.repeat(round_trip, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def measure_codec_us(number: int = 20_000, repeat: int = 5) -> float:
    """Microseconds per Codec.encode + Codec.decode of the typical JobRequest."""
    job, jobs = typical_job_request(), codec("JobRequest")
    return _median_us(lambda: jobs.decode(jobs.encode(job)), number, repeat)


def measure_fastavro_raw_us(number: int = 20_000, repeat: int = 5) -> float:
    """The floor: fastavro schemaless write + read alone, no framing or checks."""
    job = typical_job_request()
    schema = fastavro.parse_schema(json.loads(schema_path("JobRequest").read_text()))

    def round_trip() -> dict:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, job)
        return fastavro.schemaless_reader(io.BytesIO(out.getvalue()), schema, None)

    return _median_us(round_trip, number, repeat)


def measure_json_us(number: int = 20_000, repeat: int = 5) -> float:
    job = typical_job_request()
    return _median_us(lambda: json.loads(json.dumps(job).encode()), number, repeat)


def measure_avro_pkg_us(number: int = 2_000, repeat: int = 5) -> float:
    """The avro package, framed the same way (its DatumWriter also validates)."""
    job = typical_job_request()
    schema = avro.schema.parse(schema_path("JobRequest").read_text())
    header = b"\xc3\x01" + schema.fingerprint("CRC-64-AVRO")
    writer, reader = avro.io.DatumWriter(schema), avro.io.DatumReader(schema)

    def round_trip() -> dict:
        out = io.BytesIO()
        out.write(header)
        writer.write(job, avro.io.BinaryEncoder(out))
        data = io.BytesIO(out.getvalue())
        data.seek(len(header))
        return reader.read(avro.io.BinaryDecoder(data))

    return _median_us(round_trip, number, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="iterations per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the median is reported")
    args = parser.parse_args()
    n, r = args.number, args.repeat
    result = {
        "codec_us": measure_codec_us(n, r),
        "fastavro_raw_us": measure_fastavro_raw_us(n, r),
        "json_us": measure_json_us(n, r),
        "avro_pkg_us": measure_avro_pkg_us(max(n // 10, 1), r),
    }
    print(json.dumps({k: round(v, 2) for k, v in result.items()}))


if __name__ == "__main__":
    main()
