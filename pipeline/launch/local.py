"""The local launcher: shards as submitit jobs on this machine, at most one per GPU (or CPU slot) at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from pipeline.config import ExtractConfig
from pipeline.launch.executors import local_slots, make_executor, slot_cpus
from pipeline.launch.jobs import ShardTask
from pipeline.launch.outcomes import LaunchResult, ShardOutcome, ShardProgress, collect_outcome
from pipeline.launch.slurm import WaitOptions

log = logging.getLogger(__name__)


def run_local(
    cfg: ExtractConfig,
    task: ShardTask,
    shards: list[int],
    num_shards: int,
    folder: Path,
    options: WaitOptions,
    args_of: Callable[[int], Any],
) -> LaunchResult:
    """Run the shards as local submitit jobs, at most one per GPU (or CPU slot) at a time, and wait."""
    hw = cfg.hardware
    slots = local_slots(hw)
    shares = slot_cpus(len(slots))
    executor = make_executor(hw, folder)
    poll_s = options.poll_s if options.poll_s is not None else 1.0
    result = LaunchResult("local", folder)
    queue = list(shards)
    running: dict[int, tuple[int, submitit.Job[Any]]] = {}  # slot index -> (shard, job)
    outcomes: dict[int, ShardOutcome] = {}
    progress = ShardProgress(len(shards), options.log_every_s)
    log.info(
        "running %d shard(s) of %d locally on %s, %d CPU(s) each; logs in %s",
        len(shards),
        num_shards,
        f"GPUs {slots}" if slots[0] is not None else f"{len(slots)} CPU worker(s)",
        len(shares[0]),
        folder,
    )
    try:
        while queue or running:
            for slot, gpu in enumerate(slots):
                if slot in running or not queue:
                    continue
                shard = queue.pop(0)
                if gpu is None:
                    executor.update_parameters(gpus_per_node=0, visible_gpus=())
                else:
                    executor.update_parameters(gpus_per_node=1, visible_gpus=[gpu])
                job = executor.submit(task.with_cpus(shares[slot]), args_of(shard), shard, num_shards)
                result.job_ids[shard] = job.job_id
                running[slot] = (shard, job)
                log.info(
                    "shard %d: local job %s%s", shard, job.job_id, "" if gpu is None else f" on GPU {gpu}"
                )
            for slot, (shard, job) in list(running.items()):
                state = job.state
                if state != "RUNNING":
                    outcomes[shard] = collect_outcome(shard, job.job_id, folder, state, grace_s=2.0)
                    if not outcomes[shard].ok:
                        log.error("%s", outcomes[shard].describe())
                    del running[slot]
            failed = sum(not o.ok for o in outcomes.values())
            progress.update(len(outcomes) - failed, len(running), len(queue), failed)
            if queue or running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping the local shard jobs")
        for _, job in running.values():
            job.cancel()
        raise
    finally:
        progress.close()
    result.outcomes = [outcomes[s] for s in sorted(outcomes)]
    return result
