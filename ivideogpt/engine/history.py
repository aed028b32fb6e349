"""What rebuilds a session: its history, JSON-serialisable, kept by the gateway in its registry.

A session's frames are predicted (tokens the transformer sampled) or observed (a real frame the
caller reported, encoded by the tokenizer's future encoder and fed in place of sampled tokens).
Besides token ids the history keeps real pixels (``ivideogpt.frames.frame_bytes``, 12 KiB a
frame at 64x64) where a rebuild needs them: the context frames the session was opened on (the
first anchor's encoder features come from them), and an observed frame's pixels only while a
re-anchor can still re-encode them: while it is among the last c frames, or for good when a
recorded re-anchor within c frames after it did (``unneeded_frames``). A 50-step episode that
observes every frame keeps 2 context frames, then 2 per re-anchor and the last 2.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["predicted", "observed"]


def unneeded_frames(start: int, stop: int, reanchors: Iterable[int], c: int) -> list[int]:
    """The steps whose observed pixels no re-anchor can need once a session grew from ``start`` to ``stop``
    steps: those that left the last ``c`` steps and that no recorded re-anchor within ``c`` steps after
    them re-encoded (a restore repeats that re-anchor; a later one takes only the last ``c`` frames)."""
    points = list(reanchors)
    return [i for i in range(max(0, start - c), max(0, stop - c)) if not any(i < r <= i + c for r in points)]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


@dataclass
class StepRecord:
    """One frame of a session: the action that led into it, its token ids, its reward, and whether the
    model predicted it or the caller observed it (then ``frame`` holds its real pixels while needed)."""

    action: list[float]
    tokens: list[int]  # the frame's raw ids as fed to the transformer (sampled, or encoded from the real frame)
    reward: float | None  # the reward head's prediction for the frame
    kind: Kind = "predicted"
    frame: bytes | None = None  # observed: uint8 [H, W, 3] while a re-anchor may re-encode it (``unneeded_frames``)

    def to_dict(self) -> dict:
        d = {"action": self.action, "tokens": self.tokens, "reward": self.reward, "kind": self.kind}
        if self.frame is not None:
            d["frame"] = _b64(self.frame)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StepRecord:
        return cls(d["action"], d["tokens"], d["reward"], d.get("kind", "predicted"), _unb64(d.get("frame")))

    def copy(self) -> StepRecord:
        return dataclasses.replace(self, action=list(self.action), tokens=list(self.tokens))


@dataclass
class SessionHistory:
    """Everything needed to rebuild a session: JSON-serialisable, stored by the gateway."""

    context_ids: list[list[int]]  # [c][G] context code ids at open
    sampling: dict
    stream: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    # step indices before which the context was re-anchored (the last c frames)
    reanchors: list[int] = field(default_factory=list)
    # uint8 [c, H, W, 3] the session was opened on: the first anchor's encoder features (observe) come from
    # them; None in histories written before sessions could observe (such a session cannot)
    context_frames: bytes | None = None

    def to_dict(self) -> dict:
        return {
            "context_ids": self.context_ids,
            "sampling": self.sampling,
            "stream": self.stream,
            "steps": [s.to_dict() for s in self.steps],
            "reanchors": self.reanchors,
            "context_frames": _b64(self.context_frames),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SessionHistory:
        steps = [StepRecord.from_dict(s) for s in d["steps"]]
        frames = _unb64(d.get("context_frames"))
        return cls(d["context_ids"], d["sampling"], d.get("stream", 0), steps, list(d.get("reanchors", [])), frames)

    def append(self, steps: list[StepRecord], reanchors: list[int], context_length: int) -> None:
        """Record more steps and re-anchors; observed pixels no re-anchor can need any more are dropped."""
        start = len(self.steps)
        self.steps.extend(steps)
        self.reanchors.extend(reanchors)
        for i in unneeded_frames(start, len(self.steps), self.reanchors, context_length):
            self.steps[i].frame = None

    def copy(self, since_step: int = 0) -> SessionHistory:
        """A deep copy; with ``since_step`` only the steps from there on."""
        steps = [r.copy() for r in self.steps[since_step:]]
        context = [list(c) for c in self.context_ids]
        reanchors = list(self.reanchors)
        return SessionHistory(context, dict(self.sampling), self.stream, steps, reanchors, self.context_frames)
