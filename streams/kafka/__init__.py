"""Talking to Kafka under Faust and aiokafka: topics, connections, ACLs, transactions, table
recovery, transport, flow control, record batches, partitioning and shutdown."""
