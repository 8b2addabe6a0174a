"""The decode pool's protocol: one small frozen dataclass per message. Commands to a worker: `DecodeVideo`,
`LendSlots`, `FreeSlot`, `StopWorker`. Messages from a worker: `WorkerReady`, `NeedSlots`, `ClipReady`,
`StillDecoding`, `VideoDecoded`, `VideoFailed`. Items for the engine: `DecodedClip`, `VideoDecoded`,
`VideoFailed`, and `PoolFailed` when the pool itself breaks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.decode.slots import SharedBlock
from pipeline.io import SourceInfo


@dataclass(frozen=True)
class VideoJob:
    """One video to extract: its output key, its source path and its listed relative path."""

    key: str
    path: Path
    rel: str


# --- commands: supervisor -> worker ---------------------------------------------------------------


@dataclass(frozen=True)
class DecodeVideo:
    """Decode this job; `number` names the video in every message about it."""

    number: int
    job: VideoJob


@dataclass(frozen=True)
class LendSlots:
    """New slots replace the old ones: a (slots, nbytes) uint8 block, or a process's `SharedBlock`."""

    generation: int
    block: np.ndarray | SharedBlock


@dataclass(frozen=True)
class FreeSlot:
    """The engine copied the clip out of this slot; ignored when `generation` is not the current one."""

    generation: int
    slot: int


@dataclass(frozen=True)
class StopWorker:
    """Exit now."""


WorkerCommand = DecodeVideo | LendSlots | FreeSlot | StopWorker


# --- messages: worker -> supervisor (the last two also go on to the engine) -------------------------


@dataclass(frozen=True)
class WorkerReady:
    """The worker has started and takes jobs."""


@dataclass(frozen=True)
class NeedSlots:
    """The worker needs slots of at least `nbytes` (it has none yet, or its clips grew)."""

    nbytes: int


@dataclass(frozen=True)
class ClipReady:
    """Row `row` of video `number` is in slot `slot`: `shape` (crops, T, H, W, 3) of `dtype` from its start."""

    number: int
    row: int
    slot: int
    shape: tuple[int, ...]
    valid: np.ndarray  # (T,) bool
    timestamps: np.ndarray  # (3,)
    dtype: str = "uint8"  # "float32" for a float recipe


@dataclass(frozen=True)
class StillDecoding:
    """A heartbeat: the video makes progress (nothing else to say)."""

    number: int


@dataclass(frozen=True)
class VideoDecoded:
    """Every clip of video `number` was sent: how many, and what decoding it took."""

    number: int
    rows: int
    frames: int
    frame_duration: float
    info: SourceInfo
    decode_seconds: float


@dataclass(frozen=True)
class VideoFailed:
    """Video `number` failed (its clips so far are to be dropped); `error` is one line."""

    number: int
    error: str


WorkerMessage = WorkerReady | NeedSlots | ClipReady | StillDecoding | VideoDecoded | VideoFailed


# --- items: pool -> engine -------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedClip:
    """One clip for the model; `pixels` is a view of a slot: call `release` once they are copied."""

    number: int
    row: int
    pixels: np.ndarray  # (crops, T, H, W, 3) uint8, or float32 grey levels
    valid: np.ndarray  # (T,) bool
    timestamps: np.ndarray  # (3,)
    release: Callable[[], None]


@dataclass(frozen=True)
class PoolFailed:
    """The pool broke; the run cannot go on."""

    error: str


PoolItem = DecodedClip | VideoDecoded | VideoFailed | PoolFailed
