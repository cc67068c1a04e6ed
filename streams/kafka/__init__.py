"""Talking to Kafka under Faust and aiokafka: topics, connections, ACLs, transactions, table
recovery, transport, flow control, record batches, partitioning and shutdown."""

from streams.kafka import rebootstrap

# Every aiokafka client of a process that talks to Kafka through qlane (workers, clients,
# the CLI) asks its bootstrap addresses again when no known broker answers.
rebootstrap.install()
