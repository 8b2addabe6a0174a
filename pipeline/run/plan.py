"""A run planned once: the video list, each shard's part of it, a resume decision per video, the settings
that change the numbers and the weights they come from. `RunPlan` is built at start and handed to whoever
runs its shards (this process, local workers, Slurm jobs): each gets its `ShardPlan` and recomputes
nothing, unless the manifests changed since (a requeued job, a run beside it): then it decides again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import naming
from pipeline.assemble import extraction_settings, output_dir_of
from pipeline.config import ExtractConfig, ModelConfig, video_list_path
from pipeline.errors import PipelineError
from pipeline.inference import check_model_config
from pipeline.launch import shard_count
from pipeline.outputs import (
    ManifestProblem,
    ManifestRecord,
    OutputError,
    ResumeDecision,
    appended_records,
    decide_resume,
    latest_records,
    manifest_files,
    newest,
    part_counts,
    part_extents,
    unchanged_parts,
)
from pipeline.run.shards import shard_plan
from pipeline.synth import make_demo_videos
from pipeline.videolist import VideoEntry, VideoListError, read_video_list
from pipeline.weights import WeightsInfo, resolve_zoo, weights_info

log = logging.getLogger(__name__)


class RunError(PipelineError, RuntimeError):
    """A run-level failure (bad list, lock held, disk full): the run stops with this one line."""


def stopping(error: OutputError) -> RunError:
    """The one line a run ends with when the output dir cannot be written (disk full, read-only)."""
    return RunError(f"stopping: {error} (a rerun of the same command continues from here)")


VERIFY_THREADS = 8  # output.verify=full: files hashed at once (I/O bound on cluster file systems)

ManifestStamp = tuple[tuple[str, int, int], ...]
"""(name, size, mtime_ns) of every shard manifest: whether the decisions made from them still hold."""


def manifest_stamp(output_dir: Path) -> ManifestStamp:
    """The state of an output dir's manifests, as of now."""
    stamps = []
    for path in manifest_files(output_dir):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        stamps.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


@dataclass(frozen=True)
class ShardPlan:
    """One shard's part of a run: everything its runner needs, nothing it must look up again."""

    cfg: ExtractConfig
    output_dir: Path
    settings: dict[str, Any]
    weights: WeightsInfo
    index: int
    count: int
    entries: tuple[VideoEntry, ...]
    decisions: Mapping[str, ResumeDecision]
    stamp: ManifestStamp  # the manifests the decisions were made from
    part_extents: Mapping[str, tuple[int, int | None]]  # packed: this shard's parts, where each must keep
    # to (and the mtime its last record saw)
    part_counts: Mapping[str, int]  # ... and how many videos' newest records each holds

    @property
    def has_work(self) -> bool:
        """Whether a video of this shard is to be extracted (listed errors alone are no work)."""
        return any(self.decisions[e.key].run for e in self.entries if not e.error)

    def current(self) -> ShardPlan:
        """This plan, or one with fresh decisions when the manifests changed since it was made."""
        stamp = manifest_stamp(self.output_dir)
        if stamp == self.stamp:
            return self
        log.info("shard %d/%d: manifests changed since the plan; deciding again", self.index, self.count)
        latest = read_latest(self.output_dir)
        decisions = decide_all(self.cfg, self.entries, latest, self.output_dir, self.settings)
        extents, counts = shard_parts(latest, self.index, self.count)
        return dataclasses.replace(
            self, decisions=decisions, stamp=stamp, part_extents=extents, part_counts=counts
        )


@dataclass(frozen=True)
class RunPlan:
    """The whole run: its output dir, settings, weights and the shards this invocation runs."""

    cfg: ExtractConfig
    output_dir: Path
    settings: dict[str, Any]
    weights: WeightsInfo
    num_shards: int
    shards: tuple[ShardPlan, ...]
    latest: Mapping[str, ManifestRecord]  # the newest records the plan was made from
    stamp: ManifestStamp  # the manifests they were read from

    def records_now(self) -> Mapping[str, ManifestRecord] | None:
        """The newest records now (for the final consolidation): the plan's, updated with the lines the
        shards appended since the plan read the manifests, so a run reads its manifests in full once. None
        when a manifest shrank or vanished meanwhile (then they are read again)."""
        appended = appended_records(self.output_dir, {name: size for name, size, _ in self.stamp})
        if appended is None:
            return None
        records, problems = appended
        warn_unusable(problems)
        if not records:
            return self.latest
        latest = dict(self.latest)
        for record in records:
            newest(latest, record)
        return latest

    def shard(self, index: int) -> ShardPlan:
        """The plan of shard `index` (one this invocation runs)."""
        for shard in self.shards:
            if shard.index == index:
                return shard
        raise KeyError(f"shard {index} is not part of this run's plan")


def read_latest(output_dir: Path) -> dict[str, ManifestRecord]:
    """The newest manifest record per video, with one warning per unusable manifest line."""
    latest, problems = latest_records(output_dir)
    warn_unusable(problems)
    return latest


def warn_unusable(problems: list[ManifestProblem]) -> None:
    """One warning per unusable manifest line."""
    for problem in problems:
        log.warning(
            "%s line %d: %s (that video will be recomputed)", problem.path, problem.line, problem.reason
        )


def decide_all(
    cfg: ExtractConfig,
    entries: tuple[VideoEntry, ...],
    latest: Mapping[str, ManifestRecord],
    output_dir: Path,
    settings: dict[str, Any],
) -> dict[str, ResumeDecision]:
    """A resume decision per entry from the newest manifest records; `output.verify=full` hashes the kept
    outputs in parallel threads (hashing releases the GIL)."""
    out = cfg.output
    unchanged = unchanged_parts(latest, output_dir) if out.verify.value == "stat" else {}

    def decide(entry: VideoEntry) -> ResumeDecision:
        return decide_resume(
            latest.get(entry.key),
            output_dir,
            settings,
            overwrite=out.overwrite,
            retry_failed=out.retry_failed,
            verify=out.verify.value,
            store=out.store.value,
            unchanged=unchanged,
        )

    if out.verify.value == "full" and len(entries) > 1:
        with ThreadPoolExecutor(max_workers=VERIFY_THREADS) as pool:
            return dict(zip((e.key for e in entries), pool.map(decide, entries), strict=True))
    return {e.key: decide(e) for e in entries}


def shard_parts(
    latest: Mapping[str, ManifestRecord], shard_index: int, num_shards: int
) -> tuple[dict[str, tuple[int, int | None]], dict[str, int]]:
    """This shard's packed parts: the end each must keep (its last newest record) and how many newest
    records each holds (the packed store appends after them)."""
    prefix = naming.packed_shard_relpath(shard_index, num_shards) + "/"
    extents = {part: end for part, end in part_extents(latest).items() if part.startswith(prefix)}
    counts = {part: n for part, n in part_counts(latest).items() if part.startswith(prefix)}
    return extents, counts


def resolve_zoo_checkpoint(model: ModelConfig) -> Path:
    """The cached zoo file of a model; FileNotFoundError (with the fetch command) when it is missing."""
    check_model_config(model)
    return resolve_zoo(model.name)


def read_entries(cfg: ExtractConfig) -> list[VideoEntry]:
    """The run's video list, resolved against the data root; RunError when it cannot be read."""
    try:
        return read_video_list(
            video_list_path(cfg.data), Path(cfg.data.root).expanduser().resolve(), cfg.data.video_ext
        )
    except (OSError, VideoListError) as error:
        raise RunError(str(error)) from error


def wanted_shards(cfg: ExtractConfig, num_shards: int) -> list[int]:
    """The shards this invocation runs: hardware.shard_index alone, else all of them."""
    index = cfg.hardware.shard_index
    return [index] if index is not None else list(range(num_shards))


def plan_run(cfg: ExtractConfig) -> RunPlan:
    """Plan a run once: model checks, weights (hashed once), settings, the list cut into its shards
    (hardware.num_shards; 0 with the local launcher: one per GPU or CPU slot; shards.json keeps the cut),
    and a decision per video."""
    num_shards = max(1, shard_count(cfg.hardware))
    if num_shards != cfg.hardware.num_shards:  # the run records the count it ran with
        cfg = dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, num_shards=num_shards))
    check_model_config(cfg.model, cfg.data)
    output_dir = output_dir_of(cfg)
    entries = read_entries(cfg)
    weights = weights_info(cfg.model)
    settings = extraction_settings(cfg, weights)
    try:
        keys_per_shard = shard_plan(entries, num_shards, output_dir) if num_shards > 1 else None
    except OutputError as error:  # shards.json could not be written
        raise stopping(error) from error
    stamp = manifest_stamp(output_dir)
    latest = read_latest(output_dir)
    shards = []
    for index in wanted_shards(cfg, num_shards):
        if keys_per_shard is None:
            mine = tuple(entries)
        else:
            keys = set(keys_per_shard[index])
            mine = tuple(e for e in entries if e.key in keys)
        decisions = decide_all(cfg, mine, latest, output_dir, settings)
        extents, counts = shard_parts(latest, index, num_shards)
        shards.append(
            ShardPlan(
                cfg, output_dir, settings, weights, index, num_shards, mine, decisions, stamp, extents, counts
            )
        )
    return RunPlan(cfg, output_dir, settings, weights, num_shards, tuple(shards), latest, stamp)


def print_plan(plan: RunPlan) -> int:
    """dry_run=true: print videos, skip/recompute decisions, shards and the output dir; run nothing."""
    print(f"output dir: {plan.output_dir}")
    print(f"shards: {plan.num_shards} ({plan.cfg.hardware.launcher.value} launcher)")
    counts: dict[str, int] = {}
    for shard in plan.shards:
        print(f"shard {shard.index}/{shard.count}: {len(shard.entries)} videos")
        for entry in shard.entries:
            decision = shard.decisions[entry.key]
            action = "FAIL" if entry.error else ("run" if decision.run else "skip")
            reason = entry.error or decision.reason
            counts[action] = counts.get(action, 0) + 1
            print(f"  {action:4s} {entry.rel}  ({reason})")
    print("plan: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    return 0


def prepare_demo(cfg: ExtractConfig) -> None:
    """Make the demo videos on first use (data=demo only)."""
    if cfg.data.name == "demo":
        make_demo_videos(Path(cfg.data.root).expanduser())
