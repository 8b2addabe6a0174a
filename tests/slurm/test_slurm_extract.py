"""End to end on the real local Slurm cluster through `python -m pipeline.extract` (tiny model, random
weights): a 3-shard array equals the in-process run, a USR2-preempted shard resumes from its manifest,
a cancelled shard fails the run with its logs and a rerun finishes only that shard, wait=false leaves
the consolidation to a dependent job, and a Hydra multirun goes through hydra/launcher=submitit_slurm."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import synth
from pipeline.outputs import read_manifest
from pipeline.outputs.manifest import KEPT_KIND
from tests.helpers import run_extract
from tests.slurm.slurm_helpers import sacct_state, wait_for, wait_for_sacct

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

MODEL = ("model=slowfast_tiny", "model.checkpoint=random")
SLURM = (
    "hardware=slurm",
    "hardware.device=cpu",
    "hardware.gpus_per_node=0",
    "hardware.cpus_per_task=1",
    "hardware.mem_gb=1",
    "hardware.timeout_min=60",
    "hardware.partition=debug",
    "hardware.threads=1",
    "hardware.signal_delay_s=30",
)


def _log(done: subprocess.CompletedProcess) -> str:
    return f"{done.stdout}\n{done.stderr}"


def _features(out: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(out / "features")): np.load(p) for p in sorted((out / "features").rglob("*.npy"))
    }


def _run_record(out: Path) -> dict:
    (record,) = sorted((out / "runs").glob("*.json"))
    return json.loads(record.read_text())


def _start(cwd: Path, *overrides: str) -> subprocess.Popen:
    """The CLI in the background (its output in cwd/cli.log)."""
    log = (cwd / "cli.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.extract", *overrides],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _submitted_job(logs: Path, timeout_s: float = 60) -> str:
    """The job (or array) id the launcher submitted, from submitit's folder."""
    wait_for(lambda: any(logs.glob("*_submission.sh")), timeout_s, f"a submission in {logs}")
    (script,) = logs.glob("*_submission.sh")
    return script.name.split("_")[0]


def _manifest_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records, _ = read_manifest(path)
    return records


@pytest.fixture(scope="module")
def slow_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 8-second videos: at stride 1 (~1 s each) a shard of them can be signalled mid-way."""
    root = tmp_path_factory.mktemp("slow_videos")
    names = [f"v{i}.mp4" for i in range(8)]
    for name in names:
        synth.write_video(root / name, codec="libx264", size=(64, 48), fps=30, seconds=8)
    (root / "video_list.csv").write_text("path\n" + "\n".join(names) + "\n")
    return root


def _slow_args(root: Path, out: Path) -> tuple[str, ...]:
    return (
        *MODEL,
        "data=custom",
        f"data.root={root}",
        "data.fps=30",
        "data.stride=1",
        f"output_dir={out}",
        "output.hdf5=true",
        *SLURM,
    )


@pytest.mark.timeout(300)
def test_three_shard_array_equals_the_in_process_run(tmp_path: Path) -> None:
    local = run_extract(tmp_path, *MODEL, "data=demo", f"output_dir={tmp_path / 'local'}")
    assert local.returncode == 0, _log(local)[-3000:]
    out = tmp_path / "slurm"
    done = run_extract(tmp_path, *MODEL, "data=demo", f"output_dir={out}", *SLURM, "hardware.num_shards=3")
    assert done.returncode == 0, _log(done)[-3000:]
    assert re.search(r"submitted 3 shard\(s\) of 3 as Slurm job \d+", _log(done))
    assert "summary: 4 ok, 0 failed, 0 skipped" in done.stdout
    expected, got = _features(tmp_path / "local"), _features(out)
    assert sorted(got) == sorted(expected) and len(got) == 4
    for name, values in expected.items():
        assert got[name].shape == values.shape, name
        np.testing.assert_allclose(got[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
    assert sorted(p.name for p in (out / "manifests").glob("*.jsonl")) == [
        f"shard-{i}-of-3.jsonl" for i in range(3)
    ]
    assert (out / "features.h5").is_file()
    record = _run_record(out)
    assert sorted(s["shard"] for s in record["shards"]) == [0, 1, 2] and record["totals"]["ok"] == 4
    assert len(list((out / "slurm_logs").glob("*_log.err"))) == 3


@pytest.mark.timeout(300)
def test_usr2_preempted_shard_requeues_and_resumes_from_its_manifest(
    tmp_path: Path, slow_videos: Path
) -> None:
    out = tmp_path / "out"
    cli = _start(tmp_path, *_slow_args(slow_videos, out), "hardware.num_shards=1")
    try:
        job = _submitted_job(out / "slurm_logs")
        manifest = out / "manifests" / "shard-0-of-1.jsonl"
        wait_for(lambda: any(r["status"] == "ok" for r in _manifest_lines(manifest)), 120, "the first video")
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        status = cli.wait(timeout=240)
    finally:
        if cli.poll() is None:
            cli.kill()
    log = (tmp_path / "cli.log").read_text()
    assert status == 0, log[-3000:]
    records = _manifest_lines(manifest)
    ok = [r["key"] for r in records if r["status"] == "ok"]
    assert sorted(ok) == [f"v{i}" for i in range(8)], "every video extracted exactly once"
    # the requeued run kept what the first one finished: one `kept` line (not a line per video), its count
    # the ok records written before it
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    kept = [i for i, line in enumerate(lines) if line.get("kind") == KEPT_KIND]
    assert len(kept) == 1, lines
    skipped = lines[kept[0]]["count"]
    done_before = sum(1 for line in lines[: kept[0]] if line.get("status") == "ok")
    assert 0 < skipped == done_before < 8, (skipped, done_before)
    assert f"summary: {8 - skipped} ok, 0 failed, {skipped} skipped" in log
    job_out = (out / "slurm_logs" / f"{job}_0_log.out").read_text()
    assert "this job is preempted" in job_out and job_out.count("Starting with JobEnvironment") == 2
    assert len(_features(out)) == 8 and (out / "features.h5").is_file()
    wait_for_sacct(job, "COMPLETED")


@pytest.mark.timeout(300)
def test_cancelled_shard_fails_the_run_and_a_rerun_finishes_it(tmp_path: Path, slow_videos: Path) -> None:
    out = tmp_path / "out"
    # one task at a time: shard 1 is still pending behind shard 0 when it is cancelled
    args = (*_slow_args(slow_videos, out), "hardware.num_shards=2", "hardware.array_parallelism=1")
    cli = _start(tmp_path, *args)
    try:
        array = _submitted_job(out / "slurm_logs")
        subprocess.run(["scancel", f"{array}_1"], check=True, timeout=30)
        status = cli.wait(timeout=240)
    finally:
        if cli.poll() is None:
            cli.kill()
    log = (tmp_path / "cli.log").read_text()
    assert status == 2, log[-3000:]
    err = out / "slurm_logs" / f"{array}_1_0_log.err"
    # recorded as CANCELLED, or (a pending array task) not recorded at all: both read as cancelled
    assert f"shard 1 FAILED (job {array}_1, state CANCELLED): " in log
    assert f"1 shard(s) failed: shard 1 (job {array}_1, CANCELLED, stderr {err})" in log
    assert "Traceback" not in log
    assert not (out / "features.h5").exists()
    again = run_extract(tmp_path, *args, timeout=240)
    assert again.returncode == 0, _log(again)[-3000:]
    assert "1 shard(s) have nothing left to do: [0]" in _log(again)
    assert "submitted 1 shard(s) of 2" in _log(again)
    assert len(_features(out)) == 8 and (out / "features.h5").is_file()


@pytest.mark.timeout(300)
def test_wait_false_returns_and_a_dependent_job_consolidates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_extract(
        tmp_path,
        *MODEL,
        "data=demo",
        f"output_dir={out}",
        *SLURM,
        "hardware.num_shards=2",
        "hardware.wait=false",
        timeout=60,  # returns right after submitting, not after the jobs
    )
    assert done.returncode == 0, _log(done)[-3000:]
    found = re.search(r"shards = job (\d+), consolidation = job (\d+)", _log(done))
    assert found, _log(done)[-3000:]
    array, follow = found.groups()
    if (out / "features.h5").exists():  # only the consolidation job may have written it by now
        wait_for_sacct(follow, "COMPLETED")
    wait_for(
        lambda: sacct_state(follow) in ("COMPLETED", "FAILED", "CANCELLED"), 180, "the consolidation job"
    )
    assert sacct_state(follow) == "COMPLETED", (out / "slurm_logs" / f"{follow}_0_log.err").read_text()[
        -3000:
    ]
    wait_for_sacct([f"{array}_{i}" for i in range(2)], "COMPLETED")
    assert (out / "features.h5").is_file()
    record = _run_record(out)
    assert record["totals"]["ok"] == 4 and sorted(s["shard"] for s in record["shards"]) == [0, 1]
    assert "summary: 4 ok, 0 failed, 0 skipped" in (out / "slurm_logs" / f"{follow}_0_log.out").read_text()


@pytest.mark.timeout(300)
def test_multirun_through_the_submitit_slurm_launcher(tmp_path: Path) -> None:
    # made up front: sweep jobs that each generate the demo set at once would race on its frame folder
    synth.make_demo_videos(tmp_path / "outputs" / "demo_videos")
    done = run_extract(
        tmp_path,
        "-m",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.timeout_min=60",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        *MODEL,
        "data=demo",
        "hardware.threads=1",
        "data.stride=16,32",
        timeout=280,
    )
    assert done.returncode == 0, _log(done)[-3000:]
    h5s = sorted((tmp_path / "outputs" / "demo").glob("*/features.h5"))
    assert len(h5s) == 2, _log(done)[-3000:]
    strides = sorted(_run_record(h5.parent)["config"]["data"]["stride"] for h5 in h5s)
    assert strides == [16, 32]
    submitit_dir = tmp_path / "outputs" / "hydra" / "multirun"
    (script,) = submitit_dir.rglob(".submitit/*/*_submission.sh")
    assert "#SBATCH --array=0-1" in script.read_text(), "one array task per sweep point"
    assert len(list(submitit_dir.rglob(".submitit/*/*_result.pkl"))) == 2
