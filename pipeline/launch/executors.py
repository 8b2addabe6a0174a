"""submitit executors for the local and Slurm launchers, and which GPUs and CPUs local jobs get."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import submitit

from pipeline.config import HardwareConfig
from pipeline.hardware import split_cpus, usable_cpus
from pipeline.launch.outcomes import LaunchError, name_of

# --- executors ----------------------------------------------------------------------------------


def require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
    if missing:
        raise LaunchError(
            f"hardware.launcher=slurm: {', '.join(missing)} not found on PATH "
            "(run this on a Slurm login node, or pick another hardware config)"
        )


def make_executor(
    hw: HardwareConfig, folder: Path | str, *, gpus_per_node: int | None = None
) -> submitit.Executor:
    """A submitit executor for `hw.launcher` ("local" or "slurm") writing its files under `folder`.

    `gpus_per_node` overrides `hw.gpus_per_node` (Slurm; the consolidation job asks for none).
    """
    launcher = name_of(hw.launcher)
    if launcher == "local":
        local = submitit.LocalExecutor(folder=str(folder))
        local.update_parameters(
            timeout_min=hw.timeout_min,
            signal_delay_s=hw.signal_delay_s,
            gpus_per_node=0,
            setup=list(hw.setup or []),
        )
        return local
    if launcher != "slurm":
        raise LaunchError(
            f"hardware.launcher={launcher}: only 'local' and 'slurm' submit jobs "
            "('inprocess' runs the shards in this process)"
        )
    require_slurm()
    executor = submitit.AutoExecutor(
        folder=str(folder), cluster="slurm", slurm_max_num_timeout=hw.max_num_timeout
    )
    params: dict[str, Any] = {
        "timeout_min": int(hw.timeout_min),
        "cpus_per_task": int(hw.cpus_per_task),
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_partition": hw.partition,
        "slurm_account": hw.account,
        "slurm_qos": hw.qos,
        "slurm_constraint": hw.constraint,
        "slurm_array_parallelism": int(hw.array_parallelism),
        "slurm_signal_delay_s": int(hw.signal_delay_s),
        "slurm_additional_parameters": dict(hw.additional_parameters or {}),
        "slurm_setup": list(hw.setup or []),
    }
    if hw.mem_gb is not None:
        params["mem_gb"] = hw.mem_gb
    gpus = hw.gpus_per_node if gpus_per_node is None else gpus_per_node
    if gpus:
        params["gpus_per_node"] = int(gpus)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def local_gpus(hw: HardwareConfig) -> list[int]:
    """GPU ids for the local launcher, one worker each; [] on the CPU."""
    if name_of(hw.device) != "cuda":
        return []
    if hw.gpus is not None:
        gpus = [int(g) for g in hw.gpus]
        if not gpus:
            raise LaunchError("hardware.gpus: empty list (null = all visible GPUs)")
        return gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        try:
            gpus = [int(part) for part in visible.split(",") if part.strip()]
        except ValueError:
            raise LaunchError(
                f"hardware.gpus: CUDA_VISIBLE_DEVICES={visible!r} is not a list of integers; "
                "set hardware.gpus=[...] explicitly"
            ) from None
    else:
        import torch

        gpus = list(range(torch.cuda.device_count()))
    if not gpus:
        raise LaunchError("hardware.device=cuda with the local launcher, but no GPU is visible")
    return gpus


def slot_cpus(slots: int) -> list[list[int]]:
    """Each concurrent local job's share of this process's CPUs (disjoint blocks of usable_cpus())."""
    try:
        ids = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        ids = list(range(os.cpu_count() or 1))
    return split_cpus(ids[: usable_cpus()], slots)


def local_slots(hw: HardwareConfig) -> list[int | None]:
    """Concurrent local workers: one per GPU, or CPUs // hardware.threads on the CPU (at least one)."""
    gpus = local_gpus(hw)
    if gpus:
        return list(gpus)
    cpus = usable_cpus()
    return [None] * max(1, cpus // (hw.threads or cpus))


def shard_count(hw: HardwareConfig) -> int:
    """hardware.num_shards, where 0 (local launcher) means one shard per GPU / CPU worker."""
    return int(hw.num_shards) if hw.num_shards > 0 else len(local_slots(hw))
