"""SIGTERM under load, on a real gateway process and a real Redis: the process stops taking work, lets
in-flight steps finish within IVIDEOGPT_DRAIN_S, releases every lease and exits; a step cut off by the
bound is not recorded half (the history has it whole or not at all); a second SIGTERM exits at once."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from gateway_helpers import REDIS_URL, REPO, actions, clear_redis, context, png_b64, redis_prefix

from conftest import Gateways

CLEANUP_S = 4.0  # after the drain bound: leases, Redis, engine threads (the gateway's own watchdog: 5 s)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = redis_prefix()
    yield p
    clear_redis(p)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def settings(prefix: str, drain_s: float) -> dict[str, str]:
    return {
        "IVIDEOGPT_MODEL_REPOSITORY": str(REPO / "model_repository"),
        "IVIDEOGPT_REDIS_URL": REDIS_URL,
        "IVIDEOGPT_REDIS_PREFIX": prefix,
        "IVIDEOGPT_DRAIN_S": str(drain_s),
        "IVIDEOGPT_LEASE_TTL_S": "60",  # a lease left behind would outlive this test: nothing lapses by itself
        # the fleet keeps every session stepping: none may be turned away as overloaded while it queues behind
        # the others (how long that takes depends on the model's speed, not on what this test checks)
        "IVIDEOGPT_QUEUE_TIMEOUT_S": "120",
    }


class Fleet:
    """Sessions stepping h frames at a time in threads, each until an answer other than 200."""

    def __init__(self, url: str, sessions: int, h: int):
        self.url, self.h = url, h
        body = {"context_frames": [png_b64(f) for f in context(0)]}
        self.sids = [
            httpx.post(f"{url}/v1/sessions", json=body, timeout=60).json()["session_id"] for _ in range(sessions)
        ]
        self.acked = dict.fromkeys(self.sids, 0)  # step_index the gateway confirmed
        self.ended: dict[str, str] = {}  # how each robot's last request ended
        self.threads = [threading.Thread(target=self._robot, args=(sid, i)) for i, sid in enumerate(self.sids)]
        for t in self.threads:
            t.start()

    def _robot(self, sid: str, seed: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while True:
                body = {"actions": actions(seed, self.h), "step_index": self.acked[sid]}
                try:
                    r = client.post(f"/v1/sessions/{sid}/step", json=body)
                except httpx.TransportError as exc:  # the connection closed under it (stopped taking work)
                    self.ended[sid] = type(exc).__name__
                    return
                if r.status_code != 200:
                    code = r.json()["error"]["code"] if r.headers.get("content-type") == "application/json" else r.text
                    self.ended[sid] = f"{r.status_code} {code}"
                    return
                self.acked[sid] = r.json()["step_index"]

    def running(self) -> bool:
        return all(self.acked[s] > 0 for s in self.sids) and not self.ended

    def join(self) -> None:
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads)


def wait_until(what: str, ok, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_sigterm_under_load_drains_within_the_bound_and_releases_every_lease(prefix: str, gateways: Gateways) -> None:
    drain_s = 2.0
    with gateways.private(settings(prefix, drain_s)) as g:
        fleet = Fleet(g.url, sessions=12, h=32)  # 384 frames in flight: more than the drain bound lets finish
        wait_until("every session stepped", fleet.running)
        g.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        g.proc.wait(drain_s + CLEANUP_S + 30)
        took = time.monotonic() - t0
        fleet.join()
    log = g.log.read_text()
    assert took <= drain_s + CLEANUP_S, f"exited {took:.1f} s after SIGTERM (drain bound {drain_s} s)\n{log[-3000:]}"
    assert "ran past the drain bound" not in log
    assert set(fleet.ended) == set(fleet.sids)
    clean = ("503 shutting_down", "RemoteProtocolError", "ReadError", "ConnectError", "WriteError")
    assert all(e.startswith(clean) for e in fleet.ended.values()), fleet.ended  # never a 500
    assert "503 shutting_down" in fleet.ended.values(), "no step outlasted the drain bound: make them longer"
    r = redis.Redis.from_url(REDIS_URL)
    assert not list(r.scan_iter(match=f"{prefix}lease:*")), "a session is still leased after the exit"
    for sid in fleet.sids:  # every confirmed step recorded; a cut one recorded whole or not at all
        recorded = r.llen(f"{prefix}steps:{sid}")
        assert recorded in (fleet.acked[sid], fleet.acked[sid] + fleet.h), (sid, recorded, fleet.acked[sid])


def test_a_second_sigterm_exits_at_once(prefix: str, gateways: Gateways) -> None:
    with gateways.private(settings(prefix, 60.0)) as g:
        fleet = Fleet(g.url, sessions=8, h=32)
        wait_until("every session stepped", fleet.running)
        g.proc.send_signal(signal.SIGTERM)
        wait_until("the gateway drains (it closes its listening socket)", lambda: not listening(g.port))
        assert g.proc.poll() is None, "exited before the in-flight steps could finish"
        g.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        g.proc.wait(30)
        took = time.monotonic() - t0
        fleet.join()
    assert took < 2.0, f"the second SIGTERM took {took:.1f} s"
    assert g.proc.returncode == 128 + signal.SIGTERM
