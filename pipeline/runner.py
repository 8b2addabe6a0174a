"""The streaming engine: decode workers -> shared clip slots -> one batched model -> rows per video.

`Engine.run(jobs)` yields one `VideoResult` per video as soon as its last row is back; clips of several
videos share a batch. `decode_workers` workers live for the whole run, each decoding one video at a time:

- backend "process" (the default): worker processes, forked (any callable works, nothing is pickled or
  re-imported; each worker limits torch to one thread) or, on request, started by a forkserver. A worker
  without progress for `decode_timeout` seconds is killed and its video failed; a worker that dies (a
  segfault in a codec, the OOM killer) fails only its video and is replaced; the run goes on.
- backend "thread": the same decode loop in threads (nothing is pickled; easy to debug). A hung video is
  failed and its thread abandoned; a crash inside a codec ends the whole process.

Clips travel as uint8 through slots the engine allocates (shared memory for processes): each clip is
written once by its worker and copied once, into the model's batch. Memory is bounded by the slots
(about `queue_size` clips in all), never by video length. Nothing here knows of Hydra or output files.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from multiprocessing import reduction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.config import usable_cpus  # unlike the model's threads, not limited by OMP_NUM_THREADS
from pipeline.io import (
    DEFAULT_FRAMES_FPS,
    DEFAULT_FRAMES_PATTERN,
    DecodeError,
    FrameSource,
    SourceInfo,
    open_source,
)
from pipeline.sampling import ClipStream, ReadyClip, WindowSpec

log = logging.getLogger(__name__)

DECODE_BACKENDS = ("process", "thread")
START_METHODS = ("fork", "forkserver")
STARTUP_S = 60.0  # a worker process not ready by then means the pool cannot work at all
LINGER_S = 0.01  # how long a partial batch waits for one more clip before the model runs it
MAX_DRAIN = 64  # messages taken from one worker per supervisor round (keeps the others served)


@dataclass(frozen=True)
class VideoJob:
    """One video to extract: its output key, its source path and its listed relative path."""

    key: str
    path: Path
    rel: str


@dataclass
class VideoResult:
    """Everything known about one finished (or failed) video."""

    job: VideoJob
    features: np.ndarray | None = None  # (rows, dim) or (rows, crops, dim)
    logits: dict[str, np.ndarray] | None = None  # head name -> (rows, classes) or (rows, crops, classes)
    timestamps: np.ndarray | None = None  # (rows, 3) start, end, centre seconds
    info: SourceInfo | None = None
    frames: int = 0  # frames the model saw (after fps resampling)
    frame_duration: float = 0.0
    decode_seconds: float = 0.0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ClipModel(Protocol):
    """Anything that maps uint8 clips (B, T, H, W, 3) plus valid masks (B, T) to features (B, dim)."""

    def __call__(
        self, clips: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]: ...


@dataclass(frozen=True)
class SourceOpener:
    """Opens a job's video file or frame folder with fixed settings; picklable, so worker processes get it."""

    fps: float | None = None
    frames_pattern: str = DEFAULT_FRAMES_PATTERN
    frames_fps: float = DEFAULT_FRAMES_FPS
    resize: tuple[int, int] | None = None

    def __call__(self, job: VideoJob) -> FrameSource:
        return open_source(
            job.path,
            fps=self.fps,
            frames_pattern=self.frames_pattern,
            frames_fps=self.frames_fps,
            resize=self.resize,
        )


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode worker needs: how to open a job, the per-frame transform, clip windows, frame rate."""

    open_video: Callable[[VideoJob], FrameSource]
    transform: Callable[[np.ndarray], np.ndarray]
    window: WindowSpec
    fps: float | None


class DecodeWorkerError(RuntimeError):
    """A decode worker died (signal or exit) while decoding a video."""


class DecodeTimeout(RuntimeError):
    """A video made no decoding progress for longer than the decode timeout."""


def describe_error(error: BaseException) -> str:
    """One line naming the error class and its message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def stack_clip(clip: ReadyClip, out: np.ndarray | None = None) -> np.ndarray:
    """Build a (crops, T, H, W, 3) uint8 array from the clip's frame payloads (None = zero padding).

    With `out` (a reused buffer of that shape) every position is written, padding included.
    """
    first = next(frame for frame in clip.frames if frame is not None)
    shape = (first.shape[0], len(clip.frames), *first.shape[1:])
    pixels = np.zeros(shape, dtype=np.uint8) if out is None else out
    if pixels.shape != shape:
        raise ValueError(f"stack_clip: out has shape {pixels.shape}, the clip needs {shape}")
    for t, frame in enumerate(clip.frames):
        if frame is not None:
            pixels[:, t] = frame
        elif out is not None:
            pixels[:, t] = 0
    return pixels


def clip_shape(clip: ReadyClip) -> tuple[int, ...]:
    """(crops, T, H, W, 3) of a clip's stacked pixels."""
    first = next(frame for frame in clip.frames if frame is not None)
    return (first.shape[0], len(clip.frames), *first.shape[1:])


# --- items the decode side hands to the model loop ----------------------------------------------------


@dataclass
class _Clip:
    video: int
    row: int
    pixels: np.ndarray  # (crops, T, H, W, 3) uint8, a view of a slot until released
    valid: np.ndarray  # (T,) bool
    timestamps: np.ndarray  # (3,)
    release: Callable[[], None]  # gives the slot back to its worker (call once the pixels are copied)


@dataclass
class _VideoEnd:
    video: int
    rows: int
    frames: int
    frame_duration: float
    info: SourceInfo
    decode_seconds: float


@dataclass
class _VideoFailed:
    video: int
    error: str


@dataclass
class _PoolFailed:
    error: str


@dataclass
class _Pending:
    job: VideoJob
    started: float
    rows: dict[int, tuple[np.ndarray, dict[str, np.ndarray] | None, np.ndarray]] = field(default_factory=dict)
    end: _VideoEnd | None = None


# --- the worker side (a thread or a process) ---------------------------------------------------------
# Messages are tuples whose first element names them.
# supervisor -> worker: (JOB, number, job) | (SLOTS, generation, (slots, nbytes) uint8 block or its handle)
#                       | (FREE, generation, slot) | (STOP,)
# worker -> supervisor: (READY,) | (NEED_SLOTS, nbytes) | (CLIP, number, row, slot, shape, valid, stamps)
#                       | (ALIVE, number) | (END, number, rows, frames, frame_duration, info, seconds)
#                       | (FAILED, number, error)

JOB, SLOTS, FREE, STOP = "job", "slots", "free", "stop"
READY, NEED_SLOTS, CLIP, ALIVE, END, FAILED = "ready", "need_slots", "clip", "alive", "end", "failed"


class _Stop(Exception):
    """The engine stopped this worker, gave up on it, or went away."""


class _Link(Protocol):
    """A worker's connection to its supervisor."""

    def send(self, message: tuple) -> None: ...

    def recv(self) -> tuple: ...


class _DecodeWorker:
    """Decodes the videos it is given, one at a time, into slots the supervisor lends it."""

    def __init__(self, link: _Link, spec: DecodeSpec, heartbeat_s: float) -> None:
        self.link = link
        self.spec = spec
        self.heartbeat_s = heartbeat_s
        self.slots: list[np.ndarray] = []
        self.generation = -1  # of the current slots; FREE messages of older ones are stale
        self.free: list[int] = []

    def serve(self) -> None:
        """Take jobs until told to stop."""
        try:
            self.link.send((READY,))
            while True:
                message = self.link.recv()
                if message[0] == JOB:
                    self._decode(message[1], message[2])
                else:
                    self._absorb(message)
        except _Stop:
            return

    def _absorb(self, message: tuple) -> None:
        kind = message[0]
        if kind == FREE:
            if message[1] == self.generation:
                self.free.append(message[2])
        elif kind == SLOTS:
            self.generation, self.slots = message[1], list(message[2])
            self.free = list(range(len(self.slots)))
        elif kind == STOP:
            raise _Stop
        else:
            raise RuntimeError(f"decode worker: unexpected message {kind!r}")

    def _slot(self, nbytes: int) -> int:
        """A free slot of at least nbytes (waits for the model side to give one back)."""
        if not self.slots or nbytes > self.slots[0].nbytes:  # (larger) slots; the old ones are dropped
            self.slots, self.free = [], []
            self.link.send((NEED_SLOTS, nbytes))
            while not self.slots:
                self._absorb(self.link.recv())
        while not self.free:
            self._absorb(self.link.recv())
        return self.free.pop()

    def _send_clip(self, number: int, clip: ReadyClip) -> None:
        shape = clip_shape(clip)
        nbytes = int(np.prod(shape))
        slot = self._slot(nbytes)
        stack_clip(clip, self.slots[slot][:nbytes].reshape(shape))
        self.link.send((CLIP, number, clip.index, slot, shape, clip.valid, clip.timestamps))

    def _decode(self, number: int, job: VideoJob) -> None:
        spec = self.spec
        started = last_beat = time.perf_counter()
        rows = frames = 0
        try:
            with spec.open_video(job) as source:
                frame_duration = 1.0 / (spec.fps or source.info.native_fps or 30.0)
                stream = ClipStream(spec.window, frame_duration)
                for frame in source:
                    frames += 1
                    for clip in stream.push(spec.transform(frame.image), frame.time):
                        self._send_clip(number, clip)
                        rows += 1
                    now = time.perf_counter()
                    if now - last_beat >= self.heartbeat_s:
                        self.link.send((ALIVE, number))
                        last_beat = now
                if frames == 0:
                    raise DecodeError(job.path, "zero decodable frames")
                for clip in stream.finish():
                    self._send_clip(number, clip)
                    rows += 1
                info = source.info
        except _Stop:
            raise
        except Exception as error:  # every failure is data: one record for this video
            self.link.send((FAILED, number, describe_error(error)))
            return
        self.link.send((END, number, rows, frames, frame_duration, info, time.perf_counter() - started))


class _PipeLink:
    """A worker process's end: commands in, messages out (its shared-memory slots arrive as a descriptor)."""

    def __init__(self, commands: mp_connection.Connection, messages: mp_connection.Connection) -> None:
        self.commands, self.messages = commands, messages
        self.parent = os.getppid()

    def send(self, message: tuple) -> None:
        try:
            self.messages.send(message)
        except OSError as error:  # the engine went away
            raise _Stop from error

    def recv(self) -> tuple:
        try:
            while not self.commands.poll(1.0):
                if os.getppid() != self.parent:  # orphaned: the engine was killed
                    raise _Stop
            message = self.commands.recv()
        except (EOFError, OSError) as error:
            raise _Stop from error
        if message[0] == SLOTS:
            message = (SLOTS, message[1], map_block(*message[2]))
        return message


def shared_block(count: int, nbytes: int) -> tuple[np.ndarray, tuple[Any, int, int]]:
    """A (count, nbytes) uint8 block of anonymous shared memory (memfd: not limited by /dev/shm's size),
    and what a worker process needs to map it too (a descriptor passed over a multiprocessing pipe)."""
    fd = os.memfd_create("pipeline-clip-slots", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, count * nbytes)
        mapping = mmap.mmap(fd, count * nbytes)
        handle = reduction.DupFd(fd)  # a duplicate, handed to the worker when it unpickles the message
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=np.uint8).reshape(count, nbytes), (handle, count, nbytes)


def map_block(handle: Any, count: int, nbytes: int) -> np.ndarray:
    """The worker's view of a `shared_block`."""
    fd = handle.detach()
    try:
        mapping = mmap.mmap(fd, count * nbytes)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=np.uint8).reshape(count, nbytes)


def _worker_process(
    commands: mp_connection.Connection,
    messages: mp_connection.Connection,
    spec: DecodeSpec,
    heartbeat_s: float,
    inherited: tuple[mp_connection.Connection, ...] = (),
) -> None:
    """Entry point of a decode process: one torch thread, Ctrl-C left to the engine.

    `inherited`: the engine's ends of every worker's pipes, which a forked worker got copies of; closed
    so that the engine's death reads as end-of-file (or a broken pipe) here.
    """
    for connection in inherited:
        connection.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Slurm signals every process of the step; preemption (USR2) and time limits are the parent's job
    # (submitit requeues once), so a forked worker must not run the parent's inherited handlers.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch

    torch.set_num_threads(1)
    _DecodeWorker(_PipeLink(commands, messages), spec, heartbeat_s).serve()


class _QueueLink:
    """A worker thread's end: its own command queue, and the supervisor's shared inbox."""

    def __init__(
        self, wid: int, inbox: queue.Queue, commands: queue.Queue, abandoned: threading.Event
    ) -> None:
        self.wid, self.inbox, self.commands, self.abandoned = wid, inbox, commands, abandoned

    def send(self, message: tuple) -> None:
        if self.abandoned.is_set():
            raise _Stop
        self.inbox.put((self.wid, message))

    def recv(self) -> tuple:
        while True:
            if self.abandoned.is_set():
                raise _Stop
            try:
                return self.commands.get(timeout=0.2)
            except queue.Empty:
                continue


# --- the supervisor (a thread of the engine's process) -----------------------------------------------


@dataclass
class _Worker:
    """The supervisor's view of one worker."""

    wid: int
    handle: Any  # multiprocessing Process or threading.Thread
    commands: Any  # Connection (process) or queue.Queue (thread)
    messages: Any = None  # Connection (process)
    abandoned: threading.Event | None = None  # thread backend: set when given up on
    ready: bool = False
    video: int | None = None  # number of the video it decodes
    job: VideoJob | None = None
    slots: list[np.ndarray] = field(default_factory=list)
    generation: int = -1  # of its current slots
    held: int = 0  # of its current slots, those the model side holds
    deadline: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    spawned: float = field(default_factory=time.monotonic)


class _DecodePool:
    """Keeps the workers busy with jobs, forwards their clips, and fails a video whose worker hangs or
    dies (then replaces that worker). Subclasses say what a worker is."""

    kind = "worker"

    def __init__(
        self, spec: DecodeSpec, workers: int, slots: int, timeout: float | None, out: queue.Queue
    ) -> None:
        self.spec = spec
        self.num_workers = workers
        self.slots_per_worker = slots
        self.timeout = timeout
        self.heartbeat_s = min(1.0, timeout / 4) if timeout else 1.0
        self.out = out
        self.todo: deque[tuple[int, VideoJob]] = deque()
        self.workers: dict[int, _Worker] = {}
        self.next_wid = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.replaced = 0

    # -- what a worker is (subclasses) --
    def _spawn(self, wid: int) -> _Worker:
        raise NotImplementedError

    def _send(self, worker: _Worker, message: tuple) -> None:
        raise NotImplementedError

    def _poll(self, timeout: float) -> tuple[list[tuple[_Worker, tuple]], list[_Worker]]:
        """Messages that arrived within `timeout` (in order per worker), and workers that died."""
        raise NotImplementedError

    def _kill(self, worker: _Worker) -> None:
        raise NotImplementedError

    def _new_slots(self, count: int, nbytes: int) -> tuple[list[np.ndarray], Any]:
        """`count` slots of `nbytes` for one worker: (their views here, the (count, nbytes) block it gets)."""
        raise NotImplementedError

    def _death_reason(self, worker: _Worker) -> str:
        raise NotImplementedError

    # -- life cycle --
    def start(self, jobs: list[tuple[int, VideoJob]]) -> None:
        self.todo.extend(jobs)
        for _ in range(min(self.num_workers, len(jobs))):
            self._add_worker()
        self.thread = threading.Thread(target=self._supervise, name="decode-supervisor", daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def close(self) -> None:
        """Stop the supervisor and every worker (killing those that do not stop promptly)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        for worker in list(self.workers.values()):
            try:
                with worker.lock:
                    self._send(worker, (STOP,))
            except Exception:  # noqa: BLE001 - already gone
                pass
        for worker in list(self.workers.values()):
            self._retire(worker, graceful=True)
        self.workers.clear()

    def release(self, wid: int, generation: int, slot: int) -> None:
        """The model side copied a clip out of this slot: lend it back (from the model thread)."""
        worker = self.workers.get(wid)
        if worker is None:  # replaced meanwhile; its buffers go when the last view does
            return
        with worker.lock:
            if generation != worker.generation:
                return
            worker.held -= 1
            try:
                self._send(worker, (FREE, generation, slot))
            except Exception:  # noqa: BLE001 - a dead worker is the supervisor's business
                pass

    def _add_worker(self) -> None:
        wid = self.next_wid
        self.next_wid += 1
        self.workers[wid] = self._spawn(wid)

    def _retire(self, worker: _Worker, graceful: bool = False) -> None:
        """Forget a worker: kill it, or (graceful) give it a moment to exit after STOP first."""
        self.workers.pop(worker.wid, None)
        if graceful:
            self._stop_worker(worker)
        else:
            self._kill(worker)

    def _stop_worker(self, worker: _Worker) -> None:
        self._kill(worker)

    # -- the supervisor loop --
    def _supervise(self) -> None:
        try:
            while not self.stop.is_set() and (
                self.todo or any(w.video is not None for w in self.workers.values())
            ):
                self._assign()
                messages, dead = self._poll(self._wait_time())
                for worker, message in messages:
                    if worker.wid in self.workers:
                        self._handle(worker, message)
                for worker in dead:
                    if worker.wid in self.workers:
                        self._lost(worker, self._death_reason(worker))
                self._check_deadlines()
        except BaseException as error:  # noqa: BLE001 - surfaces in the model loop as a run error
            log.exception("decode supervisor failed")
            self.out.put(_PoolFailed(f"decode supervisor failed: {describe_error(error)}"))

    def _wait_time(self) -> float:
        deadlines = [w.deadline for w in self.workers.values() if w.deadline is not None]
        if not deadlines:
            return 0.5
        return min(0.5, max(0.0, min(deadlines) - time.monotonic()))

    def _assign(self) -> None:
        for worker in list(self.workers.values()):
            if worker.ready and worker.video is None and self.todo:
                number, job = self.todo.popleft()
                worker.video, worker.job = number, job
                self._touch(worker)
                with worker.lock:
                    self._send(worker, (JOB, number, job))

    def _touch(self, worker: _Worker) -> None:
        worker.deadline = (
            time.monotonic() + self.timeout if self.timeout and worker.video is not None else None
        )

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == READY:
            worker.ready = True
            return
        if kind == NEED_SLOTS:
            views, payload = self._new_slots(self.slots_per_worker, message[1])
            with worker.lock:
                worker.slots, worker.held = views, 0
                worker.generation += 1
                self._send(worker, (SLOTS, worker.generation, payload))
        elif kind == CLIP:
            _, number, row, slot, shape, valid, stamps = message
            with worker.lock:
                worker.held += 1
            pixels = worker.slots[slot][: int(np.prod(shape))].reshape(shape)
            release = functools.partial(self.release, worker.wid, worker.generation, slot)
            self.out.put(_Clip(number, row, pixels, valid, stamps, release))
        elif kind == END:
            _, number, rows, frames, frame_duration, info, seconds = message
            self.out.put(_VideoEnd(number, rows, frames, frame_duration, info, seconds))
            worker.video = worker.job = None
        elif kind == FAILED:
            self.out.put(_VideoFailed(message[1], message[2]))
            worker.video = worker.job = None
        elif kind != ALIVE:
            raise RuntimeError(f"unexpected message {kind!r} from decode {self.kind} {worker.wid}")
        self._touch(worker)

    def _lost(self, worker: _Worker, reason: str) -> None:
        """A worker died: fail its video, replace it while there is work left."""
        if not worker.ready:
            raise RuntimeError(f"decode {self.kind} failed to start ({reason})")
        self._retire(worker)
        if worker.video is not None and worker.job is not None:
            error = DecodeWorkerError(
                f"{worker.job.path}: decode {self.kind} {reason} while decoding this video"
            )
            log.error("%s", describe_error(error))
            self.out.put(_VideoFailed(worker.video, describe_error(error)))
        if self.todo:
            self.replaced += 1
            self._add_worker()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if not worker.ready and now - worker.spawned > STARTUP_S:
                raise RuntimeError(f"decode {self.kind} {worker.wid} did not start within {STARTUP_S:g} s")
            if worker.deadline is None:
                continue
            with worker.lock:
                blocked = bool(worker.slots) and worker.held >= len(worker.slots)
            if blocked:  # waiting for the model side to give slots back: not the video's fault
                self._touch(worker)
            elif now > worker.deadline and worker.job is not None and worker.video is not None:
                error = DecodeTimeout(
                    f"{worker.job.path}: no decoding progress for {self.timeout:g} s (data.decode_timeout_s)"
                )
                log.error("%s", describe_error(error))
                self._retire(worker)
                self.out.put(_VideoFailed(worker.video, describe_error(error)))
                if self.todo:
                    self.replaced += 1
                    self._add_worker()


class _ProcessPool(_DecodePool):
    """Decode workers as processes; clips come back through shared-memory slots."""

    kind = "process"

    def __init__(self, *args: Any, start_method: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import multiprocessing

        self.context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Modules every worker needs, imported once by the fork server instead of once per worker.
            self.context.set_forkserver_preload(
                ["pipeline.runner", "pipeline.transforms", "pipeline.io.video"]
            )

    def _spawn(self, wid: int) -> _Worker:
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
            target=_worker_process,
            name=f"decode-{wid}",
            daemon=True,
            args=(commands_in, messages_out, self.spec, self.heartbeat_s, inherited),
        )
        process.start()
        commands_in.close()  # the worker's ends: closed here so that its death reads as end-of-file
        messages_out.close()
        return _Worker(wid, process, commands, messages)

    def _send(self, worker: _Worker, message: tuple) -> None:
        try:
            worker.commands.send(message)
        except (OSError, ValueError):  # it died (its sentinel tells the supervisor) or was retired
            pass

    def _poll(self, timeout: float) -> tuple[list[tuple[_Worker, tuple]], list[_Worker]]:
        workers = list(self.workers.values())
        waitables = [w.messages for w in workers] + [w.handle.sentinel for w in workers]
        ready = set(mp_connection.wait(waitables, timeout)) if waitables else set()
        if not waitables:
            time.sleep(timeout)
        messages: list[tuple[_Worker, tuple]] = []
        dead: list[_Worker] = []
        for worker in workers:
            exited = worker.handle.sentinel in ready
            if worker.messages in ready or exited:
                try:
                    for _ in range(MAX_DRAIN if not exited else 1 << 30):
                        if not worker.messages.poll():
                            break
                        messages.append((worker, worker.messages.recv()))
                except (EOFError, OSError):
                    exited = True
                except Exception as error:  # noqa: BLE001 - a message cut short by a dying worker
                    log.warning(
                        "decode process %d: unreadable message (%s)", worker.wid, describe_error(error)
                    )
                    exited = True
            if exited:
                dead.append(worker)
        return messages, dead

    def _kill(self, worker: _Worker) -> None:
        process = worker.handle
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
        for conn in (worker.commands, worker.messages):
            conn.close()

    def _stop_worker(self, worker: _Worker) -> None:
        worker.handle.join(timeout=2)
        self._kill(worker)

    def _new_slots(self, count: int, nbytes: int) -> tuple[list[np.ndarray], Any]:
        block, handle = shared_block(count, nbytes)
        return list(block), handle

    def _death_reason(self, worker: _Worker) -> str:
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


class _ThreadPool(_DecodePool):
    """Decode workers as threads of this process; a hung one is abandoned, not killed."""

    kind = "thread"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: queue.Queue = queue.Queue()

    def _spawn(self, wid: int) -> _Worker:
        commands: queue.Queue = queue.Queue()
        abandoned = threading.Event()
        worker = _DecodeWorker(_QueueLink(wid, self.inbox, commands, abandoned), self.spec, self.heartbeat_s)
        thread = threading.Thread(target=worker.serve, name=f"decode-{wid}", daemon=True)
        thread.start()
        return _Worker(wid, thread, commands, abandoned=abandoned)

    def _send(self, worker: _Worker, message: tuple) -> None:
        worker.commands.put(message)

    def _poll(self, timeout: float) -> tuple[list[tuple[_Worker, tuple]], list[_Worker]]:
        messages: list[tuple[_Worker, tuple]] = []
        try:
            item = self.inbox.get(timeout=timeout)
            while True:
                worker = self.workers.get(item[0])
                if worker is not None:
                    messages.append((worker, item[1]))
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        dead = [w for w in self.workers.values() if not w.handle.is_alive()]
        return messages, dead

    def _kill(self, worker: _Worker) -> None:
        assert worker.abandoned is not None
        worker.abandoned.set()  # a thread cannot be killed: it exits when it next sends or waits

    def _stop_worker(self, worker: _Worker) -> None:
        self._kill(worker)
        worker.handle.join(timeout=1)

    def _new_slots(self, count: int, nbytes: int) -> tuple[list[np.ndarray], Any]:
        block = np.empty((count, nbytes), dtype=np.uint8)
        return list(block), block

    def _death_reason(self, worker: _Worker) -> str:
        return "ended unexpectedly"


# --- the engine (model side, in the calling thread) --------------------------------------------------


class Engine:
    """Runs videos through decode workers and one batched model, yielding results per video."""

    def __init__(
        self,
        model: ClipModel,
        open_video: Callable[[VideoJob], FrameSource],
        transform: Callable[[np.ndarray], np.ndarray],
        window: WindowSpec,
        *,
        fps: float | None,
        batch_size: int = 4,
        queue_size: int = 16,
        decode_workers: int = 1,
        crop_reduce: str = "stack",
        decode_backend: str = "process",
        decode_timeout: float | None = None,
        start_method: str = "fork",
    ) -> None:
        if decode_backend not in DECODE_BACKENDS:
            raise ValueError(f"decode_backend must be one of {DECODE_BACKENDS} (got {decode_backend!r})")
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS} (got {start_method!r})")
        if decode_timeout is not None and not decode_timeout > 0:
            raise ValueError(f"decode_timeout must be > 0 seconds or None (got {decode_timeout})")
        self.model = model
        self.spec = DecodeSpec(open_video, transform, window, fps)
        self.window = window
        self.fps = fps
        self.batch_size = batch_size
        self.queue_size = max(queue_size, batch_size)
        cpus = usable_cpus()
        if decode_workers == 0:  # one per CPU this process may use (Slurm's cpus_per_task on a cluster)
            decode_workers = cpus
            log.info("hardware.decode_workers=0: %d decode workers, one per usable CPU", cpus)
        elif decode_workers > cpus:
            log.warning(
                "hardware.decode_workers=%d is more than the %d CPUs this process may use: using %d",
                decode_workers,
                cpus,
                cpus,
            )
        self.decode_workers = max(1, min(decode_workers, cpus))
        self.crop_reduce = crop_reduce
        self.decode_backend = decode_backend
        self.decode_timeout = decode_timeout
        self.start_method = start_method
        self.last_pool: _DecodePool | None = None  # the latest run's decode pool (for tests and benchmarks)

    # --- decoding side ---------------------------------------------------------------------------

    def _pool(self, out: queue.Queue, jobs: int) -> _DecodePool:
        workers = min(self.decode_workers, jobs)
        slots = max(2, -(-self.queue_size // workers))
        args = (self.spec, workers, slots, self.decode_timeout, out)
        if self.decode_backend == "thread":
            return _ThreadPool(*args)
        return _ProcessPool(*args, start_method=self.start_method)

    # --- model side --------------------------------------------------------------------------------

    def _run_batch(self, batch: list[_Clip], pending: dict[int, _Pending]) -> None:
        live = [clip for clip in batch if clip.video in pending]  # a video may have failed meanwhile
        try:
            if live:
                crops = live[0].pixels.shape[0]
                pixels = np.concatenate([clip.pixels for clip in live])  # (B*crops, T, H, W, 3), a copy
                valid = np.repeat(np.stack([clip.valid for clip in live]), crops, axis=0)
        finally:
            for clip in batch:  # slots go back before the model runs: workers decode meanwhile
                clip.release()
        if not live:
            return
        features, logits = self.model(pixels, valid)
        features = features.reshape(len(live), crops, *features.shape[1:])
        logits = {k: v.reshape(len(live), crops, *v.shape[1:]) for k, v in logits.items()} if logits else None
        for i, clip in enumerate(live):
            row_logits = {k: self._reduce(v[i]) for k, v in logits.items()} if logits else None
            pending[clip.video].rows[clip.row] = (self._reduce(features[i]), row_logits, clip.timestamps)

    def _reduce(self, per_crop: np.ndarray) -> np.ndarray:
        """(crops, dim) -> (dim,) for one crop or `mean`; else kept as (crops, dim)."""
        if per_crop.shape[0] == 1:
            return per_crop[0]
        return per_crop.mean(axis=0) if self.crop_reduce == "mean" else per_crop

    def _finish(self, state: _Pending) -> VideoResult:
        end = state.end
        assert end is not None
        order = sorted(state.rows)
        if order:
            features = np.stack([state.rows[r][0] for r in order])
            timestamps = np.stack([state.rows[r][2] for r in order])
            first_logits = state.rows[order[0]][1]
            logits = (
                {k: np.stack([state.rows[r][1][k] for r in order]) for k in first_logits}
                if first_logits
                else None
            )
        else:
            features, timestamps, logits = None, np.zeros((0, 3)), None
        return VideoResult(
            state.job,
            features,
            logits,
            timestamps,
            end.info,
            end.frames,
            end.frame_duration,
            end.decode_seconds,
            time.perf_counter() - state.started,
        )

    @staticmethod
    def _next_item(out: queue.Queue, pool: _DecodePool, wait: bool) -> Any:
        """The next decode item; with a partial batch (not `wait`), None after a short linger."""
        while True:
            try:
                item = out.get(timeout=1.0 if wait else LINGER_S)
            except queue.Empty:
                if not wait:
                    return None
                if not pool.running() and out.empty():
                    raise RuntimeError(
                        "internal: the decode pool stopped before every video was accounted for"
                    ) from None
                continue
            if isinstance(item, _PoolFailed):
                raise RuntimeError(item.error)
            return item

    def run(self, jobs: Iterable[VideoJob]) -> Iterator[VideoResult]:
        """Yield one result per job, each as soon as its video is complete (not in list order)."""
        numbered = list(enumerate(jobs))
        if not numbered:
            return
        out: queue.Queue = queue.Queue()  # bounded by the slots, not by this queue
        pool = self.last_pool = self._pool(out, len(numbered))
        jobs_by_number = dict(numbered)
        pending: dict[int, _Pending] = {}
        failed: set[int] = set()
        remaining = len(numbered)  # videos whose end (or failure) has not arrived
        batch: list[_Clip] = []

        def state_of(number: int) -> _Pending:
            if number not in pending:
                pending[number] = _Pending(jobs_by_number[number], time.perf_counter())
            return pending[number]

        pool.start(numbered)
        try:
            while remaining or batch:
                item = self._next_item(out, pool, wait=not batch)
                if isinstance(item, _Clip):
                    if item.video in failed:
                        item.release()
                    else:
                        state_of(item.video)
                        batch.append(item)
                elif isinstance(item, _VideoEnd):
                    remaining -= 1
                    state_of(item.video).end = item
                elif isinstance(item, _VideoFailed):
                    remaining -= 1
                    failed.add(item.video)
                    state = pending.pop(item.video, None) or _Pending(
                        jobs_by_number[item.video], time.perf_counter()
                    )
                    yield VideoResult(
                        state.job, error=item.error, seconds=time.perf_counter() - state.started
                    )
                if batch and (len(batch) >= self.batch_size or item is None):
                    current, batch = batch, []
                    self._run_batch(current, pending)
                for number in [n for n, s in pending.items() if s.end and len(s.rows) == s.end.rows]:
                    yield self._finish(pending.pop(number))
            for number in list(pending):  # cannot happen: every end follows its video's clips
                state = pending.pop(number)
                yield VideoResult(
                    state.job,
                    error="internal: video ended without all rows",
                    seconds=time.perf_counter() - state.started,
                )
        finally:
            for clip in batch:
                clip.release()
            pool.close()


def count_clips(results: Iterable[VideoResult]) -> int:
    """Total rows over results (for throughput figures)."""
    return sum(len(r.features) for r in results if r.features is not None)


__all__ = [
    "DECODE_BACKENDS",
    "ClipModel",
    "DecodeSpec",
    "DecodeTimeout",
    "DecodeWorkerError",
    "Engine",
    "SourceOpener",
    "VideoJob",
    "VideoResult",
    "count_clips",
    "describe_error",
    "stack_clip",
    "usable_cpus",
]
