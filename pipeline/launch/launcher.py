"""`launch_shards`: one job per shard with the local or Slurm launcher; waits (a per-shard outcome with logs
for failures) or, for Slurm with `hardware.wait=false`, also submits a consolidation job that runs after the
array (`afterany`) and returns at once."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline import naming
from pipeline.config import ExtractConfig, HardwareConfig
from pipeline.launch.executors import make_executor
from pipeline.launch.jobs import ConsolidateFn, ConsolidateTask, RunFn, ShardTask
from pipeline.launch.local import run_local
from pipeline.launch.outcomes import LaunchError, LaunchResult, name_of, one_line
from pipeline.launch.slurm import WaitOptions, wait_slurm

log = logging.getLogger(__name__)


def job_name(cfg: ExtractConfig) -> str:
    model = getattr(getattr(cfg, "model", None), "name", None)
    return f"extract-{model}" if model else "extract"


def submission_error(error: Exception) -> LaunchError:
    text = one_line(str(error))
    lines = [part for part in text.split(" | ") if "error" in part.lower()] or [text]
    return LaunchError(f"sbatch rejected the shard jobs: {' | '.join(lines)}")


def launch_shards(
    cfg: ExtractConfig,
    shards: Sequence[int],
    num_shards: int,
    *,
    run_fn: RunFn,
    shard_args: Callable[[int], Any] | None = None,
    consolidate_fn: ConsolidateFn | None = None,
    folder: Path | str | None = None,
    wait_options: WaitOptions | None = None,
) -> LaunchResult:
    """Run `shards` (of `num_shards`) with `cfg.hardware`'s launcher, one job per shard.

    Job `i` calls `run_fn(shard_args(i), i, num_shards)` (without `shard_args`: `run_fn(cfg, i, num_shards)`),
    so each job receives only its own shard's data. Waits (hardware.wait, and always for the local launcher)
    and returns one outcome per shard; with Slurm and wait=false it also submits `consolidate_fn` to run after
    the array and returns at once.
    """
    hw = cfg.hardware
    launcher = name_of(hw.launcher)
    folder = (
        Path(folder if folder is not None else (hw.log_dir or naming.JOB_LOGS_DIR)).expanduser().resolve()
    )
    options = wait_options or WaitOptions()
    shards = list(shards)
    if launcher not in ("local", "slurm"):
        raise LaunchError(
            f"hardware.launcher={launcher}: only 'local' and 'slurm' submit jobs "
            "('inprocess' runs the shards in this process)"
        )
    if not shards:
        log.info("no shard needs running")
        return LaunchResult(launcher, folder)
    task = ShardTask(run_fn)

    def args_of(shard: int) -> Any:
        return shard_args(shard) if shard_args is not None else cfg

    if launcher == "local":
        if not hw.wait:
            log.warning(
                "hardware.wait=false is for Slurm: local workers are children of this process; waiting"
            )
        return run_local(cfg, task, shards, num_shards, folder, options, args_of)
    executor = make_executor(hw, folder)
    executor.update_parameters(name=job_name(cfg))
    n = len(shards)
    try:
        jobs = executor.map_array(task, [args_of(s) for s in shards], shards, [num_shards] * n)
    except Exception as error:  # sbatch's message arrives in submitit's exception
        raise submission_error(error) from error
    result = LaunchResult(
        "slurm", folder, job_ids={s: job.job_id for s, job in zip(shards, jobs, strict=True)}
    )
    log.info(
        "submitted %d shard(s) of %d as Slurm job %s; logs in %s", n, num_shards, result.array_id, folder
    )
    if not hw.wait:
        if consolidate_fn is not None:
            result.consolidate_job_id = submit_consolidation(cfg, hw, folder, result, consolidate_fn)
        result.waited = False
        log.info(
            "not waiting (hardware.wait=false): shards = job %s%s; follow with: squeue -j %s",
            result.array_id,
            f", consolidation = job {result.consolidate_job_id}" if result.consolidate_job_id else "",
            result.array_id,
        )
        return result
    result.outcomes = wait_slurm(result, options)
    return result


def submit_consolidation(
    cfg: ExtractConfig, hw: HardwareConfig, folder: Path, result: LaunchResult, consolidate_fn: ConsolidateFn
) -> str:
    """Submit the job that runs after the whole array (afterany); cancel the array if sbatch refuses it."""
    executor = make_executor(hw, folder, gpus_per_node=0)
    executor.update_parameters(
        name=f"{job_name(cfg)}-consolidate", slurm_dependency=f"afterany:{result.array_id}"
    )
    try:
        job = executor.submit(ConsolidateTask(consolidate_fn), cfg, str(folder), dict(result.job_ids))
    except Exception as error:
        subprocess.run(["scancel", str(result.array_id)], capture_output=True, timeout=60)
        raise LaunchError(
            f"the consolidation job was rejected, so shard job {result.array_id} was cancelled: "
            f"{submission_error(error)}"
        ) from error
    return job.job_id
