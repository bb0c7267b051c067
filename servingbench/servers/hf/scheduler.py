"""The HF engine's serving policy: one worker thread owns the model; requests wait in a FIFO queue.

``max_batch_size == 1`` serves one request at a time in arrival order. Above 1 it is static batching: take the
first waiting request, wait up to ``batch_wait_s`` for up to N-1 more, run them together until the longest
ends, then form the next batch. Torch never runs on the event loop: tokens go back to each request's
``asyncio.Queue`` through ``loop.call_soon_threadsafe`` as they are produced, so streaming is real time.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from servingbench.servers.hf.engine import HFBaselineServer, SequenceRequest, TokenEvent

log = logging.getLogger("servingbench.hf")


@dataclass(frozen=True)
class WorkerFailure:
    """The request will get no more tokens (its batch failed, or the server is stopping); safe to show a client."""

    message: str
    status: int = 500


SHUTTING_DOWN = WorkerFailure("the server is shutting down", status=503)


@dataclass(eq=False)
class PendingRequest:
    """A request handed to the worker, and the queue its tokens come back on."""

    sequence: SequenceRequest
    loop: asyncio.AbstractEventLoop
    events: "asyncio.Queue[TokenEvent | WorkerFailure]" = field(default_factory=asyncio.Queue)
    finished: bool = False

    def cancel(self) -> None:
        """The client is gone: the worker skips it if still queued, or drops it at its next step."""
        if not self.finished:
            self.sequence.cancelled = True

    def deliver(self, item: TokenEvent | WorkerFailure) -> None:
        """Hands a token (or the end) to the event loop; safe from any thread."""
        if isinstance(item, WorkerFailure) or item.finish_reason:
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.sequence.cancelled = True


class InferenceWorker:
    """The single thread that runs the engine, batch after batch."""

    def __init__(self, engine: HFBaselineServer, max_batch_size: int = 1, batch_wait_s: float = 0.02) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_s < 0:
            raise ValueError(f"batch wait must be >= 0, got {batch_wait_s}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[PendingRequest | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hf-worker", daemon=True)
        self._running: list[PendingRequest] = []

    def start(self) -> None:
        self._thread.start()

    def submit(self, pending: PendingRequest) -> None:
        self._queue.put(pending)

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread; every request still running or waiting is told so (503) and cancelled."""
        self._stopping.set()
        unfinished = list(self._running)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                unfinished.append(item)
        _fail(unfinished, SHUTTING_DOWN)
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._collect_batch()
            if self._stopping.is_set():
                _fail(batch, SHUTTING_DOWN)
                self._running = []
                return
            if batch:
                self._run_batch(batch)

    def _collect_batch(self) -> list[PendingRequest]:
        """The first waiting request, plus whatever arrives within the batch wait (up to the batch size).
        The batch is visible as ``_running`` while it fills, so ``stop`` can reach its members."""
        first = self._queue.get()
        if first is None:
            return []
        batch = self._running = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                break
            batch.append(item)
        return [p for p in batch if not p.sequence.cancelled]

    def _run_batch(self, batch: list[PendingRequest]) -> None:
        self._running = batch
        try:
            for events in self.engine.generate_stream([p.sequence for p in batch]):
                for event in events:
                    batch[event.index].deliver(event)
        except Exception as e:  # a failing batch fails its requests, never the worker
            log.exception("batch of %d request(s) failed", len(batch))
            _fail(batch, WorkerFailure(f"generation failed: {type(e).__name__}: {e}"))
        finally:
            self._running = []


def _fail(requests: list[PendingRequest], failure: WorkerFailure) -> None:
    """Tell every unfinished request it gets no more tokens, and stop generating for it."""
    for pending in requests:
        if not pending.finished and not pending.sequence.cancelled:
            pending.deliver(failure)
        pending.sequence.cancelled = True
