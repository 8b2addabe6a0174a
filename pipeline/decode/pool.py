"""The decode pool: keeps `workers` workers busy for the whole run, hands the engine their clips, and fails a
video whose worker hangs or dies (then replaces that worker).

- backend "process" (`ProcessDecodePool`, the default): worker processes, forked (any callable works,
  nothing is pickled or re-imported; each worker limits torch to one thread) or, on request, started by a
  forkserver. A worker without progress for `timeout` seconds is killed and its video failed; a worker that
  dies (a segfault in a codec, the OOM killer) fails only its video and is replaced.
- backend "thread" (`ThreadDecodePool`): the same decode loop in threads (nothing is pickled; easy to
  debug). A hung video is failed and its thread abandoned; a crash inside a codec ends the process.

Clips travel through slots (`pipeline.decode.slots`): each clip is written once by its worker and copied
once by the engine, which then gives the slot back (`DecodedClip.release`). Memory is bounded by the slots,
never by video length.
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import deque
from multiprocessing import connection as mp_connection
from multiprocessing.context import ForkContext, ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

import numpy as np

from pipeline.decode.protocol import (
    ClipReady,
    DecodedClip,
    DecodeVideo,
    FreeSlot,
    LendSlots,
    NeedSlots,
    PoolFailed,
    PoolItem,
    StillDecoding,
    StopWorker,
    VideoDecoded,
    VideoFailed,
    VideoJob,
    WorkerCommand,
    WorkerMessage,
    WorkerReady,
)
from pipeline.decode.slots import SharedBlock, shared_block, slot_view
from pipeline.decode.worker import (
    DecodePoolError,
    DecodeSpec,
    DecodeTimeout,
    DecodeWorker,
    DecodeWorkerError,
    QueueLink,
    worker_process,
)
from pipeline.errors import describe_error

log = logging.getLogger(__name__)

DECODE_BACKENDS = ("process", "thread")
START_METHODS = ("fork", "forkserver")
MIN_SLOTS = 2  # per worker: one being written, one the engine copies from
SLOT_MEMORY_BYTES = 1 << 30  # all workers' slots together, unless `slots` x clips take less
STARTUP_S = 60.0  # a worker process not ready by then means the pool cannot work at all
MAX_DRAIN = 64  # messages taken from one worker per supervisor round (keeps the others served)

# --- the supervisor side (a thread of the engine's process) ---------------------------------------


class _Worker:
    """The supervisor's view of one worker: its video, its slots and its deadline."""

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.ready = False
        self.number: int | None = None  # of the video it decodes
        self.job: VideoJob | None = None
        self.slots: list[np.ndarray] = []
        self.generation = -1  # of its current slots
        self.held = 0  # of its current slots, those the engine holds
        self.deadline: float | None = None
        self.lock = threading.Lock()  # slots, generation and held change in two threads
        self.spawned = time.monotonic()


class _ProcessWorker(_Worker):
    """A worker process, with the supervisor's ends of its two pipes."""

    def __init__(
        self,
        wid: int,
        handle: BaseProcess,
        commands: mp_connection.Connection,
        messages: mp_connection.Connection,
    ) -> None:
        super().__init__(wid)
        self.handle, self.commands, self.messages = handle, commands, messages


class _ThreadWorker(_Worker):
    """A worker thread, its command queue, and the flag that tells it it was given up on."""

    def __init__(
        self,
        wid: int,
        handle: threading.Thread,
        commands: queue.Queue[WorkerCommand],
        abandoned: threading.Event,
    ) -> None:
        super().__init__(wid)
        self.handle, self.commands, self.abandoned = handle, commands, abandoned


W = TypeVar("W", bound=_Worker)


class DecodePool(Generic[W]):
    """Keeps the workers busy with jobs, forwards their clips, and fails a video whose worker hangs or
    dies (then replaces that worker). Subclasses say what a worker is."""

    kind = "worker"

    def __init__(self, spec: DecodeSpec, workers: int, slots: int, timeout: float | None) -> None:
        self.spec = spec
        self.num_workers = workers
        self.slots_per_worker = slots
        self.slot_nbytes = 0  # the size of the slots lent last (reported by the benchmark)
        self.timeout = timeout
        self.heartbeat_s = min(1.0, timeout / 4) if timeout else 1.0
        self.items: queue.Queue[PoolItem] = queue.Queue()  # bounded by the slots, not by this queue
        self.todo: deque[tuple[int, VideoJob]] = deque()
        self.workers: dict[int, W] = {}
        self.next_wid = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.replaced = 0

    # -- what a worker is (subclasses) --
    def _spawn(self, wid: int) -> W:
        """Start worker `wid` (it says WorkerReady once it takes jobs)."""
        raise NotImplementedError

    def _send(self, worker: W, command: WorkerCommand) -> None:
        """Send a command; a dead worker is noticed by `_poll`, not here."""
        raise NotImplementedError

    def _poll(self, timeout: float) -> tuple[list[tuple[W, WorkerMessage]], list[W]]:
        """Messages that arrived within `timeout` (in order per worker), and workers that died."""
        raise NotImplementedError

    def _kill(self, worker: W) -> None:
        """End a worker now, whatever it is doing."""
        raise NotImplementedError

    def _stop_worker(self, worker: W) -> None:
        """End a worker that was sent StopWorker (by default: as `_kill`)."""
        self._kill(worker)

    def _new_slots(self, count: int, nbytes: int) -> tuple[list[np.ndarray], np.ndarray | SharedBlock]:
        """`count` slots of `nbytes` for one worker: (their views here, the block it gets)."""
        raise NotImplementedError

    def _death_reason(self, worker: W) -> str:
        """How a dead worker ended, for its video's error ("died with SIGSEGV", ...)."""
        raise NotImplementedError

    # -- the engine's side --
    def start(self, jobs: list[tuple[int, VideoJob]]) -> None:
        """Start the workers and the supervisor on numbered jobs."""
        self.todo.extend(jobs)
        for _ in range(min(self.num_workers, len(jobs))):
            self._add_worker()
        self.thread = threading.Thread(target=self._supervise, name="decode-supervisor", daemon=True)
        self.thread.start()

    def next_item(self, timeout: float) -> PoolItem | None:
        """The next clip or video outcome, waiting at most `timeout` seconds; None when none came."""
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            return None

    def running(self) -> bool:
        """The supervisor still runs."""
        return self.thread is not None and self.thread.is_alive()

    def exhausted(self) -> bool:
        """The supervisor has stopped and the engine has taken every item it sent."""
        return not self.running() and self.items.empty()

    def release(self, wid: int, generation: int, slot: int) -> None:
        """The engine copied a clip out of this slot: lend it back (called from the engine's thread)."""
        worker = self.workers.get(wid)
        if worker is None:  # replaced meanwhile; its buffers go when the last view does
            return
        with worker.lock:
            if generation != worker.generation:
                return
            worker.held -= 1
            try:
                self._send(worker, FreeSlot(generation, slot))
            except Exception:  # noqa: BLE001 - a dead worker is the supervisor's business
                pass

    def close(self) -> None:
        """Stop the supervisor and every worker (killing those that do not stop promptly)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        for worker in list(self.workers.values()):
            try:
                with worker.lock:
                    self._send(worker, StopWorker())
            except Exception:  # noqa: BLE001 - already gone
                pass
        for worker in list(self.workers.values()):
            self._retire(worker, graceful=True)
        self.workers.clear()

    # -- workers come and go --
    def _add_worker(self) -> None:
        """Start one more worker under a new id."""
        wid = self.next_wid
        self.next_wid += 1
        self.workers[wid] = self._spawn(wid)

    def _retire(self, worker: W, graceful: bool = False) -> None:
        """Forget a worker: kill it, or (graceful) give it a moment to exit after StopWorker first."""
        self.workers.pop(worker.wid, None)
        if graceful:
            self._stop_worker(worker)
        else:
            self._kill(worker)

    def _give_up(self, worker: W, error: Exception | None) -> None:
        """Retire a dead or hung worker, fail its video with `error`, replace it while work is left."""
        self._retire(worker)
        if error is not None and worker.number is not None:
            log.error("%s", describe_error(error))
            self.items.put(VideoFailed(worker.number, describe_error(error)))
        if self.todo:
            self.replaced += 1
            self._add_worker()

    # -- the supervisor loop --
    def _supervise(self) -> None:
        """The supervisor thread: assign jobs, handle messages and deaths, enforce deadlines, until done."""
        try:
            while not self.stop.is_set() and self._work_left():
                self._assign()
                messages, dead = self._poll(self._wait_time())
                for worker, message in messages:
                    if worker.wid in self.workers:
                        self._handle(worker, message)
                for worker in dead:
                    if worker.wid in self.workers:
                        self._lost(worker, self._death_reason(worker))
                self._check_deadlines()
        except BaseException as error:  # noqa: BLE001 - surfaces in the engine as a run error
            log.exception("decode supervisor failed")
            self.items.put(PoolFailed(f"decode supervisor failed: {describe_error(error)}"))

    def _work_left(self) -> bool:
        """Jobs wait, or a worker still decodes one."""
        return bool(self.todo) or any(w.number is not None for w in self.workers.values())

    def _wait_time(self) -> float:
        """How long one poll may wait: at most 0.5 s, less when a deadline comes sooner."""
        deadlines = [w.deadline for w in self.workers.values() if w.deadline is not None]
        if not deadlines:
            return 0.5
        return min(0.5, max(0.0, min(deadlines) - time.monotonic()))

    def _assign(self) -> None:
        """Give the next jobs to ready workers without a video."""
        for worker in list(self.workers.values()):
            if worker.ready and worker.number is None and self.todo:
                number, job = self.todo.popleft()
                worker.number, worker.job = number, job
                self._touch(worker)
                with worker.lock:
                    self._send(worker, DecodeVideo(number, job))

    def _touch(self, worker: W) -> None:
        """The worker made progress: its video's deadline starts again."""
        worker.deadline = (
            time.monotonic() + self.timeout if self.timeout and worker.number is not None else None
        )

    def _handle(self, worker: W, message: WorkerMessage) -> None:
        """Act on one message from a worker; any message but WorkerReady counts as progress."""
        if isinstance(message, WorkerReady):
            worker.ready = True
            return
        if isinstance(message, NeedSlots):
            self._lend_slots(worker, message.nbytes)
        elif isinstance(message, ClipReady):
            self._forward_clip(worker, message)
        elif isinstance(message, (VideoDecoded, VideoFailed)):
            self.items.put(message)
            worker.number = worker.job = None
        elif not isinstance(message, StillDecoding):
            raise RuntimeError(f"unexpected message {message!r} from decode {self.kind} {worker.wid}")
        self._touch(worker)

    def slot_count(self, nbytes: int) -> int:
        """Slots per worker for clips of `nbytes`: `slots`, fewer when all workers' slots would pass
        SLOT_MEMORY_BYTES (float clips take 4x a uint8 clip's bytes), never fewer than MIN_SLOTS."""
        fits = SLOT_MEMORY_BYTES // max(1, nbytes * self.num_workers)
        return max(MIN_SLOTS, min(self.slots_per_worker, fits))

    def _lend_slots(self, worker: W, nbytes: int) -> None:
        """New slots of `nbytes` for a worker; those it had are dropped (the engine may still hold some)."""
        count = self.slot_count(nbytes)
        self.slot_nbytes = nbytes
        views, block = self._new_slots(count, nbytes)
        with worker.lock:
            worker.slots, worker.held = views, 0
            worker.generation += 1
            self._send(worker, LendSlots(worker.generation, block))

    def _forward_clip(self, worker: W, message: ClipReady) -> None:
        """Hand the engine a view of the clip's slot, and how to give the slot back."""
        with worker.lock:
            worker.held += 1
        pixels = slot_view(worker.slots[message.slot], message.shape, message.dtype)
        release = functools.partial(self.release, worker.wid, worker.generation, message.slot)
        self.items.put(
            DecodedClip(message.number, message.row, pixels, message.valid, message.timestamps, release)
        )

    def _lost(self, worker: W, reason: str) -> None:
        """A worker died: fail its video, replace it while there is work left."""
        if not worker.ready:
            raise DecodePoolError(f"decode {self.kind} failed to start ({reason})")
        error = None
        if worker.job is not None:
            error = DecodeWorkerError(
                f"{worker.job.path}: decode {self.kind} {reason} while decoding this video"
            )
        self._give_up(worker, error)

    def _check_deadlines(self) -> None:
        """A worker that never started breaks the pool; a video without progress is failed."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if not worker.ready and now - worker.spawned > STARTUP_S:
                raise DecodePoolError(f"decode {self.kind} {worker.wid} did not start within {STARTUP_S:g} s")
            if worker.deadline is not None:
                self._check_progress(worker, now)

    def _check_progress(self, worker: W, now: float) -> None:
        """Fail the worker's video when it made no progress before its deadline."""
        with worker.lock:
            blocked = bool(worker.slots) and worker.held >= len(worker.slots)
        if blocked:  # waiting for the engine to give slots back: not the video's fault
            self._touch(worker)
        elif worker.deadline is not None and now > worker.deadline and worker.job is not None:
            self._give_up(
                worker,
                DecodeTimeout(
                    f"{worker.job.path}: no decoding progress for {self.timeout:g} s (data.decode_timeout_s)"
                ),
            )


class ProcessDecodePool(DecodePool[_ProcessWorker]):
    """Decode workers as processes; clips come back through shared-memory slots."""

    kind = "process"

    def __init__(
        self, spec: DecodeSpec, workers: int, slots: int, timeout: float | None, *, start_method: str
    ) -> None:
        super().__init__(spec, workers, slots, timeout)
        self.context: ForkContext | ForkServerContext
        if start_method == "forkserver":
            self.context = multiprocessing.get_context("forkserver")
            # Modules every worker needs, imported once by the fork server instead of once per worker.
            self.context.set_forkserver_preload(
                ["pipeline.decode.worker", "pipeline.transforms", "pipeline.io.video"]
            )
        else:
            self.context = multiprocessing.get_context("fork")

    def _spawn(self, wid: int) -> _ProcessWorker:
        commands_in, commands = self.context.Pipe(duplex=False)
        messages, messages_out = self.context.Pipe(duplex=False)
        inherited: tuple[mp_connection.Connection, ...] = ()
        if self.context.get_start_method() == "fork":
            inherited = (
                commands,
                messages,
                *(c for w in self.workers.values() for c in (w.commands, w.messages)),
            )
        process = self.context.Process(
            target=worker_process,
            name=f"decode-{wid}",
            daemon=True,
            args=(commands_in, messages_out, self.spec, self.heartbeat_s, inherited),
        )
        if inherited:
            # A forked child must not finalise the parent's garbage: a PyAV decoder or scaler waiting for
            # collection joins its FFmpeg threads when freed, and those threads do not exist in the child
            # (it would wait forever). Collected here, where they do.
            gc.collect()
        process.start()
        commands_in.close()  # the worker's ends: closed here so that its death reads as end-of-file
        messages_out.close()
        return _ProcessWorker(wid, process, commands, messages)

    def _send(self, worker: _ProcessWorker, command: WorkerCommand) -> None:
        try:
            worker.commands.send(command)
        except (OSError, ValueError):  # it died (its sentinel tells the supervisor) or was retired
            pass

    def _poll(
        self, timeout: float
    ) -> tuple[list[tuple[_ProcessWorker, WorkerMessage]], list[_ProcessWorker]]:
        workers = list(self.workers.values())
        waitables: list[Any] = [w.messages for w in workers] + [w.handle.sentinel for w in workers]
        ready = set(mp_connection.wait(waitables, timeout)) if waitables else set()
        if not waitables:
            time.sleep(timeout)
        messages: list[tuple[_ProcessWorker, WorkerMessage]] = []
        dead: list[_ProcessWorker] = []
        for worker in workers:
            exited = worker.handle.sentinel in ready
            if worker.messages in ready or exited:
                received, readable = self._drain(worker, everything=exited)
                messages.extend((worker, message) for message in received)
                exited = exited or not readable
            if exited:
                dead.append(worker)
        return messages, dead

    def _drain(self, worker: _ProcessWorker, everything: bool) -> tuple[list[WorkerMessage], bool]:
        """Messages waiting from one worker (at most MAX_DRAIN unless `everything`), and whether its pipe
        is still readable (false: it died mid-message or closed its end)."""
        received: list[WorkerMessage] = []
        try:
            for _ in range(1 << 30 if everything else MAX_DRAIN):
                if not worker.messages.poll():
                    break
                received.append(worker.messages.recv())
        except (EOFError, OSError):
            return received, False
        except Exception as error:  # noqa: BLE001 - a message cut short by a dying worker
            log.warning("decode process %d: unreadable message (%s)", worker.wid, describe_error(error))
            return received, False
        return received, True

    def _kill(self, worker: _ProcessWorker) -> None:
        process = worker.handle
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
        for conn in (worker.commands, worker.messages):
            conn.close()

    def _stop_worker(self, worker: _ProcessWorker) -> None:
        worker.handle.join(timeout=2)
        self._kill(worker)

    def _new_slots(self, count: int, nbytes: int) -> tuple[list[np.ndarray], np.ndarray | SharedBlock]:
        block, shared = shared_block(count, nbytes)
        return list(block), shared

    def _death_reason(self, worker: _ProcessWorker) -> str:
        process = worker.handle
        process.join(timeout=2)
        code = process.exitcode
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (killed from outside; out of memory?)" if -code == signal.SIGKILL else ""
            return f"died with {name}{hint}"
        return f"exited with code {code}"


class ThreadDecodePool(DecodePool[_ThreadWorker]):
    """Decode workers as threads of this process; a hung one is abandoned, not killed."""

    kind = "thread"

    def __init__(self, spec: DecodeSpec, workers: int, slots: int, timeout: float | None) -> None:
        super().__init__(spec, workers, slots, timeout)
        self.inbox: queue.Queue[tuple[int, WorkerMessage]] = queue.Queue()

    def _spawn(self, wid: int) -> _ThreadWorker:
        commands: queue.Queue[WorkerCommand] = queue.Queue()
        abandoned = threading.Event()
        worker = DecodeWorker(QueueLink(wid, self.inbox, commands, abandoned), self.spec, self.heartbeat_s)
        thread = threading.Thread(target=worker.serve, name=f"decode-{wid}", daemon=True)
        thread.start()
        return _ThreadWorker(wid, thread, commands, abandoned)

    def _send(self, worker: _ThreadWorker, command: WorkerCommand) -> None:
        worker.commands.put(command)

    def _poll(self, timeout: float) -> tuple[list[tuple[_ThreadWorker, WorkerMessage]], list[_ThreadWorker]]:
        messages: list[tuple[_ThreadWorker, WorkerMessage]] = []
        try:
            wid, message = self.inbox.get(timeout=timeout)
            while True:
                worker = self.workers.get(wid)
                if worker is not None:
                    messages.append((worker, message))
                wid, message = self.inbox.get_nowait()
        except queue.Empty:
            pass
        dead = [w for w in self.workers.values() if not w.handle.is_alive()]
        return messages, dead

    def _kill(self, worker: _ThreadWorker) -> None:
        worker.abandoned.set()  # a thread cannot be killed: it exits when it next sends or waits

    def _stop_worker(self, worker: _ThreadWorker) -> None:
        self._kill(worker)
        worker.handle.join(timeout=1)

    def _new_slots(self, count: int, nbytes: int) -> tuple[list[np.ndarray], np.ndarray | SharedBlock]:
        block = np.empty((count, nbytes), dtype=np.uint8)
        return list(block), block

    def _death_reason(self, worker: _ThreadWorker) -> str:
        return "ended unexpectedly"


def open_pool(
    spec: DecodeSpec,
    *,
    backend: str,
    workers: int,
    slots: int,
    timeout: float | None,
    start_method: str = "fork",
) -> DecodePool[Any]:
    """A pool of `workers` decode workers of `backend` ("process" or "thread"), `slots` slots each."""
    if backend == "thread":
        return ThreadDecodePool(spec, workers, slots, timeout)
    return ProcessDecodePool(spec, workers, slots, timeout, start_method=start_method)
