"""Faust's aiokafka transport with a configurable consumer fetch wait.

Faust hard-codes `fetch_max_wait_ms=1500`. On a broker that does not end a waiting fetch
when data arrives (Tansu), every stage then waits up to 1.5 s per hop. This transport,
registered as the `qlane://` URL scheme, sets the wait from the app's settings.
"""

from __future__ import annotations

import aiokafka
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import transactions

SCHEME = "qlane"


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "qlane_fetch_max_wait_ms", None)
        if wait_ms is not None:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


# Exactly-once fixes (streams/transactions.py): its producer and transaction manager.
transactions.install(Transport)


TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
