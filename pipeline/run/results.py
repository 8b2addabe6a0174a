"""One shard's results into the output dir's store: each video ok, failed or moved between stores, with
its manifest record, and one line for the videos kept from before. The only code that writes a video's
outputs (through `pipeline.outputs.store`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

import pipeline
from pipeline import naming
from pipeline.assemble import resolved_config
from pipeline.engine import VideoResult
from pipeline.models.labels import class_names, top_classes
from pipeline.outputs import (
    FAILED,
    OK,
    CheckpointRecord,
    FilesStore,
    ManifestRecord,
    ManifestWriter,
    OutputError,
    PackedStore,
    Sidecar,
    VideoArrays,
    VideoStore,
    now_iso,
)
from pipeline.outputs.reader import ReadError, open_record
from pipeline.run.plan import ShardPlan
from pipeline.videolist import VideoEntry

log = logging.getLogger(__name__)


def is_partial(result: VideoResult) -> bool:
    """True when decoding stopped well before the container's stated duration (e.g. a truncated file)."""
    header = result.info.duration if result.info else None
    decoded = result.frames * result.frame_duration
    return header is not None and header > 0 and decoded < 0.95 * header - 2 * result.frame_duration


class ResultWriter:
    """Writes one shard's results into its store (`output.store`), each ending in one manifest record:
    `ok`, `failed`, `moved` (kept, copied from the other store), and one `kept` line for the rest.
    durable=False: no fsync per video (fabricated runs in benchmarks; see pipeline.outputs.store)."""

    def __init__(self, shard: ShardPlan, durable: bool = True) -> None:
        self.shard = shard
        self.output_dir = shard.output_dir
        self.manifest = ManifestWriter(shard.output_dir / naming.manifest_relpath(shard.index, shard.count))
        self.config_data = resolved_config(shard.cfg)
        self.num_frames = shard.cfg.data.num_frames
        self.files = FilesStore(shard.output_dir, self.num_frames, durable)
        self.store: VideoStore = self.files
        if shard.cfg.output.store.value == "packed":
            header = {"settings": shard.settings, "config": self.config_data}
            self.store = PackedStore(
                shard.output_dir,
                shard.index,
                shard.count,
                header,
                shard.part_extents,
                shard.part_counts,
                durable,
            )
        self._names: tuple[str, ...] | None = None
        self._names_read = False

    def _record(self, entry: VideoEntry, status: str, **fields: Any) -> ManifestRecord:
        record = ManifestRecord(
            key=entry.key,
            path=entry.rel,
            status=status,
            outcome=fields.pop("outcome", status),
            settings=self.shard.settings,
            time=now_iso("microseconds"),
            **fields,
        )
        self.manifest.append(record)
        return record

    def close(self) -> None:
        """The end of the shard run: every record on disk."""
        self.manifest.close()

    def kept(self, reasons: Mapping[str, int]) -> None:
        """One manifest line for the videos this run keeps from before (their records stay the newest)."""
        self.manifest.kept(self.shard.index, self.shard.count, now_iso(), reasons)

    def failed(self, entry: VideoEntry, error: str, result: VideoResult | None = None) -> ManifestRecord:
        """A video that failed: its old outputs go (nothing stale may count as done), one record says why."""
        if result is not None:
            self.store.forget(entry.key)
            return self._record(
                entry, FAILED, error=error, seconds=round(result.seconds, 3), frames=result.frames
            )
        return self._record(entry, FAILED, error=error)

    def ok(self, entry: VideoEntry, result: VideoResult) -> ManifestRecord:
        """Write a finished video into the store, then its record; a write that fails (a full disk) leaves
        nothing half-written and raises OutputError."""
        try:
            fields = self._write(entry, result)
        except OutputError:
            self.store.forget(entry.key)
            raise
        if self.store is not self.files:
            self.files.forget(entry.key)  # a files-store output of an earlier run is superseded
        return self._record(
            entry, OK, seconds=round(result.seconds, 3), frames=result.frames, error=result.error, **fields
        )

    def moved(self, entry: VideoEntry, done: ManifestRecord) -> ManifestRecord:
        """Copy a kept video from the other store into this run's (`output.store` changed), record it, then
        delete its old feature files (a packed record needs no deleting: the new record supersedes it)."""
        try:
            video = open_record(done, self.output_dir)
            features = video.load()
            arrays = VideoArrays(
                features,
                video.timestamps,
                {naming.head_of_logits_name(n): ref.load() for n, ref in video.logits.items()},
            )
        except ReadError as error:
            raise OutputError(
                0, f"cannot move {entry.rel} to the {self.store.name} store: {error}"
            ) from error
        stored = self.store.write(entry.key, arrays, video.sidecar)  # the store names its logits
        kept = {k: getattr(done, k) for k in ("seconds", "frames", "rows", "dim", "error", "partial")}
        record = self._record(
            entry,
            OK,
            reason=f"moved from the {'packed' if done.packed else 'files'} store",
            **kept,
            **stored.fields(),
        )
        if not done.packed:
            self.files.forget(entry.key)
        return record

    def _class_names(self) -> tuple[str, ...] | None:
        if not self._names_read:
            self._names, self._names_read = class_names(self.shard.cfg.model.name), True
        return self._names

    def _write(self, entry: VideoEntry, result: VideoResult) -> dict[str, Any]:
        """The video's arrays and sidecar into the store; returns the manifest record's output fields."""
        cfg, weights = self.shard.cfg, self.shard.weights
        dtype = np.dtype(cfg.output.dtype.value)
        timestamps = result.timestamps if result.timestamps is not None else np.zeros((0, 3))
        dim = result.features.shape[-1] if result.features is not None else 0
        shape = (0, dim) if result.features is None else result.features.shape
        features = result.features.astype(dtype) if result.features is not None else np.zeros(shape, dtype)
        logits = {head: values.astype(np.float32) for head, values in (result.logits or {}).items()}
        top5 = {
            head: top_classes(values, self._class_names() if head == "logits" else None)
            for head, values in logits.items()
        }
        info = result.info
        native_fps = info.native_fps if info else None
        timestamps = np.round(timestamps, 6)
        sidecar = Sidecar(
            key=entry.key,
            settings=self.shard.settings,
            timestamps=timestamps.tolist(),
            video=entry.rel,
            source=str(entry.path),
            kind=info.kind if info else None,
            shape=list(features.shape),
            rows=int(features.shape[0]),
            dim=int(dim),
            dtype=dtype.name,
            fps=cfg.data.fps or native_fps,
            native_fps=native_fps,
            frames=result.frames,
            duration=round(result.frames * result.frame_duration, 6),
            width=info.width if info else None,
            height=info.height if info else None,
            rotation=info.rotation if info else None,
            codec=info.codec if info else None,
            decode_seconds=round(result.decode_seconds, 3),
            seconds=round(result.seconds, 3),
            model=cfg.model.name,
            checkpoint=CheckpointRecord(weights.path, weights.sha256, weights.random),
            top5=top5 or None,
            package_version=pipeline.__version__,
            config=self.config_data,
            created=now_iso(),
        )
        stored = self.store.write(
            entry.key, VideoArrays(features, timestamps.reshape(-1, 3), logits), sidecar
        )
        return {
            "rows": int(features.shape[0]),
            "dim": int(dim),
            "partial": is_partial(result),
            **stored.fields(),
        }
