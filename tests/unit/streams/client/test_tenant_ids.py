"""A tenant's workflow ids start with `<tenant>.`: the client keeps to it before sending."""

from __future__ import annotations

import asyncio

import pytest

from streams.client import Estimator, job_request
from streams.client.kafka import Client, own_ids
from streams.settings import Settings

SETTINGS = Settings(broker="127.0.0.1:1")


def test_the_primitives_put_their_job_ids_in_the_tenants_ids():
    estimator = Estimator(settings=SETTINGS, tenant="acme")
    assert estimator._job_id("nightly-7") == "acme.nightly-7"
    assert estimator._job_id("acme.nightly-7") == "acme.nightly-7"  # not twice
    assert estimator._job_id(None).startswith("acme.qlane-")
    assert Estimator(settings=SETTINGS)._job_id("nightly-7") == "nightly-7"


def test_the_client_refuses_another_tenants_id_before_sending():
    own_ids(SETTINGS, "qlane.jobs.acme-high", "acme.1")
    own_ids(SETTINGS, "qlane.jobs", "anything")  # the operators' shared topics
    for workflow_id in ("rival.1", "nightly-7.0", "acme"):
        with pytest.raises(ValueError, match="starts with 'acme.'"):
            own_ids(SETTINGS, "qlane.jobs.acme", workflow_id)
    client = Client(SETTINGS, tenant="acme")  # never started: refused before any send
    with pytest.raises(ValueError):
        asyncio.run(client.submit(job_request(workflow_id="x", circuit="x", tenant="acme"),
                                  client.jobs_topic("acme")))
    with pytest.raises(ValueError):
        asyncio.run(client.cancel("x", "acme"))


def test_a_tenants_client_sends_to_its_tenants_topics_by_default(monkeypatch):
    """`Client(settings, tenant="acme").submit()` and `.cancel()` sent to the shared topics:
    refused by ACLs, or run without a copy on acme's own topics (a red-team run)."""
    from types import SimpleNamespace

    sent = []

    async def send_and_wait(topic, value, key):
        sent.append(topic)

    async def found(_topic):
        return None

    client = Client(SETTINGS, tenant="acme")
    client.producer = SimpleNamespace(send_and_wait=send_and_wait)
    monkeypatch.setattr(client, "_check_tenant_topic", found)
    asyncio.run(client.submit(job_request(workflow_id="acme.1", circuit="x", tenant="acme")))
    asyncio.run(client.submit(job_request(workflow_id="acme.2", circuit="x", tenant="acme",
                                          priority=5)))
    asyncio.run(client.cancel("acme.1"))
    assert sent == ["qlane.jobs.acme", "qlane.jobs.acme-high", "qlane.jobs.acme-high"]
    shared = Client(SETTINGS)
    shared.producer = client.producer
    asyncio.run(shared.submit(job_request(workflow_id="x", circuit="x")))
    assert sent[-1] == "qlane.jobs"


def test_a_tenant_topic_missing_from_one_metadata_answer_is_asked_for_again(monkeypatch):
    """A topic just created can be missing from a metadata answer while its leaders are
    elected: one miss is no UnknownTenant; three are, and nothing is cached for them."""
    from types import SimpleNamespace

    import streams.client.kafka as client_module
    from streams.client.errors import UnknownTenant

    answers = iter([set(), {0, 1, 2, 3}])
    asked = []

    async def listed(_client, topic):
        asked.append(topic)
        return next(answers, set())

    monkeypatch.setattr(client_module, "listed_partitions", listed)
    monkeypatch.setattr(client_module, "TOPIC_LOOKUP_PAUSE_S", 0)
    client = Client(SETTINGS, tenant="acme")
    client.producer = SimpleNamespace(client=None)
    asyncio.run(client._check_tenant_topic("qlane.jobs.acme"))
    assert asked == ["qlane.jobs.acme"] * 2
    asyncio.run(client._check_tenant_topic("qlane.jobs.acme"))  # found once: kept
    assert len(asked) == 2
    with pytest.raises(UnknownTenant):
        asyncio.run(client._check_tenant_topic("qlane.jobs.ghost"))
    assert asked[2:] == ["qlane.jobs.ghost"] * 3
    asyncio.run(client._check_tenant_topic("qlane.jobs"))  # the shared topic: not asked
    assert len(asked) == 5


def test_the_client_refuses_a_variational_evaluations_id_on_any_topic():
    """The workers refuse it (its cost events would share a key with the loop's evaluation):
    the client says so before sending."""
    for topic in ("qlane.jobs", "qlane.jobs.acme"):
        with pytest.raises(ValueError, match="variational loop's evaluation"):
            own_ids(SETTINGS, topic, "acme.v1#eval3")
    own_ids(SETTINGS, "qlane.jobs", "v1#evaluate")


def test_the_client_refuses_an_id_past_the_keys_length_limit_before_sending():
    """The workers refuse it; one of 17,000 bytes got no status, and its client waited out
    its whole timeout (a red-team run)."""
    own_ids(SETTINGS, "qlane.jobs", "x" * 1024)
    own_ids(SETTINGS, "qlane.jobs.acme", "acme." + "é" * 509)
    for topic, workflow_id in (("qlane.jobs", "x" * 1025), ("qlane.jobs", ""),
                               ("qlane.jobs.acme", "acme." + "x" * 17_000)):
        with pytest.raises(ValueError, match="a workflow id must be 1 to 1024 bytes"):
            own_ids(SETTINGS, topic, workflow_id)
