"""A run over a video list: plan it (list, shard, resume decision per video), run one shard (extract,
write each result atomically, append its manifest record), consolidate and record the finished run.

`pipeline.extract` calls these steps in order; `pipeline.launch` runs `run_shard` in worker or Slurm
jobs. The parts a run is made of (engine, settings, output dir name) come from `pipeline.assemble`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

import pipeline
from pipeline import naming, outputs
from pipeline.assemble import (
    as_object,
    build_engine,
    extraction_settings,
    output_dir_of,
    resolved_config,
    setup_torch,
)
from pipeline.config import DataConfig, Device, ExtractConfig, ModelConfig, video_list_path
from pipeline.engine import VideoJob, VideoResult
from pipeline.errors import PipelineError
from pipeline.inference import check_model_config
from pipeline.videolist import VideoEntry, VideoListError, read_video_list
from pipeline.weights import WeightsInfo, resolve_zoo, weights_info

log = logging.getLogger(__name__)


class RunError(PipelineError, RuntimeError):
    """A run-level failure (bad list, lock held, disk full): the run stops with this one line."""


def stopping(error: outputs.OutputError) -> RunError:
    """The one line a run ends with when the output dir cannot be written (disk full, read-only)."""
    return RunError(f"stopping: {error} (a rerun of the same command continues from here)")


# --- plan a run: the video list, this shard's part of it, a resume decision per video -----------


def prepare_demo(cfg: ExtractConfig) -> None:
    """Make the demo videos on first use (data=demo only)."""
    if cfg.data.name == "demo":
        from pipeline.synth import make_demo_videos

        make_demo_videos(Path(cfg.data.root).expanduser())


def resolve_zoo_checkpoint(model: ModelConfig) -> Path:
    """The cached zoo file of a model; FileNotFoundError (with the fetch command) when it is missing."""
    check_model_config(model)
    return resolve_zoo(model.name)


def shard_entries_of(
    cfg: ExtractConfig, entries: list[VideoEntry], shard_index: int, num_shards: int, output_dir: Path
) -> list[VideoEntry]:
    """This shard's entries, from shards.json when it matches the list, else computed (and recorded)."""
    if num_shards == 1:
        return entries
    from pipeline.shards import shard_plan

    plan = shard_plan(entries, num_shards, output_dir)
    wanted = set(plan[shard_index])
    return [e for e in entries if e.key in wanted]


def plan_run(
    cfg: ExtractConfig, shard_index: int = 0, num_shards: int = 1
) -> tuple[Path, list[VideoEntry], dict[str, outputs.ResumeDecision], dict[str, Any], WeightsInfo]:
    """What a run would do: output dir, this shard's entries and a resume decision per entry."""
    output_dir = output_dir_of(cfg)
    try:
        entries = read_video_list(
            video_list_path(cfg.data), Path(cfg.data.root).expanduser().resolve(), cfg.data.video_ext
        )
    except (OSError, VideoListError) as error:
        raise RunError(str(error)) from error
    try:
        entries = shard_entries_of(cfg, entries, shard_index, num_shards, output_dir)
    except outputs.OutputError as error:  # shards.json could not be written
        raise stopping(error) from error
    check_model_config(cfg.model, cfg.data)
    weights = weights_info(cfg.model)
    settings = extraction_settings(cfg, weights)
    latest, problems = outputs.latest_records(output_dir)
    for problem in problems:
        log.warning(
            "%s line %d: %s (that video will be recomputed)", problem.path, problem.line, problem.reason
        )
    decisions = {
        e.key: outputs.decide_resume(
            latest.get(e.key),
            output_dir,
            settings,
            overwrite=cfg.output.overwrite,
            retry_failed=cfg.output.retry_failed,
        )
        for e in entries
    }
    return output_dir, entries, decisions, settings, weights


def print_plan(cfg: ExtractConfig) -> int:
    """dry_run=true: print videos, skip/recompute decisions, shards and the output dir; run nothing."""
    num_shards = max(cfg.hardware.num_shards, 1)
    print(f"output dir: {output_dir_of(cfg)}")
    print(f"shards: {num_shards} ({cfg.hardware.launcher.value} launcher)")
    counts: dict[str, int] = {}
    shards = [cfg.hardware.shard_index] if cfg.hardware.shard_index is not None else range(num_shards)
    for shard in shards:
        _, entries, decisions, _, _ = plan_run(cfg, shard, num_shards)
        print(f"shard {shard}/{num_shards}: {len(entries)} videos")
        for entry in entries:
            decision = decisions[entry.key]
            action = "FAIL" if entry.error else ("run" if decision.run else "skip")
            reason = entry.error or decision.reason
            counts[action] = counts.get(action, 0) + 1
            print(f"  {action:4s} {entry.rel}  ({reason})")
    print("plan: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    return 0


# --- run one shard ------------------------------------------------------------------------------


@dataclass
class ShardSummary:
    """Counts of one shard's run."""

    shard: int
    num_shards: int
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """A tqdm bar over videos on a terminal; periodic log lines otherwise (Slurm logs)."""

    def __init__(self, total: int, every_s: float = 30.0) -> None:
        self.total, self.done, self.rows, self.every_s = total, 0, 0, every_s
        self.started = self.last_log = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="video", dynamic_ncols=True)

    def update(self, rows: int) -> None:
        self.done += 1
        self.rows += rows
        elapsed = time.perf_counter() - self.started
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.set_postfix(clips_s=f"{rate:.2f}")
            self.bar.update(1)
        elif time.perf_counter() - self.last_log >= self.every_s or self.done == self.total:
            self.last_log = time.perf_counter()
            log.info("progress: %d/%d videos, %d clips, %.2f clips/s", self.done, self.total, self.rows, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_shard(cfg: DictConfig | ExtractConfig, shard_index: int = 0, num_shards: int = 1) -> ShardSummary:
    """Extract one shard of the video list into the stable output dir, resuming from its manifests."""
    c = as_object(cfg)  # validated by the caller (pipeline.extract), its demo videos made
    setup_torch(c.hardware)
    output_dir, entries, decisions, settings, weights = plan_run(c, shard_index, num_shards)
    summary = ShardSummary(shard_index, num_shards)
    manifest = output_dir / naming.manifest_relpath(shard_index, num_shards)
    try:
        lock = outputs.ShardLock(output_dir / naming.lock_relpath(shard_index, num_shards)).acquire()
    except outputs.LockError as error:
        raise RunError(str(error)) from error
    except outputs.OutputError as error:
        raise stopping(error) from error
    started = time.perf_counter()
    try:
        outputs.clean_stale_temps(output_dir)
        engine = build_engine(c, weights)
        if weights.random:
            log.warning(
                "RANDOM WEIGHTS: model.checkpoint=random -- these features are not meaningful; "
                "every output records random_weights=true"
            )
        config_data = resolved_config(c)
        by_key = {e.key: e for e in entries}
        todo: list[VideoEntry] = []
        recomputed: dict[str, list[str]] = {}  # reason -> videos, logged once per reason
        for entry in entries:
            decision = decisions[entry.key]
            if entry.error:
                summary.failed += 1
                log.error("FAILED %s: %s", entry.rel, entry.error)
                outputs.append_record(
                    manifest, _manifest_record(entry, None, "failed", settings, error=entry.error)
                )
            elif decision.run:
                if decision.reason != "new":
                    recomputed.setdefault(decision.reason, []).append(entry.rel)
                todo.append(entry)
            else:
                summary.skipped += 1
                done = decision.record or {}
                kept = {k: done.get(k) for k in ("rows", "dim", "output", "sha256", "size", "error")}
                outputs.append_record(
                    manifest,
                    _manifest_record(
                        entry,
                        None,
                        "skipped",
                        settings,
                        **kept,
                        outcome=done.get("outcome", "ok"),
                        reason=decision.reason,
                    ),
                )
        log_recomputed(recomputed)
        log.info(
            "%s: %d videos in shard %d/%d, %d to extract, %d skipped",
            output_dir,
            len(entries),
            shard_index,
            num_shards,
            len(todo),
            summary.skipped,
        )
        progress = Progress(len(todo))
        fps_noted = False
        jobs = [VideoJob(e.key, e.path, e.rel) for e in todo]
        try:
            for result in engine.run(jobs):
                entry = by_key[result.job.key]
                if result.ok:
                    try:
                        written = write_result(output_dir, c, config_data, settings, weights, entry, result)
                    except outputs.OutputError:
                        remove_outputs(output_dir, entry.key, c.data.num_frames)  # nothing half-written
                        raise
                    outputs.append_record(
                        manifest, _manifest_record(entry, result, "ok", settings, **written)
                    )
                    summary.ok += 1
                    summary.rows += written["rows"]
                    rate = written["rows"] / result.seconds if result.seconds > 0 else 0.0
                    log.info(
                        "ok %s: %d rows in %.1f s (%.2f clips/s)",
                        entry.rel,
                        written["rows"],
                        result.seconds,
                        rate,
                    )
                    note = recipe_fps_note(c.data, result.info.native_fps if result.info else None, entry.rel)
                    if note and not fps_noted:
                        log.info(note)
                        fps_noted = True
                    if written["partial"]:
                        log.warning(
                            "PARTIAL %s: decoding stopped at %.1f s of %.1f s (truncated file?); kept "
                            "what decoded, manifest says partial=true",
                            entry.rel,
                            result.frames * result.frame_duration,
                            result.info.duration if result.info else 0.0,
                        )
                else:
                    remove_outputs(output_dir, entry.key, c.data.num_frames)
                    outputs.append_record(manifest, _manifest_record(entry, result, "failed", settings))
                    summary.failed += 1
                    log.error("FAILED %s: %s", entry.rel, result.error)
                progress.update(0 if result.features is None else len(result.features))
        finally:
            progress.close()
    except outputs.OutputError as error:
        raise stopping(error) from error
    finally:
        lock.release()
    summary.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "shard %d/%d done: %d ok, %d failed, %d skipped, %d rows in %.1f s",
        shard_index,
        num_shards,
        summary.ok,
        summary.failed,
        summary.skipped,
        summary.rows,
        summary.seconds,
    )
    return summary


def recipe_fps_note(data: DataConfig, native_fps: float | None, rel: str) -> str | None:
    """The line a preset run logs (once) when a video's frame rate is not its recipe's; None otherwise."""
    if data.fps is None or native_fps is None or data.name == "custom":
        return None
    if abs(native_fps - data.fps) <= 1e-3 * data.fps:
        return None
    return (
        f"data={data.name}: the recipe runs at {data.fps:g} fps; {rel} is {native_fps:.6g} fps, resampled to "
        f"{data.fps:g} fps (frame k = the last decoded frame at or before k/{data.fps:g} s); videos at other "
        "rates are resampled the same way, logged once per shard"
    )


def log_recomputed(recomputed: dict[str, list[str]]) -> None:
    """One line per reason for recomputing kept work (e.g. "settings changed: precision ('fp32' ->
    'bf16')"), naming the video when it is the only one."""
    for reason, videos in recomputed.items():
        which = videos[0] if len(videos) == 1 else f"{len(videos)} videos (first {videos[0]})"
        log.info("recomputing %s: %s", which, reason)


# --- write one result: feature file, logits, sidecar; its manifest record -----------------------


def _manifest_record(
    entry: VideoEntry, result: VideoResult | None, status: str, settings: dict[str, Any], **fields_: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": entry.key,
        "path": entry.rel,
        "status": status,
        "outcome": status,
        "settings": settings,
        "time": outputs.now_iso(),
        "error": None,
    }
    if result is not None:
        record.update(seconds=round(result.seconds, 3), frames=result.frames, error=result.error)
    record.update(fields_)
    return record


def write_result(
    output_dir: Path,
    cfg: ExtractConfig,
    config_data: dict[str, Any],
    settings: dict[str, Any],
    weights: WeightsInfo,
    entry: VideoEntry,
    result: VideoResult,
) -> dict[str, Any]:
    """Write one finished video's feature file, sidecar (and logits) atomically; return its manifest fields."""
    T = cfg.data.num_frames
    npy = output_dir / naming.feature_relpath(entry.key, T)
    dtype = np.dtype(cfg.output.dtype.value)
    timestamps = result.timestamps if result.timestamps is not None else np.zeros((0, 3))
    dim = result.features.shape[-1] if result.features is not None else 0
    shape = (0, dim) if result.features is None else result.features.shape
    features = result.features.astype(dtype) if result.features is not None else np.zeros(shape, dtype)
    outputs.save_array(npy, features)
    logits_files, top5 = {}, {}
    for head, values in (result.logits or {}).items():
        rel = naming.logits_relpath(entry.key, T, head)
        outputs.save_array(output_dir / rel, values.astype(np.float32))
        logits_files[head] = rel
        top5[head] = top_classes(values, class_names(cfg.model.name) if head == "logits" else None)
    info = result.info
    native_fps = info.native_fps if info else None
    fps = cfg.data.fps or native_fps
    sidecar = {
        "video": entry.rel,
        "key": entry.key,
        "source": str(entry.path),
        "kind": info.kind if info else None,
        "shape": list(features.shape),
        "rows": int(features.shape[0]),
        "dim": int(dim),
        "dtype": dtype.name,
        "timestamps": np.round(timestamps, 6).tolist(),
        "fps": fps,
        "native_fps": native_fps,
        "frames": result.frames,
        "duration": round(result.frames * result.frame_duration, 6),
        "width": info.width if info else None,
        "height": info.height if info else None,
        "rotation": info.rotation if info else None,
        "codec": info.codec if info else None,
        "decode_seconds": round(result.decode_seconds, 3),
        "seconds": round(result.seconds, 3),
        "settings": settings,
        "model": cfg.model.name,
        "checkpoint": {"path": weights.path, "sha256": weights.sha256, "random": weights.random},
        "logits": logits_files or None,
        "top5": top5 or None,
        "package_version": pipeline.__version__,
        "config": config_data,
        "created": outputs.now_iso(),
    }
    outputs.save_json(output_dir / naming.sidecar_relpath(entry.key, T), sidecar)
    return {
        "rows": int(features.shape[0]),
        "dim": int(dim),
        "output": naming.feature_relpath(entry.key, T),
        "sha256": outputs.file_sha256(npy),
        "size": npy.stat().st_size,
        "partial": is_partial(result),
    }


def top_classes(logits: np.ndarray, names: tuple[str, ...] | None, k: int = 5) -> list[list[Any]]:
    """The video's top-k classes by mean softmax over rows (and crops): [[index, name, probability], ...]."""
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    flat = np.exp(flat - flat.max(axis=1, keepdims=True))
    mean = (flat / flat.sum(axis=1, keepdims=True)).mean(axis=0)
    best = np.argsort(-mean, kind="stable")[:k]
    return [[int(i), names[i] if names and i < len(names) else None, round(float(mean[i]), 6)] for i in best]


def class_names(model_name: str) -> tuple[str, ...] | None:
    """Class names of a model's classifier, when the package ships them."""
    from pipeline.models.labels import load_labels
    from pipeline.models.registry import get_spec

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
            extra = list((outputs.read_sidecar(sidecar).get("logits") or {}).values())
        except (OSError, ValueError):
            extra = []
    for rel in (naming.feature_relpath(key, num_frames), *extra):
        (output_dir / rel).unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)


# --- finish the run: HDF5, run record, summary --------------------------------------------------


def consolidate_outputs(cfg: ExtractConfig, output_dir: Path) -> Path | None:
    """Write features.h5 for the run (output.hdf5=true); a failure is logged (features stay), a full
    disk stops the run."""
    from pipeline.consolidate import ConsolidateError, consolidate

    compression = cfg.output.hdf5_compression.value if cfg.output.hdf5_compression else None
    try:
        return consolidate([output_dir], layout=cfg.output.hdf5_layout.value, compression=compression)
    except ConsolidateError as error:
        log.error("consolidation failed: %s", error)
        return None
    except outputs.OutputError as error:
        raise stopping(error) from error


def environment_record(device: str = "cpu") -> dict[str, Any]:
    """Versions and host facts recorded for every run; the GPU's name only for `device` cuda (a CPU run
    makes no CUDA call: that would create a CUDA context nobody asked for)."""
    import platform
    import socket
    import subprocess

    import av

    try:
        revision = (
            subprocess.run(
                ["git", "-C", str(Path(pipeline.__file__).resolve().parent), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        revision = None
    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "av": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "package_version": pipeline.__version__,
        "git_revision": revision,
        "cuda": cuda_device_name() if device == "cuda" else None,
        "pid": os.getpid(),
    }


def cuda_device_name() -> str | None:
    """The name of the current CUDA device (None when none is visible)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())


def finish_run(
    cfg: ExtractConfig,
    output_dir: Path,
    summaries: list[ShardSummary],
    hydra_dir: Path | None,
    h5: Path | None,
) -> dict[str, Any]:
    """Record runs/<timestamp>.json and print the summary; returns the run's totals and paths."""
    totals = {k: sum(getattr(s, k) for s in summaries) for k in ("ok", "failed", "skipped", "rows")}
    record = {
        "config": resolved_config(cfg),
        "command": sys.argv,
        "hydra_run_dir": str(hydra_dir) if hydra_dir else None,
        "log": str(hydra_dir / "extract.log") if hydra_dir else None,
        "output_dir": str(output_dir),
        "hdf5": str(h5) if h5 else None,
        "shards": [s.as_dict() for s in summaries],
        "totals": totals,
        "environment": environment_record(Device(cfg.hardware.device).value),
        "finished": outputs.now_iso(),
    }
    try:
        outputs.save_json(output_dir / naming.run_record_relpath(outputs.now_iso(), os.getpid()), record)
    except outputs.OutputError as error:
        raise stopping(error) from error
    print(f"features: {output_dir / naming.FEATURES_DIR}" + (f"\nhdf5: {h5}" if h5 else ""))
    print(
        f"summary: {totals['ok']} ok, {totals['failed']} failed, {totals['skipped']} skipped, "
        f"{totals['rows']} rows"
    )
    if totals["failed"]:
        print(f'failed videos are listed in {output_dir / naming.MANIFESTS_DIR} (status "failed")')
    return {"output_dir": str(output_dir), "hdf5": str(h5) if h5 else None, "totals": totals}
