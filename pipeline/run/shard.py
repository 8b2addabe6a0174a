"""Run one shard of a planned run: take its lock, record the kept, moved and listed-as-failed videos,
extract the rest through the engine, write each result as it completes (`ResultWriter`).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from pipeline import naming
from pipeline.assemble import build_engine, setup_torch
from pipeline.config import DataConfig
from pipeline.engine import VideoJob
from pipeline.outputs import LockError, OutputError, ShardLock, clean_stale_temps
from pipeline.run.plan import RunError, ShardPlan, stopping
from pipeline.run.results import ResultWriter
from pipeline.videolist import VideoEntry

log = logging.getLogger(__name__)


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


def record_kept_and_listed(shard: ShardPlan, writer: ResultWriter, summary: ShardSummary) -> list[VideoEntry]:
    """Write the records of the videos not extracted (listed with an error; kept from before: one line for
    all of them; moved from the other store: a record each); return the entries to extract, logging once
    per reason why kept work is recomputed."""
    todo: list[VideoEntry] = []
    recomputed: dict[str, list[str]] = {}
    kept: dict[str, int] = {}
    moved = 0
    for entry in shard.entries:
        decision = shard.decisions[entry.key]
        if entry.error:
            summary.failed += 1
            log.error("FAILED %s: %s", entry.rel, entry.error)
            writer.failed(entry, entry.error)
        elif decision.run:
            if decision.reason != "new":
                recomputed.setdefault(decision.reason, []).append(entry.rel)
            todo.append(entry)
        elif decision.move and decision.record is not None:
            summary.skipped += 1
            writer.moved(entry, decision.record)
            moved += 1
        else:
            summary.skipped += 1
            kept[decision.reason] = kept.get(decision.reason, 0) + 1
    writer.kept(kept)
    if moved:
        log.info("moved %d kept videos into the %s store (nothing recomputed)", moved, writer.store.name)
    log_recomputed(recomputed)
    return todo


def run_shard(planned: ShardPlan) -> ShardSummary:
    """Extract one planned shard into its output dir, resuming from its manifests."""
    cfg = planned.cfg  # validated at start (pipeline.extract), its demo videos made
    setup_torch(cfg.hardware)
    summary = ShardSummary(planned.index, planned.count)
    lock_path = planned.output_dir / naming.lock_relpath(planned.index, planned.count)
    try:
        lock = ShardLock(lock_path).acquire()
    except LockError as error:
        raise RunError(str(error)) from error
    except OutputError as error:
        raise stopping(error) from error
    started = time.perf_counter()
    try:
        shard = planned.current()  # decided again if the manifests moved on (a requeued job)
        clean_stale_temps(shard.output_dir)
        if shard.weights.random:
            log.warning(
                "RANDOM WEIGHTS: model.checkpoint=random -- these features are not meaningful; "
                "every output records random_weights=true"
            )
        writer = ResultWriter(shard)
        todo = record_kept_and_listed(shard, writer, summary)
        log.info(
            "%s: %d videos in shard %d/%d, %d to extract, %d skipped",
            shard.output_dir,
            len(shard.entries),
            shard.index,
            shard.count,
            len(todo),
            summary.skipped,
        )
        try:
            if todo:  # a rerun with nothing to do builds no model
                extract_videos(shard, build_engine(cfg, shard.weights), writer, todo, summary)
        finally:
            writer.close()
    except OutputError as error:
        raise stopping(error) from error
    finally:
        lock.release()
    summary.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "shard %d/%d done: %d ok, %d failed, %d skipped, %d rows in %.1f s",
        planned.index,
        planned.count,
        summary.ok,
        summary.failed,
        summary.skipped,
        summary.rows,
        summary.seconds,
    )
    return summary


def extract_videos(
    shard: ShardPlan, engine: Any, writer: ResultWriter, todo: list[VideoEntry], summary: ShardSummary
) -> None:
    """Run `todo` through the engine, writing each result as soon as its video is complete."""
    data = shard.cfg.data
    by_key = {e.key: e for e in todo}
    progress = Progress(len(todo))
    fps_noted = False
    try:
        for result in engine.run([VideoJob(e.key, e.path, e.rel) for e in todo]):
            entry = by_key[result.job.key]
            if not result.ok:
                writer.failed(entry, str(result.error), result)
                summary.failed += 1
                log.error("FAILED %s: %s", entry.rel, result.error)
                progress.update(0)
                continue
            record = writer.ok(entry, result)
            rows = int(record.rows or 0)
            summary.ok += 1
            summary.rows += rows
            rate = rows / result.seconds if result.seconds > 0 else 0.0
            log.info("ok %s: %d rows in %.1f s (%.2f clips/s)", entry.rel, rows, result.seconds, rate)
            note = recipe_fps_note(data, result.info.native_fps if result.info else None, entry.rel)
            if note and not fps_noted:
                log.info(note)
                fps_noted = True
            if record.partial:
                log.warning(
                    "PARTIAL %s: decoding stopped at %.1f s of %.1f s (truncated file?); kept "
                    "what decoded, manifest says partial=true",
                    entry.rel,
                    result.frames * result.frame_duration,
                    result.info.duration if result.info else 0.0,
                )
            progress.update(0 if result.features is None else len(result.features))
    finally:
        progress.close()
