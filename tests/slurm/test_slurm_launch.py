"""pipeline.launch against the real local Slurm cluster, with trivial run functions: resources reach the
jobs, failures and cancellations are reported (never a hang), USR2 preemption requeues a shard, the
consolidation job of wait=false runs after the array, and a rejected sbatch is one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest

from pipeline.config import HardwareConfig
from pipeline.launch import LaunchError, ShardOutcome, WaitOptions, launch_shards
from tests.slurm.slurm_helpers import wait_for, wait_for_sacct

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# run functions travel to the jobs by value: the job's Python cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _cfg(**hw: object) -> SimpleNamespace:
    settings: dict[str, object] = {
        "launcher": "slurm",
        "partition": "debug",
        "cpus_per_task": 1,
        "mem_gb": 1,
        "timeout_min": 60,
        "max_num_timeout": 3,
        "signal_delay_s": 30,
    }
    settings.update(hw)
    return SimpleNamespace(
        hardware=HardwareConfig(**settings), model=SimpleNamespace(name=uuid.uuid4().hex[:8]), workdir=None
    )


def job_env(cfg: SimpleNamespace, shard: int, num_shards: int) -> dict:
    keys = (
        "SLURM_ARRAY_TASK_ID",
        "SLURM_JOB_PARTITION",
        "SLURM_CPUS_PER_TASK",
        "CUDA_VISIBLE_DEVICES",
        "SLURM_JOB_NAME",
    )
    return {"shard": shard, "of": num_shards, **{k: os.environ.get(k) for k in keys}}


def mixed_fates(cfg: SimpleNamespace, shard: int, num_shards: int) -> dict:
    """Shard 0 succeeds, shard 1 raises, shard 2 announces its job id and waits to be cancelled."""
    if shard == 1:
        raise RuntimeError("shard 1 cannot read its videos")
    if shard == 2:
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        Path(cfg.workdir, "shard2_job").write_text(job)
        time.sleep(600)
    return {"shard": shard}


def count_starts(cfg: SimpleNamespace, shard: int, num_shards: int) -> dict:
    """Record each start; the first one announces its job id and waits for the preemption signal."""
    log = Path(cfg.workdir, f"starts_{shard}.txt")
    with log.open("a") as f:
        f.write(f"{os.environ['SLURM_JOB_ID']}\n")
    starts = log.read_text().splitlines()
    if len(starts) == 1:
        time.sleep(600)
    return {"shard": shard, "starts": len(starts)}


def sleep_and_stamp(cfg: SimpleNamespace, shard: int, num_shards: int) -> dict:
    time.sleep(2)
    if shard == 1:
        raise ValueError("shard 1 broke")
    return {"shard": shard, "end": time.time(), "gpus": os.environ.get("SLURM_GPUS_ON_NODE")}


def first_waits(cfg: SimpleNamespace, shard: int, num_shards: int) -> int:
    """Shard 0 announces itself and runs a few seconds; the others return at once."""
    if shard == 0:
        Path(cfg.workdir, "shard0_running").write_text(os.environ["SLURM_ARRAY_JOB_ID"])
        time.sleep(4)
    return shard


def record_consolidation(cfg: SimpleNamespace, outcomes: list[ShardOutcome]) -> str:
    data = {
        "start": time.time(),
        "gpus": os.environ.get("SLURM_GPUS_ON_NODE"),
        "outcomes": [
            {"shard": o.shard, "ok": o.ok, "result": o.result, "error": o.error, "state": o.state}
            for o in outcomes
        ],
    }
    Path(cfg.workdir, "consolidated.json").write_text(json.dumps(data))
    return "consolidated"


def _in_background(action: object) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(150)
def test_array_waits_and_jobs_get_their_resources(tmp_path: Path) -> None:
    cfg = _cfg(gpus_per_node=1)
    result = launch_shards(cfg, [0, 1, 2], 3, run_fn=job_env, folder=tmp_path)
    assert result.waited and not result.failed
    assert set(result.job_ids.values()) == {f"{result.array_id}_{i}" for i in range(3)}
    for shard, env in result.results.items():
        assert env["shard"] == shard and env["of"] == 3
        assert env["SLURM_ARRAY_TASK_ID"] == str(shard)
        assert (env["SLURM_JOB_PARTITION"], env["SLURM_CPUS_PER_TASK"]) == ("debug", "1")
        assert env["SLURM_JOB_NAME"] == f"extract-{cfg.model.name}"
        assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1"), "one (fake) GPU per task"


@pytest.mark.timeout(150)
def test_failed_and_cancelled_shards_are_reported_without_hanging(tmp_path: Path) -> None:
    cfg = _cfg()
    cfg.workdir = str(tmp_path)
    marker = tmp_path / "shard2_job"

    def cancel_shard_2() -> None:
        deadline = time.monotonic() + 90
        while not marker.is_file() and time.monotonic() < deadline:
            time.sleep(0.3)
        subprocess.run(["scancel", marker.read_text()], check=True, timeout=30)

    canceller = _in_background(cancel_shard_2)
    result = launch_shards(cfg, [0, 1, 2], 3, run_fn=mixed_fates, folder=tmp_path / "logs")
    canceller.join(timeout=5)
    assert result.results == {0: {"shard": 0}}
    by_shard = {o.shard: o for o in result.failed}
    assert sorted(by_shard) == [1, 2]
    raised, cancelled = by_shard[1], by_shard[2]
    assert raised.state == "FAILED" and raised.error == "RuntimeError: shard 1 cannot read its videos"
    assert raised.stderr is not None and raised.stderr.name == f"{raised.job_id}_0_log.err"
    assert "RuntimeError: shard 1 cannot read its videos" in raised.stderr_tail.splitlines()
    assert cancelled.state == "CANCELLED" and cancelled.job_id == marker.read_text()
    assert "without a result" in (cancelled.error or "")
    assert f"job {cancelled.job_id}" in cancelled.describe()


@pytest.mark.timeout(120)
def test_pending_array_task_cancelled_before_it_starts_does_not_hang(tmp_path: Path) -> None:
    # Slurm keeps no record of a pending array task cancelled while a sibling runs: it just vanishes
    cfg = _cfg(array_parallelism=1)
    cfg.workdir = str(tmp_path)
    marker = tmp_path / "shard0_running"

    def cancel_pending_shard_1() -> None:
        deadline = time.monotonic() + 60
        while not marker.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(["scancel", f"{marker.read_text()}_1"], check=True, timeout=30)

    thread = _in_background(cancel_pending_shard_1)
    options = WaitOptions(vanish_after_s=3.0)
    result = launch_shards(
        cfg, [0, 1, 2], 3, run_fn=first_waits, folder=tmp_path / "logs", wait_options=options
    )
    thread.join(timeout=5)
    assert result.results == {0: 0, 2: 2}
    (cancelled,) = result.failed
    assert (cancelled.shard, cancelled.state) == (1, "CANCELLED")
    assert cancelled.error == "cancelled before it started (Slurm keeps no record of it)"
    assert cancelled.job_id == f"{marker.read_text()}_1"


@pytest.mark.timeout(180)
def test_usr2_preemption_requeues_the_shard_which_then_finishes(tmp_path: Path) -> None:
    cfg = _cfg()
    cfg.workdir = str(tmp_path)
    starts = tmp_path / "starts_0.txt"

    def preempt() -> None:
        deadline = time.monotonic() + 90
        while not starts.is_file() and time.monotonic() < deadline:
            time.sleep(0.3)
        job_id = starts.read_text().split()[0]
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)

    thread = _in_background(preempt)
    result = launch_shards(cfg, [0], 1, run_fn=count_starts, folder=tmp_path / "logs")
    thread.join(timeout=5)
    assert not result.failed and result.results == {0: {"shard": 0, "starts": 2}}
    (job_id,) = result.job_ids.values()
    log = (tmp_path / "logs" / f"{job_id}_0_log.out").read_text()
    assert "this job is preempted" in log and "Calling checkpoint method" in log
    err = (tmp_path / "logs" / f"{job_id}_0_log.err").read_text()
    assert "requeueing; the rerun resumes from its manifest" in err


@pytest.mark.timeout(150)
def test_wait_false_submits_a_consolidation_job_after_the_array(tmp_path: Path) -> None:
    cfg = _cfg(wait=False, gpus_per_node=1)
    cfg.workdir = str(tmp_path)
    done = tmp_path / "consolidated.json"
    result = launch_shards(
        cfg,
        [0, 1, 2],
        3,
        run_fn=sleep_and_stamp,
        consolidate_fn=record_consolidation,
        folder=tmp_path / "logs",
    )
    assert not done.exists(), "wait=false returns right after submitting, before the consolidation ran"
    assert not result.waited and result.outcomes == [] and result.consolidate_job_id
    follow = result.consolidate_job_id
    wait_for(done.is_file, 120, "the consolidation job")
    data = json.loads(done.read_text())
    by_shard = {o["shard"]: o for o in data["outcomes"]}
    assert sorted(by_shard) == [0, 1, 2]
    assert by_shard[1]["ok"] is False and by_shard[1]["error"] == "ValueError: shard 1 broke"
    ends = [by_shard[s]["result"]["end"] for s in (0, 2)]
    assert data["start"] >= max(ends), "afterany: consolidation starts after every shard ended"
    assert data["gpus"] is None, "the consolidation job asks for no GPU"
    assert all(by_shard[s]["result"]["gpus"] == "1" for s in (0, 2)), "the shards got theirs"
    wait_for_sacct(follow, "COMPLETED")


@pytest.mark.timeout(60)
def test_rejected_submission_is_one_line_and_submits_nothing(tmp_path: Path) -> None:
    cfg = _cfg(partition="no_such_partition")
    with pytest.raises(LaunchError, match="sbatch rejected the shard jobs: .*[Ii]nvalid partition") as err:
        launch_shards(cfg, [0, 1], 2, run_fn=job_env, folder=tmp_path)
    assert "\n" not in str(err.value)
    queued = subprocess.run(
        ["squeue", "-h", "-n", f"extract-{cfg.model.name}"], capture_output=True, text=True, timeout=30
    ).stdout
    assert queued.strip() == ""
