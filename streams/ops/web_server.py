"""The worker's web port: Faust's aiohttp server, with its connections bounded.

aiohttp keeps a connection that never finishes its request for its keep-alive timeout (an
hour), and takes as many as come: 20,000 idle connections to the port used up the worker's
file descriptors, its own work then failed (good jobs dead-lettered as `OSError: Too many
open files`) and `/` stopped answering (a red-team run). Here a connection is closed when it
has not sent a whole request within `web_idle_timeout_s`, and past `web_max_connections`
open at once new ones are closed as they come (up to twice as many are held when they
arrive in one burst). Faust's `/table` and `/router` views (a
workflow's table entry, with its error text, for anyone who asks) are not served
(`streams.app.faust_settings`).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from faust.web.drivers import aiohttp as faust_aiohttp

from streams.ops import metrics

log = logging.getLogger("qlane")


class Refused(asyncio.Protocol):
    """A connection past the limit: closed as it comes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        metrics.WEB_CONNECTIONS_REFUSED.inc()
        transport.abort()


class ConnectionLimit:
    """aiohttp's Server (the protocol factory of the listening socket), refusing
    connections while `limit` are open."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server = server
        self._limit = limit
        self._told = False

    def __getattr__(self, name: str):
        return getattr(self._server, name)

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._server.connections) < self._limit:
            self._told = False
            return self._server()
        if not self._told:
            self._told = True
            log.warning("the web port holds %d connections, its limit "
                        "(QLANE_WEB_MAX_CONNECTIONS): new ones are closed until some end",
                        self._limit)
        return Refused()


class LimitedRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, max_connections: int, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    async def _make_server(self):
        return ConnectionLimit(await super()._make_server(), self._max_connections)


class Web(faust_aiohttp.Web):
    """Faust's aiohttp web driver with `LimitedRunner`; the limits come from the app's
    `qlane_web_limits` (max connections, idle timeout in seconds)."""

    def __init__(self, app, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._max_connections, idle_timeout_s = app.qlane_web_limits
        self._runner = LimitedRunner(self.web_app, access_log=None,
                                     max_connections=self._max_connections,
                                     keepalive_timeout=idle_timeout_s)

    def _new_transport_tcp(self) -> web.TCPSite:
        # Connections accepted at once (up to the listen backlog) are all made before aiohttp
        # counts the first: a backlog of the limit keeps them to twice the limit at most.
        return web.TCPSite(self._runner, self.app.conf.web_bind, self.app.conf.web_port,
                           ssl_context=self.app.conf.web_ssl_context,
                           backlog=self._max_connections)
