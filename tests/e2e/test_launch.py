"""pipeline.launch without a cluster: real submitit LocalExecutor jobs, GPU assignment checked through the
CUDA_VISIBLE_DEVICES each job sees, and the Slurm submission through stand-in sbatch/squeue/sacct scripts
(the real cluster is exercised in tests/slurm)."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest
import submitit
from submitit.core.utils import JobPaths, cloudpickle_dump

from pipeline.config import HardwareConfig
from pipeline.hardware import usable_cpus
from pipeline.launch import (
    LaunchError,
    ShardOutcome,
    ShardProgress,
    ShardTask,
    WaitOptions,
    collect_outcome,
    expand_ids,
    launch_shards,
    local_gpus,
    local_slots,
    make_executor,
    slurm_states,
    tail_lines,
)

# run functions travel to the jobs by value: the job's Python cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = WaitOptions(poll_s=0.2, log_every_s=0.0, lost_after_s=1.0, result_grace_s=1.0, vanish_after_s=1.0)


def _cfg(**hw: object) -> SimpleNamespace:
    return SimpleNamespace(hardware=HardwareConfig(**hw), model=SimpleNamespace(name="tiny"))


def report_env(cfg: object, shard: int, num_shards: int) -> dict:
    started = time.time()
    time.sleep(0.5)
    return {
        "shard": shard,
        "of": num_shards,
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "start": started,
        "end": time.time(),
    }


def fail_on_one(cfg: object, shard: int, num_shards: int) -> dict:
    if shard == 1:
        print("about to fail", file=sys.stderr)
        raise ValueError(f"bad shard {shard}")
    return {"shard": shard}


# --- local launcher: real LocalExecutor jobs ----------------------------------------------------


def test_local_cpu_shards_run_as_jobs_and_return_in_order(tmp_path: Path) -> None:
    cfg = _cfg(launcher="local", device="cpu", threads=1, timeout_min=5)
    result = launch_shards(cfg, [2, 0, 1], 3, run_fn=report_env, folder=tmp_path, wait_options=FAST)
    assert result.waited and result.launcher == "local" and not result.failed
    assert [o.shard for o in result.outcomes] == [0, 1, 2]
    assert [result.results[s]["shard"] for s in range(3)] == [0, 1, 2]
    assert {r["of"] for r in result.results.values()} == {3}
    assert len({r["pid"] for r in result.results.values()} | {os.getpid()}) == 4, "one process per shard"
    assert {r["gpus"] for r in result.results.values()} == {""}, "CPU jobs see no GPU"
    assert len(set(result.job_ids.values())) == 3
    # at most as many concurrent jobs as CPU slots
    slots = len(local_slots(cfg.hardware))
    spans = [(r["start"], r["end"]) for r in result.results.values()]
    for start, _ in spans:
        assert sum(s <= start < e for s, e in spans) <= slots


def test_local_gpus_one_job_per_gpu_with_its_own_device(tmp_path: Path) -> None:
    cfg = _cfg(launcher="local", device="cuda", gpus=[3, 5], timeout_min=5)
    result = launch_shards(cfg, [0, 1, 2, 3], 4, run_fn=report_env, folder=tmp_path, wait_options=FAST)
    assert not result.failed
    seen = {s: r["gpus"] for s, r in result.results.items()}
    assert seen[0] == "3" and seen[1] == "5", seen  # first wave: one shard per GPU, in order
    assert set(seen.values()) == {"3", "5"}
    for gpu in ("3", "5"):  # never two jobs on one GPU at the same time
        spans = sorted((r["start"], r["end"]) for r in result.results.values() if r["gpus"] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


def test_local_failed_shard_is_reported_with_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(launcher="local", device="cpu", threads=1, timeout_min=5)
    with caplog.at_level(logging.ERROR, logger="pipeline.launch"):
        result = launch_shards(cfg, [0, 1], 2, run_fn=fail_on_one, folder=tmp_path, wait_options=FAST)
    assert sorted(result.results) == [0]
    (bad,) = result.failed
    assert bad.shard == 1 and bad.job_id == result.job_ids[1]
    assert bad.error == "ValueError: bad shard 1"
    assert bad.stderr is not None and bad.stderr.is_file() and bad.stdout is not None
    assert "about to fail" in bad.stderr.read_text()
    tail = bad.stderr_tail.splitlines()
    assert len(tail) == 20 and tail[-1] == "ValueError: bad shard 1"
    report = bad.describe()
    assert f"job {bad.job_id}" in report and str(bad.stderr) in report and "ValueError: bad shard 1" in report
    assert "shard 1 FAILED" in caplog.text


def test_no_shards_submits_nothing(tmp_path: Path) -> None:
    result = launch_shards(_cfg(launcher="local"), [], 2, run_fn=report_env, folder=tmp_path / "logs")
    assert result.outcomes == [] and result.job_ids == {}
    assert not (tmp_path / "logs").exists()


def test_inprocess_launcher_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="hardware.launcher=inprocess"):
        launch_shards(_cfg(launcher="inprocess"), [0], 1, run_fn=report_env, folder=tmp_path)


# --- device and slot resolution -------------------------------------------------------------------


def test_local_gpus_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert local_gpus(HardwareConfig(device="cpu", gpus=[1])) == []
    assert local_gpus(HardwareConfig(device="cuda", gpus=[4, 2])) == [4, 2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert local_gpus(HardwareConfig(device="cuda")) == [2, 7]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b")
    with pytest.raises(LaunchError, match="hardware.gpus"):
        local_gpus(HardwareConfig(device="cuda"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(LaunchError, match="no GPU is visible"):
        local_gpus(HardwareConfig(device="cuda"))
    with pytest.raises(LaunchError, match="empty list"):
        local_gpus(HardwareConfig(device="cuda", gpus=[]))


def test_local_cpu_slots_follow_threads() -> None:
    cpus = usable_cpus()
    assert local_slots(HardwareConfig(device="cpu", threads=1)) == [None] * cpus
    assert local_slots(HardwareConfig(device="cpu", threads=None)) == [None]
    assert local_slots(HardwareConfig(device="cpu", threads=cpus * 4)) == [None]
    assert local_slots(HardwareConfig(device="cuda", gpus=[0, 1])) == [0, 1]


def test_local_executor_gets_an_explicit_timeout(tmp_path: Path) -> None:
    executor = make_executor(HardwareConfig(launcher="local", timeout_min=10080, signal_delay_s=7), tmp_path)
    assert isinstance(executor, submitit.LocalExecutor)
    assert executor.parameters["timeout_min"] == 10080 and executor.parameters["signal_delay_s"] == 7


# --- Slurm submission through stand-in commands ---------------------------------------------------

SBATCH_OK = """#!/bin/bash
n=$(( $(cat "$FAKE_STATE/count" 2>/dev/null || echo 41) + 1 ))
echo $n > "$FAKE_STATE/count"
cp "$1" "$FAKE_STATE/sbatch_$n.sh"
echo "Submitted batch job $n"
"""
SBATCH_REJECT = """#!/bin/bash
echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2
exit 1
"""


def _fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> Path:
    """A PATH holding only the given stand-in commands (plus the basics bash scripts need)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir(parents=True)
    state.mkdir(parents=True)
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_STATE", str(state))
    return state


def test_slurm_without_sbatch_fails_in_one_line_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cfg = _cfg(launcher="slurm")
    with pytest.raises(
        LaunchError, match=r"^hardware.launcher=slurm: sbatch, srun, sacct not found on PATH"
    ) as err:
        launch_shards(cfg, [0, 1], 2, run_fn=report_env, folder=tmp_path / "logs")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "logs").exists()


def test_slurm_parameters_reach_the_sbatch_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _fake_path(tmp_path, monkeypatch, sbatch=SBATCH_OK, srun="#!/bin/sh\n", sacct="#!/bin/sh\n")
    cfg = _cfg(
        launcher="slurm",
        wait=False,
        partition="gpu-p",
        account="proj1",
        qos="high",
        constraint="a100",
        timeout_min=90,
        gpus_per_node=2,
        cpus_per_task=6,
        mem_gb=8,
        array_parallelism=2,
        additional_parameters={"exclusive": True, "comment": "sf"},
        setup=["module load cuda/12"],
        signal_delay_s=77,
    )
    result = launch_shards(
        cfg,
        [0, 2, 5],
        6,
        run_fn=report_env,
        folder=tmp_path / "logs",
        consolidate_fn=lambda cfg, outcomes: None,
    )
    assert not result.waited and result.outcomes == []
    assert result.job_ids == {0: "42_0", 2: "42_1", 5: "42_2"} and result.array_id == "42"
    assert result.consolidate_job_id == "43"
    array = (state / "sbatch_42.sh").read_text()
    for flag in (
        "--partition=gpu-p",
        "--account=proj1",
        "--qos=high",
        "--constraint=a100",
        "--time=90",
        "--gpus-per-node=2",
        "--cpus-per-task=6",
        "--mem=8GB",
        "--array=0-2%2",
        "--exclusive",
        "--comment=sf",
        "--signal=USR2@77",
        "--job-name=extract-tiny",
        "--nodes=1",
        "--ntasks-per-node=1",
    ):
        assert f"#SBATCH {flag}\n" in array, flag
    assert "module load cuda/12" in array
    follow = (state / "sbatch_43.sh").read_text()
    assert "#SBATCH --dependency=afterany:42\n" in follow
    assert "--gpus-per-node" not in follow and "#SBATCH --array" not in follow
    assert "#SBATCH --job-name=extract-tiny-consolidate\n" in follow
    # the array tasks carry the shard indices
    jobs = [submitit.SlurmJob(tmp_path / "logs", f"42_{i}") for i in range(3)]
    assert [job.submission().args[1:] for job in jobs] == [(0, 6), (2, 6), (5, 6)]
    assert isinstance(jobs[0].submission().function, ShardTask)


def test_slurm_rejection_is_one_line_with_sbatch_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_path(tmp_path, monkeypatch, sbatch=SBATCH_REJECT, srun="#!/bin/sh\n", sacct="#!/bin/sh\n")
    with pytest.raises(LaunchError, match="sbatch rejected the shard jobs: .*Invalid account") as err:
        launch_shards(_cfg(launcher="slurm"), [0, 1], 2, run_fn=report_env, folder=tmp_path / "logs")
    assert "\n" not in str(err.value)


@pytest.mark.timeout(20)
def test_waiting_marks_jobs_unknown_to_slurm_as_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # squeue and sacct answer but know nothing about the jobs: the wait must end, not hang
    _fake_path(
        tmp_path, monkeypatch, sbatch=SBATCH_OK, srun="#!/bin/sh\n", sacct="#!/bin/sh\n", squeue="#!/bin/sh\n"
    )
    result = launch_shards(
        _cfg(launcher="slurm"), [0, 1], 2, run_fn=report_env, folder=tmp_path / "logs", wait_options=FAST
    )
    assert [o.state for o in result.outcomes] == ["LOST (never listed)"] * 2
    assert all(o.error == "never listed by squeue or sacct" for o in result.failed)


@pytest.mark.timeout(15)
def test_waiting_sees_a_task_missing_from_its_listed_array_as_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a pending array task cancelled before it ran vanishes from squeue and sacct, its siblings stay
    squeue = '#!/bin/sh\nprintf "42_0|COMPLETED\\n"\n'
    _fake_path(
        tmp_path, monkeypatch, sbatch=SBATCH_OK, srun="#!/bin/sh\n", sacct="#!/bin/sh\n", squeue=squeue
    )
    folder = tmp_path / "logs"
    folder.mkdir()
    cloudpickle_dump(("success", "done"), JobPaths(folder, "42_0", 0).result_pickle)
    result = launch_shards(
        _cfg(launcher="slurm"), [0, 1], 2, run_fn=report_env, folder=folder, wait_options=FAST
    )
    assert [o.state for o in result.outcomes] == ["COMPLETED", "CANCELLED"]
    assert result.results == {0: "done"}
    assert result.failed[0].error == "cancelled before it started (Slurm keeps no record of it)"


def test_waiting_reads_results_of_completed_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squeue = '#!/bin/sh\nprintf "42_0|COMPLETED\\n42_1|CANCELLED by 0\\n"\n'
    _fake_path(
        tmp_path, monkeypatch, sbatch=SBATCH_OK, srun="#!/bin/sh\n", sacct="#!/bin/sh\n", squeue=squeue
    )
    folder = tmp_path / "logs"
    folder.mkdir()
    cloudpickle_dump(("success", {"shard": 0, "ok": 3}), JobPaths(folder, "42_0", 0).result_pickle)
    result = launch_shards(
        _cfg(launcher="slurm"), [0, 1], 2, run_fn=report_env, folder=folder, wait_options=FAST
    )
    assert result.results == {0: {"shard": 0, "ok": 3}}
    (cancelled,) = result.failed
    assert (cancelled.shard, cancelled.job_id, cancelled.state) == (1, "42_1", "CANCELLED")


def test_slurm_states_merges_squeue_and_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squeue = '#!/bin/sh\nprintf "7_0|RUNNING\\n7_1|PENDING\\n99|RUNNING\\n"\n'
    sacct = '#!/bin/sh\necho "$@" > "$FAKE_STATE/sacct_args"\nprintf "7_[2-3%%2]|PENDING\\n8|COMPLETED\\n"\n'
    state = _fake_path(tmp_path, monkeypatch, squeue=squeue, sacct=sacct)
    states = slurm_states(["7_0", "7_1", "7_2", "7_3", "8", "9"])
    assert states == {
        "7_0": "RUNNING",
        "7_1": "PENDING",
        "7_2": "PENDING",
        "7_3": "PENDING",
        "8": "COMPLETED",
    }
    assert "-j 7,8,9" in (state / "sacct_args").read_text()
    _fake_path(tmp_path / "x", monkeypatch, squeue="#!/bin/sh\nexit 1\n", sacct="#!/bin/sh\nexit 1\n")
    assert slurm_states(["7_0"]) is None, "no information at all is not 'unknown jobs'"


def test_expand_ids() -> None:
    assert expand_ids("12_[3-5%2]") == ["12_3", "12_4", "12_5"]
    assert expand_ids("12_7") == ["12_7"]
    assert expand_ids("13") == ["13"]


# --- small pieces ---------------------------------------------------------------------------------


def test_shard_task_runs_and_checkpoints_itself() -> None:
    task = ShardTask(fail_on_one)
    assert task(None, 0, 2) == {"shard": 0}
    again = task.checkpoint("cfg", 3, 4)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is task and again.args == ("cfg", 3, 4)


def test_collect_outcome_without_result(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "5_1", 0)
    paths.stderr.parent.mkdir(parents=True, exist_ok=True)
    paths.stderr.write_text("".join(f"line {i}\n" for i in range(30)))
    outcome = collect_outcome(1, "5_1", tmp_path, "TIMEOUT")
    assert not outcome.ok and outcome.error == "the job ended (TIMEOUT) without a result"
    assert outcome.stderr_tail.splitlines() == [f"line {i}" for i in range(10, 30)]


def test_tail_lines(tmp_path: Path) -> None:
    assert tail_lines(tmp_path / "missing") == ""
    path = tmp_path / "x.txt"
    path.write_text("a\nb\nc\n")
    assert tail_lines(path, 2) == "b\nc"


def test_progress_logs_changes_without_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    progress = ShardProgress(4, every_s=3600)
    progress.bar = None  # as on a Slurm log / CI pipe
    with caplog.at_level(logging.INFO, logger="pipeline.launch"):
        progress.update(0, 2, 2, 0)
        progress.update(0, 2, 2, 0)  # unchanged: no new line
        progress.update(3, 0, 0, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "shards: 0/4 finished, 2 running, 2 pending, 0 failed",
        "shards: 3/4 finished, 0 running, 0 pending, 1 failed",
    ]


def test_outcome_describe_lists_everything() -> None:
    outcome = ShardOutcome(
        2,
        "9_2",
        "FAILED",
        ok=False,
        error="RunError: disk full",
        stdout=Path("/l/o"),
        stderr=Path("/l/e"),
        stderr_tail="Traceback\nRunError: disk full",
    )
    text = outcome.describe()
    assert text.splitlines()[0] == "shard 2 FAILED (job 9_2, state FAILED): RunError: disk full"
    assert "/l/o" in text and "/l/e" in text and "    RunError: disk full" in text
    assert dataclasses.asdict(outcome)["job_id"] == "9_2"


# --- the real pipeline through the local launcher -------------------------------------------------


def test_extract_cli_with_local_workers_then_rerun_skips_complete_shards(tmp_path: Path) -> None:
    from tests.helpers import run_extract

    args = (
        "model=slowfast_tiny",
        "model.checkpoint=random",
        "data=demo",
        "hardware=local_gpus",
        "hardware.device=cpu",
        "hardware.num_shards=2",
        "hardware.threads=1",
        f"output_dir={tmp_path / 'out'}",
    )
    first = run_extract(tmp_path, *args, timeout=240)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "running 2 shard(s) of 2 locally" in log and "summary: 4 ok, 0 failed, 0 skipped" in first.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "manifests").glob("*.jsonl")) == [
        "shard-0-of-2.jsonl",
        "shard-1-of-2.jsonl",
    ]
    again = run_extract(tmp_path, *args, timeout=240)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert "2 shard(s) have nothing left to do: [0, 1]" in log and "locally" not in log
    assert "summary: 0 ok, 0 failed, 4 skipped" in again.stdout


def report_cpus(cfg: object, shard: int, num_shards: int) -> dict:
    return {"cpus": usable_cpus(), "affinity": sorted(os.sched_getaffinity(0))}


def test_local_gpu_jobs_each_get_their_share_of_the_cpus(tmp_path: Path) -> None:
    cfg = _cfg(launcher="local", device="cuda", gpus=[3, 5], timeout_min=5)
    result = launch_shards(cfg, [0, 1], 2, run_fn=report_cpus, folder=tmp_path, wait_options=FAST)
    assert not result.failed
    share = max(1, usable_cpus() // 2)
    assert [result.results[s]["cpus"] for s in (0, 1)] == [share, share]
    assert all(len(result.results[s]["affinity"]) == share for s in (0, 1))
