import asyncio

import pytest

import streams.settings
from streams.kafka.topics import TopicNames
from streams.settings import Settings


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


def test_a_poll_fits_in_the_room_above_a_stream_buffers_pause_mark():
    """Faust puts a poll's records into the stream buffers one at a time. Past a buffer's
    pause mark its partitions are no longer fetched, but a record meeting a full buffer
    blocks the delivery of every other topic's records (a backlog of jobs stalled the
    execute and mitigate stages for 16-27 s). The largest poll the setting allows must fit
    between the pause mark and the buffer's size."""
    from streams.app import create_app

    largest = Settings.model_fields["max_poll_records"].metadata
    bound = next(m.le for m in largest if getattr(m, "le", None) is not None)
    with pytest.raises(ValueError):
        Settings(max_poll_records=bound + 1)
    app, runtime = create_app(Settings(max_poll_records=bound))
    assert app.conf.broker_max_poll_records == bound
    for channel in [runtime.topics["execute"], *runtime.lane_channels.values()]:
        queue = channel.queue
        assert queue.maxsize - queue.pressure_high_size >= bound


def test_a_smaller_stream_buffer_needs_smaller_polls():
    Settings(stream_buffer_max=256, max_poll_records=52)
    with pytest.raises(ValueError, match="above the pause mark"):
        Settings(stream_buffer_max=256, max_poll_records=500)
    from streams.app import create_app

    app, runtime = create_app(Settings(stream_buffer_max=256, max_poll_records=52))
    for channel in [runtime.topics["execute"], *runtime.lane_channels.values()]:
        assert channel.queue.maxsize - channel.queue.pressure_high_size >= 52


@pytest.mark.parametrize("cores, expected", [(1, False), (1.5, False), (2, True), (8, True)])
def test_the_simulator_process_is_on_by_default_from_two_usable_cores(
        monkeypatch, cores, expected) -> None:
    import streams.settings as settings_module

    monkeypatch.delenv("QLANE_SIMULATOR_PROCESS", raising=False)
    monkeypatch.setattr(settings_module, "usable_cores", lambda: cores)
    assert Settings().simulator_process is expected
    assert Settings().simulator_process_auto  # re-decided while the worker runs
    monkeypatch.setenv("QLANE_SIMULATOR_PROCESS", "Auto")
    assert Settings().simulator_process is expected
    assert Settings().simulator_process_auto


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("1", True)])
def test_an_explicit_simulator_process_setting_is_kept_on_any_machine(
        monkeypatch, value, expected) -> None:
    import streams.settings as settings_module

    monkeypatch.setattr(settings_module, "usable_cores", lambda: 1 if expected else 64)
    monkeypatch.setenv("QLANE_SIMULATOR_PROCESS", value)
    assert Settings().simulator_process is expected
    assert not Settings().simulator_process_auto


def test_a_simulator_process_setting_that_is_neither_auto_nor_a_boolean_is_refused(
        monkeypatch) -> None:
    monkeypatch.setenv("QLANE_SIMULATOR_PROCESS", "sometimes")
    with pytest.raises(ValueError, match="simulator_process"):
        Settings()


@pytest.mark.parametrize("value, ran, published", [
    (None, False, True), (None, True, False), ("auto", True, False),
    ("true", True, True), ("false", False, False),
])
def test_progress_statuses_are_left_out_by_default_only_for_a_job_that_already_ran(
        monkeypatch, value, ran, published) -> None:
    """`auto`: a job whose batch call was made before it is handled sends no accepted,
    prepared or executing status (they would come with its terminal one)."""
    from types import SimpleNamespace

    from streams.runtime import Runtime, ran_before_handled

    if value is None:
        monkeypatch.delenv("QLANE_STATUS_PROGRESS_EVENTS", raising=False)
    else:
        monkeypatch.setenv("QLANE_STATUS_PROGRESS_EVENTS", value)
    runtime = SimpleNamespace(settings=Settings())
    token = ran_before_handled.set(ran)
    try:
        assert Runtime.publishes_progress(runtime) is published
    finally:
        ran_before_handled.reset(token)


def test_a_status_progress_setting_that_is_neither_auto_nor_a_boolean_is_refused(
        monkeypatch) -> None:
    monkeypatch.setenv("QLANE_STATUS_PROGRESS_EVENTS", "sometimes")
    with pytest.raises(ValueError, match="status_progress_events"):
        Settings()


def test_the_app_id_follows_the_topic_prefix_unless_set():
    """Two deployments told apart by their prefixes shared the default app id `qlane`: one
    consumer group, one table and one set of transactional ids; the second fenced the first
    and crashed it (red-team run)."""
    assert Settings().app_id == "qlane"
    assert Settings(topic_prefix="staging.qlane").app_id == "staging.qlane"
    assert Settings(topic_prefix="staging.qlane", app_id="qlane").app_id == "qlane"


def test_the_default_address_gives_an_unsure_profile_kept_when_nothing_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.brokers.tansu import free_port
    from streams.kafka.security import detect_profile

    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(streams.settings, "DEFAULT_BROKER", address)
    monkeypatch.delenv("QLANE_PROFILE", raising=False)
    guessed = Settings(broker=address)
    assert guessed.profile_unsure
    assert asyncio.run(detect_profile(guessed)).profile == "embedded"
    assert not Settings(broker="127.0.0.1:1").profile_unsure


@pytest.mark.parametrize("value", ['["acme", "beta"]', "acme,beta", " acme , beta ,, "])
def test_tenants_are_a_json_list_or_comma_separated(monkeypatch, value: str) -> None:
    """`QLANE_TENANTS=acme,beta` failed with pydantic's bare "error parsing value"."""
    monkeypatch.setenv("QLANE_TENANTS", value)
    assert Settings().tenants == ["acme", "beta"]


@pytest.mark.parametrize("value", ['{"acme": 50, "beta": 2.5}', "acme=50,beta=2.5"])
def test_tenant_budgets_are_a_json_object_or_name_equals_usd(monkeypatch, value: str) -> None:
    monkeypatch.setenv("QLANE_TENANT_BUDGETS", value)
    assert Settings().tenant_budgets == {"acme": 50.0, "beta": 2.5}


@pytest.mark.parametrize(("name", "value", "message"), [
    ("QLANE_TENANTS", "[acme", "QLANE_TENANTS is not valid JSON"),
    ("QLANE_TENANT_BUDGETS", "acme", "expected tenant=usd"),
    ("QLANE_TENANT_BUDGETS", "{acme", "QLANE_TENANT_BUDGETS is not valid JSON"),
])
def test_a_malformed_tenant_setting_names_itself(monkeypatch, name, value, message) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings()


@pytest.mark.parametrize(("value", "message"), [
    ("acme=50,acme=20", "names 'acme' twice"),
    ('{"acme": 50, "acme": 20}', "names 'acme' twice"),
    ('{"acme": true}', "not an amount in USD"),
])
def test_a_budget_given_twice_or_as_a_boolean_is_refused(monkeypatch, value, message) -> None:
    """`acme=50,acme=20` kept 20 and `{"acme": true}` was a $1 budget, unsaid (a red-team
    run)."""
    monkeypatch.setenv("QLANE_TENANT_BUDGETS", value)
    with pytest.raises(ValueError, match=message):
        Settings()


@pytest.mark.parametrize("name", ["", "x" * 129, "ac\nme"])
def test_a_budget_no_jobs_tenant_can_have_is_refused(name) -> None:
    from streams.kafka.tenants import check_budget_tenant

    with pytest.raises(ValueError, match="which no job's tenant can be"):
        check_budget_tenant(name)
    assert check_budget_tenant("Acme Corp") == "Acme Corp"  # a shared-topic payload's tenant
