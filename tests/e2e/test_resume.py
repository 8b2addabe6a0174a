"""Runs that never lose work: SIGKILL + rerun, changed settings, overwrite, retries, locks, disk full."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import outputs
from pipeline.api import compose_config
from pipeline.outputs import ShardLock, file_sha256, read_kept, read_manifest, record_sha256
from pipeline.outputs import store as store_module
from pipeline.outputs.reader import scan
from pipeline.run import RunError
from pipeline.synth import write_video
from tests.helpers import fill_filesystem, run_config, run_extract, small_filesystem

BASE = (
    "model=slowfast_tiny",
    "model.checkpoint=random",
    "data=custom",
    "data.fps=30",
    "hardware.batch_size=2",
    "output.hdf5=false",
)


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    names = []
    for i in range(6):
        write_video(root / f"v{i}.mp4", seconds=1.0 + 0.1 * i, size=(64, 48), first_number=i * 10)
        names.append(f"v{i}.mp4")
    (root / "video_list.csv").write_text("\n".join(names) + "\n")
    return root


def manifest_of(out: Path) -> list[dict]:
    records, problems = read_manifest(out / "manifests" / "shard-0-of-1.jsonl")
    assert not problems
    return records


def kept_lines(out: Path) -> list[dict]:
    return read_kept(out / "manifests" / "shard-0-of-1.jsonl")


def features_of(out: Path) -> dict[str, np.ndarray]:
    """Every finished video's features, whatever the store, through the one reader."""
    return {video.key: video.load() for video in scan([out]).videos}


def record_intact(out: Path, record: dict) -> bool:
    """Whether a record's output bytes are what its manifest says (a feature file, or a packed record)."""
    if record.get("offset") is None:
        return file_sha256(out / record["output"]) == record["sha256"]
    return record_sha256(out / record["output"], record["offset"], record["size"]) == record["sha256"]


@pytest.mark.parametrize("store", ["files", "packed"])
def test_sigkill_midway_then_rerun_recomputes_only_the_rest(many_videos, tmp_path, store):
    out = tmp_path / "out"
    args = [
        *BASE,
        f"data.root={many_videos}",
        f"output_dir={out}",
        "data.stride=1",
        "hardware.batch_size=1",
        f"output.store={store}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.extract", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = out / "manifests" / "shard-0-of-1.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and sum('"ok"' in line for line in manifest.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {r["key"]: r for r in manifest_of(out) if r["status"] == "ok"}
    assert 2 <= len(finished) < 6, "the kill should land mid-run"
    mtimes = {k: (out / r["output"]).stat().st_mtime_ns for k, r in finished.items()}

    done = run_extract(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    records = manifest_of(out)
    newest = {r["key"]: r for r in records}
    for key, record in finished.items():
        assert newest[key] == record  # kept: no new record, its output not rewritten
        assert record_intact(out, record)
        if store == "files":
            assert (out / record["output"]).stat().st_mtime_ns == mtimes[key]
    rerun = records[len(finished) :]
    assert {r["key"] for r in rerun if r["status"] == "ok"} == {f"v{i}" for i in range(6)} - set(finished)
    (kept,) = kept_lines(out)
    assert kept["count"] == len(finished) and kept["reasons"] == {"done": len(finished)}
    assert not list(out.rglob("*.tmp-*"))
    if store == "packed":
        assert not (out / "features").exists() or not list((out / "features").iterdir())
        assert len(list((out / "packed").rglob("*.npk"))) == 1

    reference = tmp_path / "reference"
    full = run_extract(tmp_path, *args[:-2], f"output_dir={reference}")
    assert full.returncode == 0
    ours, theirs = features_of(out), features_of(reference)
    assert sorted(ours) == sorted(theirs) == [f"v{i}" for i in range(6)]
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def _cfg(root: Path, out: Path, *extra: str):
    return compose_config(
        "slowfast_tiny",
        [
            "model.checkpoint=random",
            f"data.root={root}",
            f"output_dir={out}",
            "data.fps=30",
            "output.hdf5=false",
            *extra,
        ],
    )


def test_changed_settings_overwrite_and_retry_rules(many_videos, tmp_path, caplog):
    out = tmp_path / "out"
    first = run_config(_cfg(many_videos, out))
    assert (first.ok, first.skipped) == (6, 0)
    again = run_config(_cfg(many_videos, out))
    assert (again.ok, again.skipped) == (0, 6)
    caplog.set_level("INFO")
    changed = run_config(_cfg(many_videos, out, "data.pad=edge"))
    assert changed.ok == 6 and "settings changed: pad" in caplog.text
    forced = run_config(_cfg(many_videos, out, "data.pad=edge", "output.overwrite=true"))
    assert forced.ok == 6


def test_failed_videos_retried_unless_told_not_to(tmp_path):
    root = tmp_path / "root"
    write_video(root / "good.mp4", seconds=0.5)
    (root / "bad.mp4").write_bytes(b"garbage")
    (root / "video_list.csv").write_text("good.mp4\nbad.mp4\n")
    out = tmp_path / "out"
    assert run_config(_cfg(root, out)).failed == 1
    retried = run_config(_cfg(root, out))
    assert (retried.failed, retried.skipped) == (1, 1)
    no_retry = run_config(_cfg(root, out, "output.retry_failed=false"))
    assert (no_retry.failed, no_retry.skipped) == (0, 2)
    last = manifest_of(out)[-1]  # no new record: the failure stands, counted on the run's kept line
    assert last["key"] == "bad" and last["status"] == "failed"
    assert kept_lines(out)[-1]["reasons"] == {"done": 1, "failed before; output.retry_failed=false": 1}


def test_corrupt_manifest_line_is_reported_and_that_video_recomputed(many_videos, tmp_path, caplog):
    out = tmp_path / "out"
    run_config(_cfg(many_videos, out))
    manifest = out / "manifests" / "shard-0-of-1.jsonl"
    lines = manifest.read_text().splitlines()
    lines[2] = lines[2][:40]  # a torn line (v2's record)
    manifest.write_text("\n".join(lines) + "\n")
    caplog.set_level("INFO")
    summary = run_config(_cfg(many_videos, out))
    assert f"{manifest} line 3" in caplog.text
    assert (summary.ok, summary.skipped) == (1, 5)


def test_stale_temp_files_are_cleaned_and_never_count(many_videos, tmp_path):
    out = tmp_path / "out"
    run_config(_cfg(many_videos, out))
    stale = out / "features" / ".v9_8.npy.tmp-abc123"
    stale.write_bytes(b"half a file")
    summary = run_config(_cfg(many_videos, out))
    assert summary.skipped == 6 and not stale.exists()


def test_second_process_on_the_same_shard_refuses_to_start(many_videos, tmp_path):
    out = tmp_path / "out"
    with ShardLock(out / "locks" / "shard-0-of-1.lock"):
        done = run_extract(tmp_path, *BASE, f"data.root={many_videos}", f"output_dir={out}")
    assert done.returncode == 2
    assert "another extraction is writing this shard" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_disk_full_fails_the_video_stops_the_run_and_a_rerun_continues(many_videos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_save = outputs.save_array
    calls = {"n": 0}

    def full_disk(path, array, durable=True):
        calls["n"] += 1
        if calls["n"] == 3:
            raise outputs.OutputError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        real_save(path, array, durable)

    monkeypatch.setattr(store_module, "save_array", full_disk)  # the files store's writer
    with pytest.raises(RunError, match="No space left on device.*rerun"):
        run_config(_cfg(many_videos, out))
    ok = [r for r in manifest_of(out) if r["status"] == "ok"]
    assert len(ok) == 2
    assert len(list((out / "features").glob("*.npy"))) == 2  # nothing partial
    monkeypatch.setattr(store_module, "save_array", real_save)
    summary = run_config(_cfg(many_videos, out))
    assert (summary.ok, summary.skipped) == (4, 2)


@pytest.mark.parametrize("store", ["files", "packed"])
def test_disk_full_on_a_real_filesystem_prints_one_line_and_a_rerun_completes(many_videos, tmp_path, store):
    with small_filesystem(tmp_path / "small", "1m") as small:
        out = small / "out"
        args = (*BASE, f"data.root={many_videos}", f"output_dir={out}", f"output.store={store}")
        # room for the first videos only (a packed video takes its bytes, a file at least a block)
        ballast = fill_filesystem(small, leave=(40 if store == "files" else 16) * 1024)
        done = run_extract(tmp_path, *args)
        text = done.stdout + done.stderr
        assert done.returncode == 2, text[-2000:]
        assert "Traceback" not in text
        (line,) = [line for line in text.splitlines() if "No space left on device" in line]
        assert f"stopping: cannot write {out}/" in line or f"stopping: cannot append to {out}/" in line
        assert "a rerun of the same command continues from here" in line
        ok = {r["key"]: r for r in manifest_of(out) if r["status"] == "ok"}
        assert 0 < len(ok) < 6, "the disk should fill mid-run"
        assert not list(out.rglob("*.tmp-*"))
        if store == "files":  # nothing partial: each file whole
            kept = sorted(p.name for p in (out / "features").iterdir())
            assert kept == sorted(f"{k}_8{ext}" for k in ok for ext in (".json", ".npy"))
        else:  # nothing partial: the part ends where its last record does
            (part,) = (out / "packed").rglob("*.npk")
            assert part.stat().st_size == max(r["offset"] + r["size"] for r in ok.values())
        assert all(record_intact(out, r) for r in ok.values())

        ballast.unlink()  # space returns
        again = run_extract(tmp_path, *args)
        assert again.returncode == 0, again.stderr[-2000:]
        newest = {r["key"]: r for r in manifest_of(out)}
        assert all(newest[key] == record for key, record in ok.items())  # kept as they were
        assert {k for k, r in newest.items() if r["status"] == "ok"} == {f"v{i}" for i in range(6)}
        assert kept_lines(out)[-1]["count"] == len(ok)


def test_dry_run_prints_the_plan_and_runs_nothing(many_videos, tmp_path):
    out = tmp_path / "out"
    run_config(_cfg(many_videos, out))
    (out / "features" / "v1_8.npy").unlink()
    done = run_extract(tmp_path, *BASE, f"data.root={many_videos}", f"output_dir={out}", "dry_run=true")
    assert done.returncode == 0, done.stderr
    assert f"output dir: {out}" in done.stdout
    assert "run  v1.mp4  (output missing: features/v1_8.npy)" in done.stdout
    assert "skip v0.mp4  (done)" in done.stdout
    assert "plan: 1 run, 5 skip" in done.stdout
    assert not (out / "features" / "v1_8.npy").exists()


def test_every_invocation_records_a_run(many_videos, tmp_path):
    out = tmp_path / "out"
    done = run_extract(tmp_path, *BASE, f"data.root={many_videos}", f"output_dir={out}")
    assert done.returncode == 0
    (record_file,) = (out / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["totals"] == {"ok": 6, "failed": 0, "skipped": 0, "rows": record["totals"]["rows"]}
    assert record["config"]["model"]["name"] == "slowfast_tiny"
    assert record["environment"]["torch"] and record["environment"]["av"]
    assert Path(record["hydra_run_dir"], ".hydra", "config.yaml").is_file()
    assert any(arg.startswith("output_dir=") for arg in record["command"])
