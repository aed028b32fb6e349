"""The stateful Triton model ``ivideogpt_rollout``: our rollout engine over the exported TorchScript.

Triton's Python backend loads ``model_repository/ivideogpt_rollout/1/model.py``, which only
imports ``TritonPythonModel`` from here. Sessions are sequences: each correlation id maps to
one engine session, whose KV cache, decoder features and random streams stay on this worker.
The requests of one ``execute`` call (one per sequence, the ``oldest`` batcher's guarantee)
run in threads, so the engine batches their token steps as it does for the gateway's.

The wire contract (tensor names, operations, error codes) is ``ivideogpt_triton.protocol``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ivideogpt.engine import EngineConfig, RolloutEngine, SessionHistory
from ivideogpt.engine.errors import CapacityError, InvalidInput, SessionNotFound
from ivideogpt.engine.inputs import check_frames, check_observed, check_sampling
from ivideogpt.frames import from_uint8_hwc, to_uint8_hwc
from ivideogpt_triton.protocol import ENDS_SEQUENCE, OPERATIONS, STARTS_SEQUENCE

Arrays = dict[str, np.ndarray]


def _text(value: np.ndarray, field: str) -> str:
    if value.size != 1:
        raise InvalidInput(field, f"{value.size} elements, expected one string")
    item = value.reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else str(item)


def _json(value: np.ndarray, field: str) -> dict:
    try:
        data = json.loads(_text(value, field))
    except json.JSONDecodeError as exc:
        raise InvalidInput(field, f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInput(field, "expected a JSON object")
    return data


def _json_out(data: dict) -> np.ndarray:
    return np.array([json.dumps(data).encode()], dtype=object)


def _history_json(history: SessionHistory) -> np.ndarray:
    return _json_out(history.to_dict())


class RolloutSessions:
    """Correlation id -> engine session; one request in, named numpy arrays out."""

    def __init__(self, engine: RolloutEngine):
        self.engine = engine
        self._sessions: dict[int, str] = {}
        self._lock = threading.Lock()

    def handle(self, corrid: int, start: bool, end: bool, inputs: Arrays) -> Arrays:
        if "OPERATION" not in inputs:
            raise InvalidInput("OPERATION", f"missing: one of {', '.join(OPERATIONS)}")
        op = _text(inputs["OPERATION"], "OPERATION")
        if op not in OPERATIONS:
            raise InvalidInput("OPERATION", f"unknown operation {op!r}, expected one of {', '.join(OPERATIONS)}")
        if (op in STARTS_SEQUENCE) != start:
            raise InvalidInput("START", f"{op!r} {'must' if op in STARTS_SEQUENCE else 'must not'} start a sequence")
        if (op in ENDS_SEQUENCE) != end:
            if end:  # Triton has ended the sequence already: so do we
                self._forget(corrid)
            raise InvalidInput("END", f"{op!r} {'must' if op in ENDS_SEQUENCE else 'must not'} end its sequence")
        if op == "info":
            return {"INFO": _json_out(self.engine.model_info())}
        if op == "stats":
            return {"INFO": _json_out(self.engine.stats())}
        if start:
            self._forget(corrid)  # a reused correlation id starts over
            sid = self._open(op, inputs)
            with self._lock:
                self._sessions[corrid] = sid
            return {"HISTORY": _history_json(self.engine.history(sid)), "STEP_INDEX": self._index(sid)}
        sid = self._session(corrid)
        if op == "close":
            self._forget(corrid)
            return {}
        return getattr(self, f"_{op}")(sid, inputs)

    def _open(self, op: str, inputs: Arrays) -> str:
        if op == "restore":
            if "HISTORY" not in inputs:
                raise InvalidInput("HISTORY", "missing: restore needs the session's history")
            try:
                history = SessionHistory.from_dict(_json(inputs["HISTORY"], "HISTORY"))
            except (KeyError, TypeError) as exc:
                raise InvalidInput("HISTORY", f"not a session history ({exc})") from None
            return self.engine.restore(history)
        if "CONTEXT_FRAMES" not in inputs:
            raise InvalidInput("CONTEXT_FRAMES", "missing: open needs the context frames [c, H, W, 3]")
        frames = check_frames(inputs["CONTEXT_FRAMES"], self.engine.limits, "CONTEXT_FRAMES")
        settings = {}
        if "SAMPLING_PARAMETERS" in inputs:
            settings = _json(inputs["SAMPLING_PARAMETERS"], "SAMPLING_PARAMETERS")
        try:
            sampling = check_sampling(settings)
        except (InvalidInput, TypeError) as exc:
            raise InvalidInput("SAMPLING_PARAMETERS", str(exc).removeprefix("sampling: ")) from None
        return self.engine.open(from_uint8_hwc(frames), sampling)

    def _step(self, sid: str, inputs: Arrays) -> Arrays:
        if "ACTIONS" not in inputs:
            raise InvalidInput("ACTIONS", "missing: step needs actions [h, action_dim]")
        before = self.engine.step_index(sid)
        want_frames = bool(inputs["RETURN_FRAMES"].reshape(-1)[0]) if "RETURN_FRAMES" in inputs else True
        result = self.engine.step(sid, inputs["ACTIONS"], want_frames)
        out: Arrays = {
            "STEP_INDEX": np.array([result.step_index], dtype=np.int64),
            "HISTORY": _history_json(self.engine.history(sid, since_step=before)),
        }
        if result.frames is not None:
            out["FRAMES"] = to_uint8_hwc(result.frames)
        if result.rewards is not None:
            out["REWARDS"] = result.rewards.numpy().astype(np.float32)
        return out

    def _observe(self, sid: str, inputs: Arrays) -> Arrays:
        for name in ("OBSERVED_FRAMES", "ACTIONS"):
            if name not in inputs:
                raise InvalidInput(name, "missing: observe needs frames [n, H, W, 3] and the n actions to them")
        frames, actions = check_observed(inputs["OBSERVED_FRAMES"], inputs["ACTIONS"], self.engine.limits)
        before = self.engine.step_index(sid)
        result = self.engine.observe(sid, from_uint8_hwc(frames), actions)
        out: Arrays = {
            "STEP_INDEX": np.array([result.step_index], dtype=np.int64),
            "HISTORY": _history_json(self.engine.history(sid, since_step=before)),
        }
        if result.rewards is not None:
            out["REWARDS"] = result.rewards.numpy().astype(np.float32)
        return out

    def _plan(self, sid: str, inputs: Arrays) -> Arrays:
        settings = _json(inputs["PLAN_PARAMETERS"], "PLAN_PARAMETERS") if "PLAN_PARAMETERS" in inputs else {}
        result = self.engine.plan(sid, settings)
        index = self.engine.step_index(sid)  # plan may re-anchor the session, as imagine does
        return {
            "PLAN": _json_out(result.to_dict()),
            "STEP_INDEX": np.array([index], dtype=np.int64),
            "HISTORY": _history_json(self.engine.history(sid, since_step=index)),
        }

    def _imagine(self, sid: str, inputs: Arrays) -> Arrays:
        if "ACTION_SEQUENCES" not in inputs:
            raise InvalidInput("ACTION_SEQUENCES", "missing: imagine needs action sequences [K, h, action_dim]")
        want_frames = bool(inputs["RETURN_FRAMES"].reshape(-1)[0]) if "RETURN_FRAMES" in inputs else False
        result = self.engine.imagine(sid, inputs["ACTION_SEQUENCES"], want_frames)
        # imagine may re-anchor the session (recorded in its history): hand the history back
        index = self.engine.step_index(sid)
        out: Arrays = {
            "STEP_INDEX": np.array([index], dtype=np.int64),
            "HISTORY": _history_json(self.engine.history(sid, since_step=index)),  # no steps: the re-anchors
        }
        if result.frames is not None:
            out["IMAGINED_FRAMES"] = to_uint8_hwc(result.frames)
        if result.rewards is not None:
            out["IMAGINED_REWARDS"] = result.rewards.numpy().astype(np.float32)
        return out

    def _history(self, sid: str, inputs: Arrays) -> Arrays:
        since = int(inputs["STEP_RANGE"].reshape(-1)[0]) if "STEP_RANGE" in inputs else 0
        return {"HISTORY": _history_json(self.engine.history(sid, since_step=since)), "STEP_INDEX": self._index(sid)}

    def _recorded_frames(self, sid: str, inputs: Arrays) -> Arrays:
        if "STEP_RANGE" not in inputs or inputs["STEP_RANGE"].size != 2:
            raise InvalidInput("STEP_RANGE", "missing: recorded_frames needs [start, stop)")
        start, stop = (int(v) for v in inputs["STEP_RANGE"].reshape(-1))
        return {"FRAMES": to_uint8_hwc(self.engine.recorded_frames(sid, start, stop)), "STEP_INDEX": self._index(sid)}

    def _index(self, sid: str) -> np.ndarray:
        return np.array([self.engine.step_index(sid)], dtype=np.int64)

    def _session(self, corrid: int) -> str:
        with self._lock:
            sid = self._sessions.get(corrid)
        if sid is None or not self.engine.has(sid):
            self._forget(corrid)
            raise SessionNotFound(str(corrid))
        return sid

    def _forget(self, corrid: int) -> None:
        with self._lock:
            sid = self._sessions.pop(corrid, None)
        if sid is not None and self.engine.has(sid):
            with contextlib.suppress(SessionNotFound):  # evicted meanwhile
                self.engine.close(sid)

    def sweep_idle(self) -> int:
        """Free sessions idle past the TTL (Triton forgets their sequences at the same timeout)."""
        self.engine.evict_idle()
        with self._lock:
            gone = [c for c, sid in self._sessions.items() if not self.engine.has(sid)]
            for c in gone:
                del self._sessions[c]
        return len(gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def engine_config(model_config: dict) -> EngineConfig:
    """Engine settings from config.pbtxt: the TTL is the sequence batcher's idle timeout."""
    params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
    idle_us = int(model_config["sequence_batching"]["max_sequence_idle_microseconds"])
    defaults = EngineConfig()
    return EngineConfig(
        dtype=params.get("dtype", defaults.dtype),
        cache_bytes=int(params.get("cache_bytes", defaults.cache_bytes)),
        session_ttl_s=idle_us / 1e6,
        max_horizon=int(params.get("max_horizon", defaults.max_horizon)),
        max_imagine=int(params.get("max_imagine", defaults.max_imagine)),
        max_plan_frames=int(params.get("max_plan_frames", defaults.max_plan_frames)),
    )


class TritonPythonModel:
    """Triton's Python-backend entry points (``triton_python_backend_utils`` exists only in its stub)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        model_config = json.loads(args["model_config"])
        config = engine_config(model_config)
        if args.get("model_instance_kind") == "GPU":
            config.device = f"cuda:{args['model_instance_device_id']}"
        repository = Path(args["model_repository"]).parent  # the TorchScript folders beside this model
        self.sessions = RolloutSessions(RolloutEngine.from_repository(repository, config))
        self.input_names = [i["name"] for i in model_config["input"]]
        self.pool = ThreadPoolExecutor(max_workers=max(int(model_config.get("max_batch_size", 1)), 1))
        self._stop = threading.Event()
        period = min(max(config.session_ttl_s / 4, 0.05), 30.0)
        self._sweeper = threading.Thread(target=self._sweep, args=(period,), daemon=True)
        self._sweeper.start()

    def _sweep(self, period: float) -> None:
        while not self._stop.wait(period):
            self.sessions.sweep_idle()

    def execute(self, requests: list) -> list:
        return list(self.pool.map(self._respond, requests))

    def _respond(self, request: object) -> object:
        pb = self.pb
        try:
            controls = [pb.get_input_tensor_by_name(request, n) for n in ("CORRID", "START", "END")]
            corrid, start, end = (int(t.as_numpy().reshape(-1)[0]) if t is not None else 0 for t in controls)
            inputs = {}
            for name in self.input_names:
                t = pb.get_input_tensor_by_name(request, name)
                if t is not None:
                    inputs[name] = t.as_numpy()[0]  # batch of one per request
            outputs = self.sessions.handle(corrid, bool(start), bool(end), inputs)
            tensors = [pb.Tensor(name, value[None]) for name, value in outputs.items()]
            return pb.InferenceResponse(output_tensors=tensors)
        except Exception as exc:  # every failure goes back to its request; the model keeps serving
            return pb.InferenceResponse(output_tensors=[], error=self._error(exc))

    def _error(self, exc: Exception) -> object:
        err = self.pb.TritonError
        if isinstance(exc, InvalidInput):
            code = err.INVALID_ARG
        elif isinstance(exc, SessionNotFound):
            code = err.NOT_FOUND
        elif isinstance(exc, CapacityError):
            code = err.UNAVAILABLE
        else:
            code = err.INTERNAL
        return err(str(exc), code)

    def finalize(self) -> None:
        self._stop.set()
        self.pool.shutdown()
        self.sessions.engine.shutdown()
