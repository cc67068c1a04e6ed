"""qlane's producer: a send that never reached aiokafka's batches fails its transaction, and
one refused for want of room in them is offered again (streams/kafka/transactions.py)."""

import asyncio

import pytest
from aiokafka import TopicPartition
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.kafka.transactions import Producer, TransactionFailed


def test_a_send_that_never_reached_the_accumulator_fails_the_commit(monkeypatch):
    async def refused(self, *args, transactional_id=None):
        # aiokafka message_accumulator.add_message -> KafkaTimeoutError, wrapped by Faust
        raise ProducerSendError("Error while sending: KafkaTimeoutError()")

    monkeypatch.setattr(faust_aiokafka.Producer, "send", refused)

    class Txn:
        def __init__(self):
            self.calls = []

        async def send_offsets_to_transaction(self, offsets, group_id):
            self.calls.append("offsets")

        async def commit_transaction(self):
            self.calls.append("commit")

        async def begin_transaction(self):
            self.calls.append("begin")

    async def go():
        producer = Producer.__new__(Producer)
        txn = Txn()
        producer._transaction_producers = {"t": txn}
        producer._trn_locks = {"t": asyncio.Lock()}
        producer._undelivered, producer._refused = {}, {}
        with pytest.raises(ProducerSendError):
            await producer.send("qlane-workflows-changelog", b"B-var-42", b"{}", None, None,
                                None, transactional_id="t")
        with pytest.raises(TransactionFailed):
            await producer.commit_transactions(
                {"t": {TopicPartition("qlane.stage.variational", 0): 3}}, "qlane")
        return txn.calls

    calls = asyncio.run(go())
    assert "commit" not in calls


def test_a_send_with_no_room_in_the_batches_is_offered_again(monkeypatch):
    """aiokafka's KafkaTimeoutError (no room in the partition's batches within the request
    timeout, while the transaction coordinator's node was lost) crashed the producer buffer
    and the worker (a red-team run). It is sent again, up to FULL_BATCH_RETRY_S."""
    from aiokafka.errors import KafkaTimeoutError

    import streams.kafka.transactions as transactions

    attempts = []

    async def full_twice(self, *args, transactional_id=None):
        attempts.append(transactional_id)
        if len(attempts) <= 2:
            raise ProducerSendError("Error while sending") from KafkaTimeoutError()
        return asyncio.get_running_loop().create_future()

    monkeypatch.setattr(faust_aiokafka.Producer, "send", full_twice)
    producer = Producer.__new__(Producer)
    producer._undelivered, producer._refused = {}, {}
    asyncio.run(producer.send("t", b"k", b"v", None, None, None, transactional_id="t-0"))
    assert len(attempts) == 3 and not producer._refused
    attempts.clear()
    monkeypatch.setattr(transactions, "FULL_BATCH_RETRY_S", 0.0)
    with pytest.raises(ProducerSendError):
        asyncio.run(producer.send("t", b"k", b"v", None, None, None, transactional_id="t-0"))
    assert len(attempts) == 1 and "t-0" in producer._refused
