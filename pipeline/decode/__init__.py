"""Decoding in workers beside the model: videos in, clips out through shared slots.

`protocol` (the typed messages), `slots` (clip slots in shared memory), `worker` (the decode loop of one
worker, a process or a thread), `pool` (the supervisor: jobs, hung or dead workers, slots).
"""

from pipeline.decode.pool import (
    DECODE_BACKENDS,
    START_METHODS,
    DecodePool,
    ProcessDecodePool,
    ThreadDecodePool,
    open_pool,
)
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
from pipeline.decode.slots import SharedBlock, clip_shape, shared_block, stack_clip
from pipeline.decode.worker import (
    DecodePoolError,
    DecodeSpec,
    DecodeTimeout,
    DecodeWorker,
    DecodeWorkerError,
    NoClipError,
    SourceOpener,
    WorkerLink,
)

__all__ = [
    "DECODE_BACKENDS",
    "START_METHODS",
    "ClipReady",
    "DecodePool",
    "DecodePoolError",
    "DecodeSpec",
    "DecodeTimeout",
    "DecodeVideo",
    "DecodeWorker",
    "DecodeWorkerError",
    "DecodedClip",
    "FreeSlot",
    "LendSlots",
    "NeedSlots",
    "NoClipError",
    "PoolFailed",
    "PoolItem",
    "ProcessDecodePool",
    "SharedBlock",
    "SourceOpener",
    "StillDecoding",
    "StopWorker",
    "ThreadDecodePool",
    "VideoDecoded",
    "VideoFailed",
    "VideoJob",
    "WorkerCommand",
    "WorkerLink",
    "WorkerMessage",
    "WorkerReady",
    "clip_shape",
    "open_pool",
    "shared_block",
    "stack_clip",
]
