"""A planned run's shards as local or Slurm jobs (`pipeline.launch`): each job gets its own shard's plan
and runs it; a run submitted without waiting is finished by a consolidation job after the array."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import naming
from pipeline.config import ExtractConfig
from pipeline.launch import LaunchError, ShardOutcome, launch_shards
from pipeline.run.finish import consolidate_outputs, finish_run
from pipeline.run.plan import RunPlan, ShardPlan
from pipeline.run.shard import ShardSummary, run_shard

log = logging.getLogger(__name__)


def run_planned_shard(shard: ShardPlan, shard_index: int, num_shards: int) -> ShardSummary:
    """What a shard job runs: its own plan (the launcher's `run_fn`)."""
    if (shard.index, shard.count) != (shard_index, num_shards):
        raise LaunchError(
            f"shard job {shard_index}/{num_shards} was handed shard {shard.index}/{shard.count}"
        )
    return run_shard(shard)


def nothing_to_do(shard: ShardPlan) -> ShardSummary:
    """The summary of a shard whose videos are all kept from before (or listed with an error)."""
    errors = sum(bool(e.error) for e in shard.entries)
    return ShardSummary(shard.index, shard.count, failed=errors, skipped=len(shard.entries) - errors)


def failed_shards_line(failed: Sequence[ShardOutcome]) -> str:
    """One line naming every failed shard job with its state and stderr log."""
    where = "; ".join(f"shard {o.shard} (job {o.job_id}, {o.state}, stderr {o.stderr})" for o in failed)
    return f"{len(failed)} shard(s) failed: {where}; rerun the same command to retry them"


def finish_detached(
    cfg: ExtractConfig,
    outcomes: list[ShardOutcome],
    *,
    output_dir: str,
    complete: list[ShardSummary],
) -> dict[str, Any]:
    """The consolidation job of a run submitted without waiting: HDF5 + run record, like a waiting run."""
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise LaunchError(f"not consolidating: {failed_shards_line(failed)}")
    summaries = sorted([*complete, *(o.result for o in outcomes)], key=lambda s: s.shard)
    out = Path(output_dir)
    h5 = consolidate_outputs(cfg, out) if cfg.output.hdf5 and cfg.hardware.shard_index is None else None
    return finish_run(cfg, out, summaries, None, h5)


def launch_run(plan: RunPlan) -> list[ShardSummary] | None:
    """Run a planned extraction with the local or Slurm launcher; shard summaries, or None if not waiting.

    Shards with nothing left to do are not launched. Raises LaunchError (after logging each failure with its
    logs) when a shard job failed.
    """
    cfg, hw = plan.cfg, plan.cfg.hardware
    todo = [shard.index for shard in plan.shards if shard.has_work]
    complete = [nothing_to_do(shard) for shard in plan.shards if not shard.has_work]
    if complete:
        log.info("%d shard(s) have nothing left to do: %s", len(complete), [s.shard for s in complete])
    folder = Path(hw.log_dir).expanduser() if hw.log_dir else plan.output_dir / naming.JOB_LOGS_DIR
    finish = functools.partial(finish_detached, output_dir=str(plan.output_dir), complete=complete)
    result = launch_shards(
        cfg,
        todo,
        plan.num_shards,
        run_fn=run_planned_shard,
        shard_args=plan.shard,
        consolidate_fn=finish,
        folder=folder,
    )
    if not result.waited:
        return None
    if result.failed:
        raise LaunchError(failed_shards_line(result.failed))
    return sorted([*complete, *result.results.values()], key=lambda s: s.shard)
