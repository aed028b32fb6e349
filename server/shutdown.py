"""Graceful shutdown: uvicorn, with the gateway's answer to SIGTERM (and SIGINT).

The first signal drains (``server.app.drain``: new work gets 503, gRPC stops taking calls,
uvicorn stops accepting connections and gives in-flight requests ``drain_s``), then the
lifespan releases the leases still held and the process exits. A watchdog ends the process
a few seconds past the drain bound whatever still runs; a second signal ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.app import ANSWER_S, drain

log = logging.getLogger("server")

CLEANUP_S = 5.0  # after the drain: leases, Redis, engine threads


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_s: float):
        config.timeout_graceful_shutdown = drain_s + ANSWER_S  # the service cuts its requests at drain_s
        super().__init__(config)
        self.app, self.drain_s = app, drain_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # the second signal: now
            log.warning("signal %d during the drain: exiting now", sig)
            os._exit(128 + sig)
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler: hand the drain to the event loop
            self._loop.call_soon_threadsafe(drain, self.app)
        watchdog = threading.Timer(self.drain_s + ANSWER_S + CLEANUP_S, _overdue, (sig,))
        watchdog.daemon = True
        watchdog.start()


def _overdue(sig: int) -> None:
    log.error("shutdown ran past the drain bound: exiting now")
    os._exit(128 + sig)
