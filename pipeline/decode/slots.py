"""Clip slots: a clip's frames stacked into one block, written once by its worker, in memory the engine's
process shares with it (anonymous shared memory for worker processes). A slot is raw bytes; a clip is
viewed in it with its dtype: uint8 for uint8 recipes, float32 for float ones (`slot_view`)."""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

import numpy as np

from pipeline.sampling import ReadyClip


def clip_shape(clip: ReadyClip) -> tuple[int, ...]:
    """(crops, T, H, W, 3) of a clip's stacked pixels."""
    first = next(frame for frame in clip.frames if frame is not None)
    return (first.shape[0], len(clip.frames), *first.shape[1:])


def clip_dtype(clip: ReadyClip) -> np.dtype:
    """The dtype of a clip's frame payloads (uint8, or float32 for a float recipe)."""
    return next(frame for frame in clip.frames if frame is not None).dtype


def clip_nbytes(shape: tuple[int, ...], dtype: np.dtype | str) -> int:
    """Bytes of a clip of `shape` and `dtype`."""
    return math.prod(shape) * np.dtype(dtype).itemsize


SLOT_ALIGN = 64  # bytes: every slot starts on a cache line, so any dtype's view of it is aligned


def slot_size(nbytes: int) -> int:
    """The slot size for clips of `nbytes`: rounded up to SLOT_ALIGN."""
    return -(-nbytes // SLOT_ALIGN) * SLOT_ALIGN


def slot_view(slot: np.ndarray, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """A clip of `shape` and `dtype` viewed in a slot (a 1-D uint8 array), from its start."""
    return slot[: clip_nbytes(shape, dtype)].view(np.dtype(dtype)).reshape(shape)


def stack_clip(clip: ReadyClip, out: np.ndarray | None = None) -> np.ndarray:
    """Build a (crops, T, H, W, 3) array (the payloads' dtype) from the clip's frame payloads (None = zero
    padding).

    With `out` (a reused buffer of that shape) every position is written, padding included.
    """
    shape = clip_shape(clip)
    pixels = np.zeros(shape, dtype=clip_dtype(clip)) if out is None else out
    if pixels.shape != shape:
        raise ValueError(f"stack_clip: out has shape {pixels.shape}, the clip needs {shape}")
    for t, frame in enumerate(clip.frames):
        if frame is not None:
            pixels[:, t] = frame
        elif out is not None:
            pixels[:, t] = 0
    return pixels


@dataclass(frozen=True)
class SharedBlock:
    """How a worker process maps a `shared_block`: a descriptor that travels over a pipe, and the shape."""

    handle: Any  # multiprocessing.reduction.DupFd: a duplicate descriptor once unpickled in the worker
    count: int
    nbytes: int

    def map(self) -> np.ndarray:
        """The worker's (count, nbytes) uint8 view of the block (call once: it takes the descriptor)."""
        fd = self.handle.detach()
        try:
            mapping = mmap.mmap(fd, self.count * self.nbytes)
        finally:
            os.close(fd)
        return np.frombuffer(mapping, dtype=np.uint8).reshape(self.count, self.nbytes)


def shared_block(count: int, nbytes: int) -> tuple[np.ndarray, SharedBlock]:
    """A (count, nbytes) uint8 block of anonymous shared memory (memfd: not limited by /dev/shm's size),
    and what a worker process needs to map it too."""
    fd = os.memfd_create("pipeline-clip-slots", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, count * nbytes)
        mapping = mmap.mmap(fd, count * nbytes)
        handle = reduction.DupFd(fd)  # a duplicate, handed to the worker when it unpickles the message
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=np.uint8).reshape(count, nbytes), SharedBlock(handle, count, nbytes)
