"""At the default address (where both `qlane broker` and `qlane kafka` listen) the profile
is asked of the broker: Apache Kafka grants a transactional producer, Tansu does not."""

from __future__ import annotations

import asyncio

import pytest

import streams.settings
from streams.kafka.security import detect_profile
from streams.settings import Settings


def test_the_profile_at_the_default_address_is_the_brokers_own(
    broker_address, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, expected = broker_address
    monkeypatch.setattr(streams.settings, "DEFAULT_BROKER", address)
    monkeypatch.delenv("QLANE_PROFILE", raising=False)
    guessed = Settings(broker=address)
    assert guessed.profile_unsure and guessed.profile == "embedded"

    detected = asyncio.run(detect_profile(guessed))

    assert detected.profile == expected
    assert not detected.profile_unsure  # settled: a client built from it asks no more
    assert detected.effective_processing_guarantee == (
        "exactly_once" if expected == "kafka" else "at_least_once")


def test_a_given_profile_is_not_asked(broker_address, monkeypatch: pytest.MonkeyPatch) -> None:
    address, _ = broker_address
    monkeypatch.setattr(streams.settings, "DEFAULT_BROKER", address)
    given = Settings(broker=address, profile="embedded")
    assert not given.profile_unsure
    assert asyncio.run(detect_profile(given)) is given
