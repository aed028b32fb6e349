"""The REST API as data: each operation is a ``Call`` (method, path, body) and a parser of its answer.

The sync and async clients share this module and differ only in how they send a ``Call``; the
transport (``json`` or ``msgpack``) decides how arrays travel (docs/API.md, "Conventions").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgpack
import numpy as np

from ivideogpt_client.codec import as_floats, as_frames, floats_from, frames_from, raw
from ivideogpt_client.errors import ServiceUnavailable, WorldModelError, error_from_http
from ivideogpt_client.plan import Plan, plan_settings

Transport = Literal["json", "msgpack"]
MSGPACK = "application/msgpack"


@dataclass
class Call:
    method: str
    path: str
    body: dict | None = None
    params: dict | None = None
    idempotent: bool = True


@dataclass
class StepResult:
    frames: np.ndarray | None  # uint8 [h, H, W, 3]
    rewards: np.ndarray | None  # float32 [h]
    step_index: int  # the session's index after the step


def sampling(seed: int, temperature: float | None, top_k: int | None, greedy: bool | None) -> dict:
    """Only what the caller set: the gateway fills in the rest from its defaults."""
    out: dict[str, Any] = {"seed": int(seed)}
    for name, value in (("temperature", temperature), ("top_k", top_k), ("greedy", greedy)):
        if value is not None:
            out[name] = value
    return out


class Rest:
    """Builds calls and reads answers for one transport."""

    def __init__(self, transport: Transport = "json"):
        if transport not in ("json", "msgpack"):
            raise ValueError(f"transport {transport!r}: use 'json' or 'msgpack'")
        self.transport = transport
        self.binary = transport == "msgpack"

    # arrays in requests: msgpack raw bytes; JSON raw base64 for frames (exact, no PNG round trip), lists for floats
    def _frames(self, x: np.ndarray) -> dict:
        return raw(x, base64_data=not self.binary)

    def _floats(self, x: np.ndarray) -> list | dict:
        return raw(x) if self.binary else x.tolist()

    # calls
    def models(self) -> Call:
        return Call("GET", "/v1/models")

    def sample_context(self, frames: int | None, episode: int, start: int) -> Call:
        params: dict[str, int] = {"episode": episode, "start": start}
        if frames is not None:
            params["frames"] = frames
        return Call("GET", "/v1/sample_context", params=params)

    def create(self, context_frames: Any, sampling: dict) -> Call:
        body = {"context_frames": self._frames(as_frames(context_frames)), "sampling": sampling}
        return Call("POST", "/v1/sessions", body, idempotent=False)

    def get(self, session_id: str) -> Call:
        return Call("GET", f"/v1/sessions/{session_id}")

    def delete(self, session_id: str) -> Call:
        return Call("DELETE", f"/v1/sessions/{session_id}")

    def step(self, session_id: str, actions: Any, step_index: int | None, return_frames: bool = True) -> Call:
        body: dict[str, Any] = {"actions": self._floats(as_floats(actions, 2))}
        body["return"] = ["frames", "rewards"] if return_frames else ["rewards"]
        if step_index is not None:
            body["step_index"] = step_index
        return Call("POST", f"/v1/sessions/{session_id}/step", body, idempotent=step_index is not None)

    def observe(self, session_id: str, frames: Any, actions: Any, step_index: int | None) -> Call:
        body: dict[str, Any] = {
            "frames": self._frames(as_frames(frames, "frames")),
            "actions": self._floats(as_floats(actions, 2)),
        }
        if step_index is not None:
            body["step_index"] = step_index
        return Call("POST", f"/v1/sessions/{session_id}/observe", body, idempotent=step_index is not None)

    def plan(self, session_id: str, settings: dict[str, Any]) -> Call:
        return Call("POST", f"/v1/sessions/{session_id}/plan", plan_settings(settings))  # the session is unchanged

    def imagine(self, session_id: str, action_sequences: Any, return_frames: bool) -> Call:
        body = {"action_sequences": self._floats(as_floats(action_sequences, 3)), "return_frames": return_frames}
        return Call("POST", f"/v1/sessions/{session_id}/imagine", body)  # the session is unchanged

    def render_gif(
        self, frames: Any, context_frames: int, rewards: Any, labels: list[str] | None, fps: float, scale: int
    ) -> Call:
        body: dict[str, Any] = {"frames": self._frames(as_frames(frames)), "context_frames": context_frames}
        if rewards is not None:  # NaN: unknown (drawn without a reward)
            body["rewards"] = [float(r) if np.isfinite(r) else None for r in np.asarray(rewards, np.float64).ravel()]
        if labels is not None:
            body["labels"] = list(labels)
        body.update(fps=fps, scale=scale)
        return Call("POST", "/v1/render/gif", body)  # the same body draws the same GIF

    # wire
    def request(self, call: Call) -> dict:
        """httpx ``request()`` keyword arguments for a call."""
        headers = {"Accept": MSGPACK if self.binary else "application/json"}
        kwargs: dict[str, Any] = {"method": call.method, "url": call.path, "params": call.params}
        if call.body is not None:
            if self.binary:
                kwargs["content"] = msgpack.packb(call.body)
                headers["Content-Type"] = MSGPACK
            else:
                kwargs["content"] = json.dumps(call.body).encode()
                headers["Content-Type"] = "application/json"
        kwargs["headers"] = headers
        return kwargs

    @staticmethod
    def answer(response: httpx.Response) -> Any:
        """The decoded body of a 2xx answer (bytes for an image); a typed ``WorldModelError`` for anything else."""
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if response.status_code < 400 and ctype.startswith("image/"):
            return response.content
        body: Any = None
        if response.content:
            try:
                body = msgpack.unpackb(response.content) if ctype == MSGPACK else response.json()
            except ValueError:
                body = response.text
        if response.status_code >= 400:
            raise error_from_http(response.status_code, body, response.headers.get("retry-after"))
        return body

    @staticmethod
    def unreachable(url: str, exc: httpx.TransportError) -> WorldModelError:
        return ServiceUnavailable(f"{url}: {exc.__class__.__name__}: {exc or 'no answer'}")

    # answers
    @staticmethod
    def step_result(body: dict) -> StepResult:
        return StepResult(frames_from(body.get("frames")), floats_from(body.get("rewards")), int(body["step_index"]))

    @staticmethod
    def observe_result(body: dict) -> StepResult:
        return StepResult(None, floats_from(body.get("rewards")), int(body["step_index"]))

    @staticmethod
    def plan_result(body: dict) -> Plan:
        return Plan.from_json(body)

    @staticmethod
    def imagine_result(body: dict, return_frames: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        rewards = floats_from(body.get("rewards"))
        return (rewards, frames_from(body.get("frames"))) if return_frames else rewards

    @staticmethod
    def context_result(body: dict) -> np.ndarray:
        return frames_from(body["frames"])
