"""Scale-out of shards through submitit: local worker processes (one per GPU or CPU slot) or a Slurm job
array. Generic: a job runs the function the caller gives (`run_fn`) on that shard's arguments; what a shard
does is the caller's (`pipeline.run.launched`).

`launcher` (launch_shards), `jobs` (what runs in a job, requeue), `executors` (submitit executors, GPUs and
CPU shares of local jobs), `local` (the local launcher's loop), `slurm` (job states, waiting, the
consolidation job), `outcomes` (how jobs ended, the launch error, progress).
"""

from pipeline.launch.executors import local_gpus, local_slots, make_executor, shard_count, slot_cpus
from pipeline.launch.jobs import ConsolidateFn, ConsolidateTask, RunFn, ShardTask
from pipeline.launch.launcher import launch_shards
from pipeline.launch.outcomes import (
    LaunchError,
    LaunchResult,
    ShardOutcome,
    ShardProgress,
    collect_outcome,
    report_failures,
    tail_lines,
)
from pipeline.launch.slurm import WaitOptions, expand_ids, slurm_states

__all__ = [
    "ConsolidateFn",
    "ConsolidateTask",
    "LaunchError",
    "LaunchResult",
    "RunFn",
    "ShardOutcome",
    "ShardProgress",
    "ShardTask",
    "WaitOptions",
    "collect_outcome",
    "expand_ids",
    "launch_shards",
    "local_gpus",
    "local_slots",
    "make_executor",
    "report_failures",
    "shard_count",
    "slot_cpus",
    "slurm_states",
    "tail_lines",
]
