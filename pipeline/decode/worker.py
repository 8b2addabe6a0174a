"""A decode worker (a process or a thread): decodes the videos it is given, one at a time, cuts clips and
writes each into a slot its supervisor lends; every failure of a video is one message, never its end."""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from typing import Protocol

import numpy as np

from pipeline.decode.protocol import (
    ClipReady,
    DecodeVideo,
    FreeSlot,
    LendSlots,
    NeedSlots,
    StillDecoding,
    StopWorker,
    VideoDecoded,
    VideoFailed,
    VideoJob,
    WorkerCommand,
    WorkerMessage,
    WorkerReady,
)
from pipeline.decode.slots import (
    SharedBlock,
    clip_dtype,
    clip_nbytes,
    clip_shape,
    slot_size,
    slot_view,
    stack_clip,
)
from pipeline.errors import PipelineError, describe_error
from pipeline.io import (
    DEFAULT_FRAMES_FPS,
    DEFAULT_FRAMES_PATTERN,
    DecodeError,
    FlowSettings,
    FrameSource,
    StoredFrames,
    open_source,
    stream_source,
)
from pipeline.sampling import ClipStream, ReadyClip, WindowSpec


@dataclass(frozen=True)
class SourceOpener:
    """Opens a job's video file or frame folder with fixed settings; picklable, so worker processes get it.

    `stream` "flow": the source yields optical flow of the (resampled) frames, computed here, in the decode
    worker (`pipeline.io.flow`); `stored`: the frames as a frame-extraction tool stored them (size, JPEG,
    first frame skipped); `flow`: the flow algorithm and its settings.
    """

    fps: float | None = None
    frames_pattern: str = DEFAULT_FRAMES_PATTERN
    frames_fps: float = DEFAULT_FRAMES_FPS
    resize: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None
    threads: int = 0  # FFmpeg decoder threads per video (0: FFmpeg's choice, one per CPU of the node)
    stream: str = "rgb"
    stored: StoredFrames = StoredFrames()
    flow: FlowSettings = FlowSettings()

    def __call__(self, job: VideoJob) -> FrameSource:
        source = open_source(
            job.path,
            fps=self.fps,
            frames_pattern=self.frames_pattern,
            frames_fps=self.frames_fps,
            resize=self.resize,
            threads=self.threads,
        )
        try:
            return stream_source(source, self.stream, self.stored, self.flow)
        except BaseException:
            source.close()
            raise


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode worker needs: how to open a job, the per-frame transform, clip windows, frame rate."""

    open_video: Callable[[VideoJob], FrameSource]
    transform: Callable[[np.ndarray], np.ndarray]
    window: WindowSpec
    fps: float | None


class NoClipError(PipelineError):
    """A video whose frames hold no whole clip under pad "drop": nothing to extract, so a failed record
    (TSP's extraction raises on such a video; a row-less file would break the trainers that read it)."""

    def __init__(self, path: object, frames: int, window: WindowSpec, fps: float | None) -> None:
        rate = f" at {fps:g} fps" if fps else ""
        super().__init__(
            f"{path}: {frames} frames{rate} hold no whole clip of {window.span} frames (data.pad=drop keeps "
            "only the clips that need no padding): no row; data.pad=zero, edge or shift gives it one"
        )


class DecodeWorkerError(RuntimeError):
    """A decode worker died (signal or exit) while decoding a video."""


class DecodeTimeout(RuntimeError):
    """A video made no decoding progress for longer than the decode timeout."""


class DecodePoolError(RuntimeError):
    """The pool itself broke (not one video): the run cannot go on."""


# --- the worker side (a thread or a process) ------------------------------------------------------


class _Stop(Exception):
    """The pool stopped this worker, gave up on it, or went away."""


class WorkerLink(Protocol):
    """A worker's connection to its supervisor."""

    def send(self, message: WorkerMessage) -> None: ...

    def recv(self) -> WorkerCommand: ...


class DecodeWorker:
    """Decodes the videos it is given, one at a time, into slots the supervisor lends it."""

    def __init__(self, link: WorkerLink, spec: DecodeSpec, heartbeat_s: float) -> None:
        self.link = link
        self.spec = spec
        self.heartbeat_s = heartbeat_s
        self.slots: list[np.ndarray] = []
        self.generation = -1  # of the current slots; FreeSlot commands of older ones are stale
        self.free: list[int] = []

    def serve(self) -> None:
        """Take jobs until told to stop."""
        try:
            self.link.send(WorkerReady())
            while True:
                command = self.link.recv()
                if isinstance(command, DecodeVideo):
                    self._decode(command)
                else:
                    self._absorb(command)
        except _Stop:
            return

    def _absorb(self, command: WorkerCommand) -> None:
        """Apply a command that is not a job (slots lent or freed, stop)."""
        if isinstance(command, FreeSlot):
            if command.generation == self.generation:
                self.free.append(command.slot)
        elif isinstance(command, LendSlots):
            if not isinstance(command.block, np.ndarray):
                raise TypeError("decode worker: slots arrived unmapped")  # links map them on receipt
            self.generation, self.slots = command.generation, list(command.block)
            self.free = list(range(len(self.slots)))
        elif isinstance(command, StopWorker):
            raise _Stop
        else:
            raise RuntimeError(f"decode worker: unexpected command {command!r}")

    def _slot(self, nbytes: int) -> int:
        """A free slot of at least nbytes (waits for the model side to give one back)."""
        if not self.slots or nbytes > self.slots[0].nbytes:  # (larger) slots; the old ones are dropped
            self.slots, self.free = [], []
            self.link.send(NeedSlots(nbytes))
            while not self.slots:
                self._absorb(self.link.recv())
        while not self.free:
            self._absorb(self.link.recv())
        return self.free.pop()

    def _send_clip(self, number: int, clip: ReadyClip) -> None:
        """Write a clip into a free slot and tell the supervisor where it is."""
        shape, dtype = clip_shape(clip), clip_dtype(clip)
        slot = self._slot(slot_size(clip_nbytes(shape, dtype)))
        stack_clip(clip, slot_view(self.slots[slot], shape, dtype))
        self.link.send(ClipReady(number, clip.index, slot, shape, clip.valid, clip.timestamps, dtype.name))

    def _decode(self, command: DecodeVideo) -> None:
        """Decode one video; its failure is data (one message), never the worker's end."""
        try:
            outcome = self._send_clips(command.number, command.job)
        except _Stop:
            raise
        except Exception as error:  # every failure is data: one record for this video
            self.link.send(VideoFailed(command.number, describe_error(error)))
            return
        self.link.send(outcome)

    def _send_clips(self, number: int, job: VideoJob) -> VideoDecoded:
        """Send every clip of a video (with heartbeats while it decodes); what decoding it took."""
        spec = self.spec
        started = last_beat = time.perf_counter()
        rows = frames = 0
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
                    self.link.send(StillDecoding(number))
                    last_beat = now
            if frames == 0:
                raise DecodeError(job.path, "zero decodable frames")
            for clip in stream.finish():
                self._send_clip(number, clip)
                rows += 1
            if rows == 0:  # only pad "drop" leaves a video without a row
                raise NoClipError(job.path, frames, spec.window, spec.fps)
            info = source.info
        return VideoDecoded(number, rows, frames, frame_duration, info, time.perf_counter() - started)


class _PipeLink:
    """A worker process's end: commands in, messages out (its shared slots arrive as a `SharedBlock`)."""

    def __init__(self, commands: mp_connection.Connection, messages: mp_connection.Connection) -> None:
        self.commands, self.messages = commands, messages
        self.parent = os.getppid()

    def send(self, message: WorkerMessage) -> None:
        try:
            self.messages.send(message)
        except OSError as error:  # the engine went away
            raise _Stop from error

    def recv(self) -> WorkerCommand:
        try:
            while not self.commands.poll(1.0):
                if os.getppid() != self.parent:  # orphaned: the engine was killed
                    raise _Stop
            command: WorkerCommand = self.commands.recv()
        except (EOFError, OSError) as error:
            raise _Stop from error
        if isinstance(command, LendSlots) and isinstance(command.block, SharedBlock):
            command = dataclasses.replace(command, block=command.block.map())
        return command


def worker_process(
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
    gc.freeze()  # what the parent left (forked) is never finalised here: see ProcessDecodePool._spawn
    for connection in inherited:
        connection.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Slurm signals every process of the step; preemption (USR2) and time limits are the parent's job
    # (submitit requeues once), so a forked worker must not run the parent's inherited handlers.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch

    torch.set_num_threads(1)
    DecodeWorker(_PipeLink(commands, messages), spec, heartbeat_s).serve()


class QueueLink:
    """A worker thread's end: its own command queue, and the supervisor's shared inbox."""

    def __init__(
        self,
        wid: int,
        inbox: queue.Queue[tuple[int, WorkerMessage]],
        commands: queue.Queue[WorkerCommand],
        abandoned: threading.Event,
    ) -> None:
        self.wid, self.inbox, self.commands, self.abandoned = wid, inbox, commands, abandoned

    def send(self, message: WorkerMessage) -> None:
        if self.abandoned.is_set():
            raise _Stop
        self.inbox.put((self.wid, message))

    def recv(self) -> WorkerCommand:
        while True:
            if self.abandoned.is_set():
                raise _Stop
            try:
                return self.commands.get(timeout=0.2)
            except queue.Empty:
                continue
