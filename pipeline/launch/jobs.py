"""What runs inside a launched job: a shard (requeued on preemption or timeout) or the consolidation after
a Slurm array. The function a shard job runs is given by the caller (`run_fn`): this package knows
nothing of what a shard does."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit

from pipeline.hardware import CPU_SHARE_ENV
from pipeline.launch.outcomes import ShardOutcome, collect_outcome, report_failures
from pipeline.launch.slurm import WaitOptions, grace_s, slurm_states

log = logging.getLogger(__name__)

RunFn = Callable[[Any, int, int], Any]
"""run_fn(shard_args, shard_index, num_shards) -> the shard's result (e.g. its summary)."""
ConsolidateFn = Callable[[Any, list[ShardOutcome]], Any]
"""consolidate_fn(cfg, outcomes): runs after every shard has ended (Slurm, hardware.wait=false)."""


# --- what runs in a job -------------------------------------------------------------------------


def setup_job_logging() -> None:
    """Show the pipeline's INFO lines in the job's stderr log (a fresh job process has no handler)."""
    ours = logging.getLogger("pipeline")
    if logging.getLogger().handlers or ours.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)


class ShardTask(submitit.helpers.Checkpointable):
    """One shard as a submitit job; on preemption or timeout it requeues itself and resumes from its manifest."""

    def __init__(self, run_fn: RunFn, cpus: Sequence[int] | None = None) -> None:
        self.run_fn = run_fn
        self.cpus = list(cpus) if cpus is not None else None  # this job's share of the node's CPUs

    def with_cpus(self, cpus: Sequence[int]) -> ShardTask:
        """The same task, confined to `cpus` (one local job of several on a node)."""
        return ShardTask(self.run_fn, cpus)

    def _take_cpu_share(self) -> None:
        """Size everything from this job's CPUs: usable_cpus() reads PIPELINE_CPUS, threads follow."""
        if not self.cpus:
            return
        os.environ[CPU_SHARE_ENV] = str(len(self.cpus))
        try:
            os.sched_setaffinity(0, self.cpus)  # decode workers and FFmpeg threads inherit it
        except (AttributeError, OSError) as error:  # not Linux, or CPUs gone: the count still holds
            log.debug("could not pin this job to CPUs %s: %s", self.cpus, error)

    def __call__(self, cfg: Any, shard_index: int, num_shards: int) -> Any:
        setup_job_logging()
        self._take_cpu_share()
        log.info(
            "shard %d/%d starting on %s (CUDA_VISIBLE_DEVICES=%s)",
            shard_index,
            num_shards,
            os.uname().nodename,
            os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        )
        return self.run_fn(cfg, shard_index, num_shards)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same call; the rerun skips what the shard manifest already records as done."""
        log.warning(
            "shard interrupted (preemption or time limit): requeueing; the rerun resumes from its manifest"
        )
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class ConsolidateTask(submitit.helpers.Checkpointable):
    """The job after the array: reads every shard's outcome from the submitit folder, then consolidates."""

    def __init__(self, consolidate_fn: ConsolidateFn) -> None:
        self.consolidate_fn = consolidate_fn

    def __call__(self, cfg: Any, folder: str, job_ids: dict[int, str]) -> Any:
        setup_job_logging()
        states = slurm_states(list(job_ids.values())) or {}
        outcomes: list[ShardOutcome] = []
        for shard, job_id in sorted(job_ids.items()):
            state = states.get(job_id, "UNKNOWN")
            outcomes.append(
                collect_outcome(shard, job_id, Path(folder), state, grace_s=grace_s(state, WaitOptions()))
            )
        report_failures(outcomes)
        return self.consolidate_fn(cfg, outcomes)
