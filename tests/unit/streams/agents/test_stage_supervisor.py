"""A stage's agent that dies stops the worker (streams/agents/common.py stage_supervisor)."""

import asyncio
from types import SimpleNamespace

from mode import OneForOneSupervisor

from streams.agents.common import stage_supervisor
from streams.app import create_app
from streams.settings import Settings


def test_a_dead_agent_crashes_the_app_instead_of_being_restarted_in_place():
    crashed = []

    async def crash(reason):
        crashed.append(reason)

    app = SimpleNamespace(crash=crash)
    supervisor = stage_supervisor(app)()
    reason = asyncio.CancelledError()
    asyncio.run(supervisor.restart_service(SimpleNamespace(crash_reason=reason)))
    assert crashed == [reason]


def test_faust_restarts_a_dead_agent_in_place_by_default():
    app, _ = create_app(Settings(app_id="supervised"))
    assert app.conf.agent_supervisor is OneForOneSupervisor


def test_every_stage_agent_is_supervised_so():
    app, _ = create_app(Settings(app_id="supervised"))
    names = sorted(agent.name for agent in app.agents.values())
    assert {"qlane.preprocess", "qlane.execute", "qlane.mitigate",
            "qlane.variational"} <= set(names)
    for agent in app.agents.values():
        assert agent.supervisor_strategy.__name__ == "StageSupervisor", agent.name
