"""The local test cluster does what the launcher relies on: arrays, accounting of cancelled jobs,
USR2 preemption with submitit's checkpoint + requeue, and `afterany` dependencies (real Slurm, no mocks)."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

from tests.slurm.slurm_helpers import wait_for, wait_for_sacct

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# job functions below travel by value: the job's Python cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _executor(folder: Path, **params: object) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=2)
    ex.update_parameters(timeout_min=60, cpus_per_task=1, mem_gb=1, slurm_partition="debug", **params)
    return ex


def square_with_env(x: int) -> tuple[int, str]:
    import os

    return x * x, os.environ.get("SLURM_ARRAY_TASK_ID", "")


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def write_after(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).write_text("done")
    return path


def files_present(paths: list[str]) -> list[bool]:
    return [Path(p).is_file() for p in paths]


class CountingTask(submitit.helpers.Checkpointable):
    """Appends a line per start to a file; the first start waits to be preempted, a later one returns."""

    def __call__(self, log_path: str) -> int:
        log = Path(log_path)
        with log.open("a") as f:
            f.write("start\n")
        starts = len(log.read_text().splitlines())
        if starts == 1:
            time.sleep(600)
        return starts


def _result_within(job: submitit.Job, timeout_s: float) -> object:
    """job.result(), failing the test instead of hanging when it does not return in time."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(job.result)
        return future.result(timeout=timeout_s)


@pytest.mark.timeout(120)
def test_job_array_of_three_runs_and_returns(tmp_path: Path) -> None:
    jobs = _executor(tmp_path).map_array(square_with_env, [1, 2, 3])
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, f"one array expected, got {array_ids}"
    assert [job.job_id.split("_")[1] for job in jobs] == ["0", "1", "2"]
    results = [_result_within(job, 90) for job in jobs]
    assert results == [(1, "0"), (4, "1"), (9, "2")]
    wait_for_sacct([j.job_id for j in jobs], "COMPLETED", 30)


@pytest.mark.timeout(120)
def test_cancelled_job_is_seen_as_cancelled_without_hanging(tmp_path: Path) -> None:
    job = _executor(tmp_path).submit(sleep_then, 300, 1)
    wait_for(lambda: job.get_info(mode="force").get("State") == "RUNNING", 60, "the job to run")
    job.cancel()
    wait_for(lambda: job.done(force_check=True), 30, "submitit to see the cancelled job as done")
    assert job.state.startswith("CANCELLED")
    wait_for_sacct(job.job_id, "CANCELLED", 30)
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        _result_within(job, 60)


@pytest.mark.timeout(180)
def test_usr2_checkpoints_requeues_and_finishes(tmp_path: Path) -> None:
    log_path = tmp_path / "starts.txt"
    job = _executor(tmp_path / "logs", slurm_signal_delay_s=30).submit(CountingTask(), str(log_path))
    wait_for(lambda: log_path.is_file(), 60, "the first start of the checkpointable job")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
    assert _result_within(job, 150) == 2, "the requeued run is the second start"
    assert log_path.read_text().splitlines() == ["start", "start"]
    stdout = job.stdout() or ""
    assert "this job is preempted" in stdout and "Calling checkpoint method" in stdout
    wait_for_sacct(job.job_id, "COMPLETED", 30)


@pytest.mark.timeout(150)
def test_afterany_dependency_runs_after_the_array(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"out_{i}.txt") for i in range(2)]
    # one array task at a time leaves a CPU free: without the dependency the next job would start at once
    array = _executor(tmp_path / "logs", slurm_array_parallelism=1).map_array(write_after, paths, [3, 3])
    array_id = array[0].job_id.split("_")[0]
    follower = _executor(tmp_path / "logs", slurm_dependency=f"afterany:{array_id}").submit(
        files_present, paths
    )
    assert _result_within(follower, 120) == [True, True]
    assert [_result_within(job, 10) for job in array] == paths
