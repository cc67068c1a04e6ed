"""A producer that knows only the documented wire format gets a result it can read."""

import asyncio
import io
import json
import time
import uuid
from pathlib import Path

import fastavro
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.kafka.compat import stop_consumer

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def plain_schema(name: str):
    return fastavro.parse_schema(json.loads((SCHEMAS / f"{name}.avsc").read_text()))


def plain_fingerprint(schema) -> bytes:
    # fastavro's hex already lists the CRC-64-AVRO bytes in little-endian (frame) order.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def frame(schema, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(b"\xc3\x01" + plain_fingerprint(schema))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def unframe(schema, data: bytes) -> dict:
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == plain_fingerprint(schema)
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)


def test_plain_fastavro_and_aiokafka_client_round_trip(settings, worker):
    request_schema, result_schema = plain_schema("JobRequest"), plain_schema("JobResult")
    workflow_id = f"plain-{uuid.uuid4().hex[:8]}"
    record = {
        "workflow_id": workflow_id, "parent_workflow_id": None,
        "circuit": 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
                   "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n",
        "circuit_format": "qasm2", "parameter_sets": [], "observables": [],
        "shots": 500, "backend": "aer.ideal",
        "mitigation": {"zne": None, "readout": False, "dynamical_decoupling": False},
        "tenant": "plain", "priority": 0, "deadline_ms": None, "cost_limit_usd": None,
        "fallback": [], "seed": None, "submitted_at_ms": int(time.time() * 1000),
        "metadata": {"client": "plain"},
    }
    results_topic = f"{settings.topic_prefix}.results"

    async def go():
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, group_id=None)
        await consumer.start()
        partitions = [TopicPartition(results_topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
        await producer.start()
        await producer.send_and_wait(f"{settings.topic_prefix}.jobs",
                                     value=frame(request_schema, record),
                                     key=workflow_id.encode())
        await producer.stop()
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    for message in messages:
                        if message.key == workflow_id.encode():
                            return unframe(result_schema, message.value)
        finally:
            await stop_consumer(consumer)
        raise AssertionError("no JobResult within 90 s")

    result = asyncio.run(go())
    assert result["workflow_id"] == workflow_id
    assert result["status"] == "succeeded"
    counts = result["circuits"][0]["counts"]
    assert sum(counts.values()) == 500
    assert set(counts) <= {"00", "11"}
