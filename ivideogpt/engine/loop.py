"""The engine loop: the two threads that run the model, and the one place session state changes.

The token thread alone runs the transformer and touches the KV cache pool. Each iteration it
runs the work that must not interleave with token steps (opens, restores, closes, imagine
set-ups: ``run_exclusive``), then one token step: ``Scheduler.schedule`` -> re-anchor the
sessions that need it (``Session.reanchor``) and encode the observed frames about to start
(``Session.encode_observed``) -> ``ModelRunner.execute`` -> ``Scheduler.update``, and applies
what finished: a step's or an observe's frame is recorded in its session's history, an
imagine's rewards collected. The pixels of each predicted frame are decoded on the
second thread, in order, while the token thread already generates the next frame's tokens: on
two cores a frame then costs the larger of the two, not their sum. With ``token_lanes`` a wide
token step's rows are split among the token thread and lane threads, each writing only its own
rows' cache positions, within the token step the token thread waits for; only while no frame
waits for its pixels, so that a lane takes the pixel thread's core only when it is idle. What a
request's caller receives goes into the request's queue (``FrameOutput`` items, then one ``End``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ivideogpt.engine.config import use_intra_op_threads
from ivideogpt.engine.errors import EngineStopped
from ivideogpt.engine.history import StepRecord
from ivideogpt.engine.results import FrameResult
from ivideogpt.engine.runner import ModelRunner
from ivideogpt.engine.scheduler import Finished, FrameDone, Request, Scheduler
from ivideogpt.engine.session import Session
from ivideogpt.frames import frame_bytes


@dataclass
class FrameOutput:
    """One frame of every row of a request: frames [K, 3, H, W] (when asked for), rewards [K]."""

    frame: int  # index in the request
    step_index: int  # the session's step index of this frame (a step's; an imagine's would-be index)
    frames: torch.Tensor | None
    rewards: torch.Tensor | None


@dataclass
class End:
    """The last item of a request's queue: it is over (with its error, if any)."""

    error: BaseException | None


class EngineLoop:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, threads: int, lanes: int, lane_rows: int):
        self.runner, self.scheduler, self.threads, self.lane_rows = runner, scheduler, threads, lane_rows
        self._inbox: queue.Queue[Request | tuple[Callable[[], Any], Future]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = False
        self._ended = False  # the loop has ended: whatever arrives now fails at once
        # one thread: frames come out in the order their tokens were generated
        self.pixels = ThreadPoolExecutor(1, "ivideogpt-pixels", initializer=use_intra_op_threads, initargs=(threads,))
        self._pixel_jobs, self._pixel_jobs_lock = 0, threading.Lock()  # decodes submitted and not yet done
        # the token thread computes one part of a wide step, each lane one more (``EngineConfig.token_lanes``)
        self.lanes = [
            ThreadPoolExecutor(1, f"ivideogpt-lane-{i}", initializer=use_intra_op_threads, initargs=(threads,))
            for i in range(1, lanes)
        ]
        self._thread = threading.Thread(target=self._run, name="ivideogpt-engine", daemon=True)
        self._thread.start()

    # called from any thread
    def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the token thread between token steps and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future = Future()
        self._put((fn, fut))
        return fut.result()

    def submit(self, request: Request) -> None:
        """Queue a request; its caller reads ``request.out`` (``outputs``)."""
        self._put(request)

    def outputs(self, request: Request) -> Iterator[FrameOutput]:
        """Submit ``request`` and yield its frames as they come; the first error is raised once the request
        has ended (a consumer that stops early still owns the session until then)."""
        self.submit(request)
        error: BaseException | None = None
        ended = False
        try:
            while not isinstance(item := request.out.get(), End):
                if isinstance(item, BaseException):
                    error = error or item
                    if request.fork is None:  # a step's caller learns at once
                        raise item
                elif error is None:
                    yield item
            ended = True
            if item.error or error:
                raise item.error or error  # type: ignore[misc]
        finally:
            while not ended:
                ended = isinstance(request.out.get(), End)

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.pixels.shutdown()
        for lane in self.lanes:
            lane.shutdown()

    def _put(self, item: Request | tuple[Callable[[], Any], Future]) -> None:
        self._inbox.put(item)
        self._wake.set()
        if self._ended:
            self._fail_pending()

    # the token thread
    def _run(self) -> None:
        use_intra_op_threads(self.threads)
        while not self._stop:
            self._take_inbox()
            if not self.scheduler.running and not self.scheduler.waiting:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                with torch.inference_mode():
                    self._step()
            except BaseException as exc:  # fail the requests of this step, keep serving
                for finished in self.scheduler.abort(exc):
                    self._finish(finished)
        self._ended = True
        self._fail_pending()

    def _inbox_items(self) -> Iterator[Request | tuple[Callable[[], Any], Future]]:
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _take_inbox(self) -> None:
        """Exclusive work runs now; requests join the scheduler's queue."""
        for item in self._inbox_items():
            if isinstance(item, Request):
                self.scheduler.add(item)
                continue
            fn, fut = item
            try:
                with torch.inference_mode():
                    fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _step(self) -> None:
        scheduled = self.scheduler.schedule()
        for finished in scheduled.finished:
            self._finish(finished)
        for req in scheduled.reanchor:
            try:
                req.session.reanchor(self.runner)
            except BaseException as exc:
                self.scheduler.remove(req)
                self._finish(Finished(req, exc))
        for req in scheduled.encode:
            try:
                assert req.observed is not None and req.given is not None
                req.given[0, req.frame] = req.session.encode_observed(self.runner, req.observed[req.frame])
                req.encoded += 1
            except BaseException as exc:
                self.scheduler.remove(req)
                self._finish(Finished(req, exc))
        if scheduled.batch is None:
            return
        split = self.lanes and scheduled.batch.n_rows >= self.lane_rows and self._pixel_jobs == 0
        output = self.runner.execute(scheduled.batch, self.lanes if split else ())
        for event in self.scheduler.update(scheduled, output):
            if isinstance(event, Finished):
                self._finish(event)
                continue
            try:
                self._frame_done(event)
            except BaseException as exc:  # the request ends; the others go on
                if event.request in self.scheduler.running:
                    self.scheduler.remove(event.request)
                    self._finish(Finished(event.request, exc))

    def _frame_done(self, done: FrameDone) -> None:
        req, session = done.request, done.request.session
        if req.fork is None:  # a step or an observe: the session's cache and history now hold the frame
            reward = None if done.rewards is None else float(done.rewards[0])
            record = StepRecord(req.actions[0, done.frame].tolist(), done.tokens[0].tolist(), reward)
            if req.observed is not None:
                record.kind, record.frame = "observed", frame_bytes(req.observed[done.frame])
            layout = self.runner.layout
            index = session.add_frame(record, layout.frame_stride, layout.context_length)
        else:
            index = session.step_index + done.frame
        if not req.return_frames:
            req.out.put(FrameOutput(done.frame, index, None, done.rewards))
            return
        features = session.decoder_features

        def decode() -> None:
            try:
                frames = self.runner.decode_frames(features, done.tokens)
                req.out.put(FrameOutput(done.frame, index, frames, done.rewards))
            except BaseException as exc:  # raised to the caller; the request still runs to its end
                req.out.put(exc)

        self.decode_later(decode)

    def decode_later(self, decode: Callable[[], None]) -> None:
        """Pixel work for the pixel thread, counted while it waits or runs (lanes split no step meanwhile)."""

        def counted() -> None:
            try:
                decode()
            finally:
                with self._pixel_jobs_lock:
                    self._pixel_jobs -= 1

        with self._pixel_jobs_lock:
            self._pixel_jobs += 1
        try:
            self.pixels.submit(counted)
        except BaseException:
            with self._pixel_jobs_lock:
                self._pixel_jobs -= 1
            raise

    def _finish(self, finished: Finished) -> None:
        req = finished.request
        if req.suffix is not None:  # an imagine's fork suffixes
            self.runner.kv.free(req.suffix)
            req.suffix = None
        end = End(finished.error)
        if req.return_frames:  # after every frame submitted so far is decoded
            try:
                self.pixels.submit(req.out.put, end)
                return
            except RuntimeError:  # the pixel thread shut down: nothing more will be decoded
                pass
        req.out.put(end)

    def _fail_pending(self) -> None:
        """After shutdown every request and task still waiting ends with ``EngineStopped``: nobody waits for ever."""
        error = EngineStopped("the engine shut down")
        pending = self.scheduler.abort(error, waiting=True) if threading.current_thread() is self._thread else []
        for item in self._inbox_items():
            if isinstance(item, Request):
                pending.append(Finished(item, error))
            else:
                item[1].set_exception(error)
        for finished in pending:
            self._finish(finished)


class Delivery:
    """A request's output queue that hands each item to a callback instead (``RolloutEngine.step_nowait``):
    frames as ``FrameResult``, the first error, or ``None`` at the end. The callback runs on the engine's
    threads, so it must be quick. At the end this also does what a blocking caller would: the session is
    marked used and its lock released (on the engine's thread, so it happens even when nobody waits)."""

    def __init__(
        self,
        session: Session,
        deliver: Callable[[FrameResult | BaseException | None], None],
        clock: Callable[[], float],
    ):
        self.session, self.deliver, self.clock = session, deliver, clock
        self.failed = False

    def put(self, item: FrameOutput | BaseException | End) -> None:
        if isinstance(item, End):
            self.session.last_used = self.clock()
            self.session.lock.release()
            if not self.failed:
                self.deliver(item.error)
            return
        if self.failed:
            return
        if isinstance(item, BaseException):
            self.failed = True
            self.deliver(item)
            return
        frame = None if item.frames is None else item.frames[0]
        self.deliver(FrameResult(item.step_index, frame, None if item.rewards is None else float(item.rewards[0])))
