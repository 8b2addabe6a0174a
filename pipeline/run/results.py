"""One shard's results into the output dir: each video ok (feature file, logits, sidecar, written
atomically), failed or skipped, and its manifest record. The only code that writes a video's outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

import pipeline
from pipeline import naming
from pipeline.assemble import resolved_config
from pipeline.engine import VideoResult
from pipeline.models.labels import load_labels
from pipeline.models.registry import get_spec
from pipeline.outputs import (
    FAILED,
    OK,
    SKIPPED,
    CheckpointRecord,
    ManifestRecord,
    OutputError,
    ResumeDecision,
    Sidecar,
    append_record,
    file_sha256,
    now_iso,
    read_sidecar,
    save_array,
    save_sidecar,
)
from pipeline.run.plan import ShardPlan
from pipeline.videolist import VideoEntry

log = logging.getLogger(__name__)


def top_classes(logits: np.ndarray, names: tuple[str, ...] | None, k: int = 5) -> list[list[Any]]:
    """The video's top-k classes by mean softmax over rows (and crops): [[index, name, probability], ...]."""
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    flat = np.exp(flat - flat.max(axis=1, keepdims=True))
    mean = (flat / flat.sum(axis=1, keepdims=True)).mean(axis=0)
    best = np.argsort(-mean, kind="stable")[:k]
    return [[int(i), names[i] if names and i < len(names) else None, round(float(mean[i]), 6)] for i in best]


def class_names(model_name: str) -> tuple[str, ...] | None:
    """Class names of a model's classifier, when the package ships them."""
    labels = get_spec(model_name).labels
    return load_labels(labels) if labels else None


def is_partial(result: VideoResult) -> bool:
    """True when decoding stopped well before the container's stated duration (e.g. a truncated file)."""
    header = result.info.duration if result.info else None
    decoded = result.frames * result.frame_duration
    return header is not None and header > 0 and decoded < 0.95 * header - 2 * result.frame_duration


def remove_outputs(output_dir: Path, key: str, num_frames: int) -> None:
    """Delete a video's old outputs (its recomputation failed: nothing stale may count as done)."""
    sidecar = output_dir / naming.sidecar_relpath(key, num_frames)
    extra: list[str] = []
    if sidecar.is_file():
        try:
            extra = list((read_sidecar(sidecar).get("logits") or {}).values())
        except (OSError, ValueError):
            extra = []
    for rel in (naming.feature_relpath(key, num_frames), *extra):
        (output_dir / rel).unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)


class ResultWriter:
    """Writes one shard's results: `ok`, `failed` or `skipped`, each ending in one manifest record."""

    def __init__(self, shard: ShardPlan) -> None:
        self.shard = shard
        self.output_dir = shard.output_dir
        self.manifest = shard.output_dir / naming.manifest_relpath(shard.index, shard.count)
        self.config_data = resolved_config(shard.cfg)
        self.num_frames = shard.cfg.data.num_frames
        self._names: tuple[str, ...] | None = None
        self._names_read = False

    def _record(self, entry: VideoEntry, status: str, **fields: Any) -> ManifestRecord:
        record = ManifestRecord(
            key=entry.key,
            path=entry.rel,
            status=status,
            outcome=fields.pop("outcome", status),
            settings=self.shard.settings,
            time=now_iso(),
            **fields,
        )
        append_record(self.manifest, record)
        return record

    def skipped(self, entry: VideoEntry, decision: ResumeDecision) -> ManifestRecord:
        """A video kept from before: its earlier outcome and output, and why it still counts."""
        done = decision.record
        kept: dict[str, Any] = {}
        if done is not None:
            kept = {
                "rows": done.rows,
                "dim": done.dim,
                "output": done.output,
                "sha256": done.sha256,
                "size": done.size,
                "error": done.error,
            }
        outcome = done.final_outcome if done is not None else OK
        return self._record(entry, SKIPPED, outcome=outcome, reason=decision.reason, **kept)

    def failed(self, entry: VideoEntry, error: str, result: VideoResult | None = None) -> ManifestRecord:
        """A video that failed: its old outputs go (nothing stale may count as done), one record says why."""
        if result is not None:
            remove_outputs(self.output_dir, entry.key, self.num_frames)
            return self._record(
                entry, FAILED, error=error, seconds=round(result.seconds, 3), frames=result.frames
            )
        return self._record(entry, FAILED, error=error)

    def ok(self, entry: VideoEntry, result: VideoResult) -> ManifestRecord:
        """Write a finished video's feature file, logits and sidecar atomically, then its record; a write
        that fails (a full disk) leaves nothing half-written and raises OutputError."""
        try:
            fields = self._write(entry, result)
        except OutputError:
            remove_outputs(self.output_dir, entry.key, self.num_frames)
            raise
        return self._record(
            entry, OK, seconds=round(result.seconds, 3), frames=result.frames, error=result.error, **fields
        )

    def _class_names(self) -> tuple[str, ...] | None:
        if not self._names_read:
            self._names, self._names_read = class_names(self.shard.cfg.model.name), True
        return self._names

    def _write(self, entry: VideoEntry, result: VideoResult) -> dict[str, Any]:
        """The video's files; returns the manifest record's output fields."""
        cfg, weights = self.shard.cfg, self.shard.weights
        T = self.num_frames
        npy = self.output_dir / naming.feature_relpath(entry.key, T)
        dtype = np.dtype(cfg.output.dtype.value)
        timestamps = result.timestamps if result.timestamps is not None else np.zeros((0, 3))
        dim = result.features.shape[-1] if result.features is not None else 0
        shape = (0, dim) if result.features is None else result.features.shape
        features = result.features.astype(dtype) if result.features is not None else np.zeros(shape, dtype)
        save_array(npy, features)
        logits_files, top5 = {}, {}
        for head, values in (result.logits or {}).items():
            rel = naming.logits_relpath(entry.key, T, head)
            save_array(self.output_dir / rel, values.astype(np.float32))
            logits_files[head] = rel
            top5[head] = top_classes(values, self._class_names() if head == "logits" else None)
        info = result.info
        native_fps = info.native_fps if info else None
        sidecar = Sidecar(
            key=entry.key,
            settings=self.shard.settings,
            timestamps=np.round(timestamps, 6).tolist(),
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
            logits=logits_files or None,
            top5=top5 or None,
            package_version=pipeline.__version__,
            config=self.config_data,
            created=now_iso(),
        )
        save_sidecar(self.output_dir / naming.sidecar_relpath(entry.key, T), sidecar)
        return {
            "rows": int(features.shape[0]),
            "dim": int(dim),
            "output": naming.feature_relpath(entry.key, T),
            "sha256": file_sha256(npy),
            "size": npy.stat().st_size,
            "partial": is_partial(result),
        }
