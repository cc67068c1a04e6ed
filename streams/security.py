"""Connection options for every Kafka client qlane creates: bootstrap servers, TLS, SASL.

One place, so workers, the CLI, replay and the admin client all connect the same way.
"""

from __future__ import annotations

import ssl

from aiokafka.helpers import create_ssl_context

from streams.settings import Settings

TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in TLS_PROTOCOLS:
        return None
    return create_ssl_context(
        cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
    )


def kafka_options(settings: Settings) -> dict:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    options: dict = {
        "bootstrap_servers": settings.broker,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.security_protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password
    return options


def faust_credentials(settings: Settings) -> dict:
    """Faust app settings carrying the same TLS/SASL configuration."""
    import faust

    context = ssl_context(settings)
    if settings.security_protocol in SASL_PROTOCOLS:
        return {"broker_credentials": faust.SASLCredentials(
            username=settings.sasl_username, password=settings.sasl_password,
            mechanism=settings.sasl_mechanism, ssl_context=context,
        )}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}
