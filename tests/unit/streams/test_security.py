import re
import ssl
from pathlib import Path

import faust

from streams.security import faust_credentials, kafka_options
from streams.settings import Settings

STREAMS = Path(__file__).resolve().parents[3] / "streams"


def test_plaintext_has_only_the_servers():
    options = kafka_options(Settings(broker="k1:9092,k2:9092"))
    assert options == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}
    assert faust_credentials(Settings()) == {}


def test_sasl_ssl_reaches_aiokafka_and_faust():
    settings = Settings(broker="k:9093", security_protocol="SASL_SSL",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="qlane",
                        sasl_password="s3cret")
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("qlane", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert "s3cret" not in repr(settings)  # the password never reaches a log line


def test_ssl_without_sasl():
    options = kafka_options(Settings(security_protocol="SSL"))
    assert isinstance(options["ssl_context"], ssl.SSLContext) and "sasl_mechanism" not in options
    credentials = faust_credentials(Settings(security_protocol="SSL"))["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)


def test_every_kafka_client_in_streams_gets_the_connection_options():
    constructions = 0
    for path in STREAMS.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"AIOKafka(Consumer|Producer|AdminClient)\(", text):
            call = text[match.end():match.end() + 200]
            constructions += 1
            assert "**kafka_options(" in call, f"{path.name}: {call[:80]!r}"
    assert constructions >= 8
