import pytest

from streams.settings import Settings
from streams.topics import TopicNames


def test_profile_follows_the_broker_unless_set(monkeypatch):
    monkeypatch.delenv("QLANE_BROKER", raising=False)
    monkeypatch.delenv("QLANE_PROFILE", raising=False)
    assert Settings().profile == "embedded"
    assert Settings(broker="kafka-1:9092").profile == "kafka"
    assert Settings(broker="127.0.0.1:5555", profile="embedded").profile == "embedded"
    monkeypatch.setenv("QLANE_BROKER", "kafka-2:9092")
    assert Settings().profile == "kafka"


def test_fetch_wait_defaults_per_profile():
    assert Settings(profile="embedded").effective_fetch_max_wait_ms < 100
    assert Settings(broker="k:9092").effective_fetch_max_wait_ms >= 100
    assert Settings(broker="k:9092", fetch_max_wait_ms=7).effective_fetch_max_wait_ms == 7


def test_topic_names_use_the_prefix():
    names = TopicNames.from_settings(Settings(topic_prefix="acme"))
    assert names.jobs == "acme.jobs"
    assert names.execute == "acme.stage.execute"
    assert names.by_short_name("results") == "acme.results"
    assert names.by_short_name("stage.mitigate") == "acme.stage.mitigate"
    assert names.jobs_high == "acme.jobs-high" and names.execute_low == "acme.stage.execute-low"
    assert len(set(names.all())) == len(names.all()) == 14  # 10 topics + 2 lanes x 2 stages


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("kafka://localhost:9092", "localhost:9092"),
        ("kafka://a:1,kafka://b:2", "a:1,b:2"),
        ("a:1, b:2", "a:1,b:2"),
        ("a:1;b:2", "a:1,b:2"),
        ("KAFKA://[::1]:9092/", "[::1]:9092"),
    ],
)
def test_broker_accepts_faust_urls_and_lists(given, expected):
    assert Settings(broker=given).broker == expected


@pytest.mark.parametrize("given", ["localhost", "http://a:1", "", "a:port"])
def test_broker_that_is_not_host_port_is_refused(given):
    with pytest.raises(ValueError, match="broker|scheme"):
        Settings(broker=given)
