"""Atomic writes, manifests, resume decisions and shard locks (pipeline.outputs)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pipeline import outputs
from tests.helpers import fill_filesystem, small_filesystem


def test_save_array_is_atomic_and_leaves_no_temp(tmp_path):
    target = tmp_path / "features" / "a_32.npy"
    outputs.save_array(target, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(np.load(target), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert [p.name for p in target.parent.iterdir()] == ["a_32.npy"]


def test_failed_write_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.npy"
    outputs.save_array(target, np.ones(3))

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        outputs.atomic_write(target, broken)
    assert np.array_equal(np.load(target), np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_read_only_dir_is_an_output_error(tmp_path):
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
        # root ignores permissions: simulate with a path whose parent is a file
        (tmp_path / "file").write_text("x")
        with pytest.raises(OSError):
            outputs.save_array(tmp_path / "file" / "y.npy", np.ones(2))
    else:  # pragma: no cover - non-root
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(outputs.OutputError):
            outputs.save_array(ro / "y.npy", np.ones(2))


def test_clean_stale_temps_removes_only_temps(tmp_path):
    features = tmp_path / "features" / "P01"
    features.mkdir(parents=True)
    (features / "a_32.npy").write_bytes(b"x")
    (features / ".a_32.npy.tmp-abc").write_bytes(b"half")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / ".shard-0-of-1.jsonl.tmp-x").write_text("")
    assert outputs.clean_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in features.iterdir()) == ["a_32.npy"]


def test_clean_stale_temps_keeps_the_temps_of_live_writers(tmp_path):
    """A shard starting beside a running one must not delete the other's file in the middle of a write."""
    features = tmp_path / "features"
    features.mkdir()
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    live_here = features / f".a_8.npy{outputs.temp_owner()}x1y2"  # this process: alive
    dead_here = features / f".b_8.npy{outputs.TEMP_MARK}{host}-{int(dead.stdout)}-abc"
    other_fresh = features / f".c_8.npy{outputs.TEMP_MARK}other-node-7-abc"
    other_old = features / f".d_8.npy{outputs.TEMP_MARK}other-node-8-abc"
    for temp in (live_here, dead_here, other_fresh, other_old):
        temp.write_bytes(b"half")
    old = time.time() - outputs.FOREIGN_TEMP_MAX_AGE_S - 60
    os.utime(other_old, (old, old))
    assert outputs.clean_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in features.iterdir()) == sorted([live_here.name, other_fresh.name])
    with outputs.atomic_file(features / "e_8.npy") as temp:  # what atomic writes name their temps
        assert temp.name.startswith(f".e_8.npy{outputs.temp_owner()}")
        assert outputs.clean_stale_temps(tmp_path) == 0 and temp.exists()
        temp.write_bytes(b"whole")
    assert (features / "e_8.npy").read_bytes() == b"whole"


def test_manifest_append_and_read_reports_bad_lines(tmp_path):
    manifest = tmp_path / "manifests" / "shard-0-of-1.jsonl"
    outputs.append_record(manifest, {"key": "a", "path": "a.mp4", "status": "ok", "time": "1"})
    with open(manifest, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"foreign": True}) + "\n")
    outputs.append_record(manifest, {"key": "b", "path": "b.mp4", "status": "failed", "time": "2"})
    records, problems = outputs.read_manifest(manifest)
    assert [r["key"] for r in records] == ["a", "b"]
    assert [(p.line, p.reason.split(" ")[0]) for p in problems] == [(2, "not"), (3, "not")]


def test_latest_record_wins_across_shards(tmp_path):
    m0 = tmp_path / "manifests" / "shard-0-of-2.jsonl"
    m1 = tmp_path / "manifests" / "shard-0-of-1.jsonl"
    outputs.append_record(m0, {"key": "a", "path": "a", "status": "failed", "time": "2026-01-01T00:00:00"})
    outputs.append_record(m1, {"key": "a", "path": "a", "status": "ok", "time": "2026-01-02T00:00:00"})
    outputs.append_record(
        m1, {"key": "a", "path": "a", "status": "skipped", "outcome": "ok", "time": "2026-01-02T00:00:00"}
    )
    latest, _ = outputs.latest_records(tmp_path)
    assert latest["a"].status == "skipped"


def _ok_record(tmp_path, settings):
    npy = tmp_path / "features" / "a_8.npy"
    outputs.save_array(npy, np.ones((2, 4), np.float32))
    return {
        "key": "a",
        "path": "a.mp4",
        "status": "ok",
        "outcome": "ok",
        "output": "features/a_8.npy",
        "size": npy.stat().st_size,
        "sha256": outputs.file_sha256(npy),
        "settings": settings,
    }


def test_resume_decisions(tmp_path):
    settings = {"model": "m", "stride": 8}
    record = outputs.ManifestRecord.from_json(_ok_record(tmp_path, settings))
    decide = outputs.decide_resume
    assert decide(None, tmp_path, settings, overwrite=False, retry_failed=True).reason == "new"
    done = decide(record, tmp_path, settings, overwrite=False, retry_failed=True)
    assert not done.run and done.reason == "done"
    assert decide(record, tmp_path, settings, overwrite=True, retry_failed=True).run
    changed = decide(record, tmp_path, {"model": "m", "stride": 4}, overwrite=False, retry_failed=True)
    assert changed.run and "stride" in changed.reason
    failed = dataclasses.replace(record, status="failed", outcome="failed", error="boom")
    assert decide(failed, tmp_path, settings, overwrite=False, retry_failed=True).run
    assert not decide(failed, tmp_path, settings, overwrite=False, retry_failed=False).run
    # a file that differs from its record (e.g. replaced or truncated) is recomputed
    npy = tmp_path / "features" / "a_8.npy"
    outputs.save_array(npy, np.zeros((2, 4), np.float32))
    tampered = decide(record, tmp_path, settings, overwrite=False, retry_failed=True)
    assert tampered.run and "sha256" in tampered.reason
    npy.unlink()
    assert "missing" in decide(record, tmp_path, settings, overwrite=False, retry_failed=True).reason


def test_npy_data_offset_and_truncation(tmp_path):
    path = tmp_path / "x.npy"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(path, array)
    offset, shape, dtype = outputs.npy_data_offset(path)
    raw = path.read_bytes()[offset:]
    assert shape == (3, 4) and dtype == np.float32
    assert np.array_equal(np.frombuffer(raw, dtype=np.float32).reshape(3, 4), array)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        outputs.npy_data_offset(path)


def test_lock_refuses_second_holder_and_dies_with_holder(tmp_path):
    lock_path = tmp_path / "locks" / "shard-0-of-1.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pipeline.outputs import ShardLock
        lock = ShardLock(Path({str(lock_path)!r})).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(outputs.LockError, match="another extraction"):
            outputs.ShardLock(lock_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL released the OS lock: no stale pid file blocks us
    with outputs.ShardLock(lock_path):
        pass


def _short_write_like_numpy(f):
    """What np.save's `tofile` does when the disk fills: part of the data lands, then an errno-less error."""
    f.write(b"\x93NUMPY partial")
    raise OSError("100000 requested and 65504 written")


def test_numpy_short_write_on_a_full_disk_is_one_line_naming_space_and_file(tmp_path, monkeypatch):
    target = tmp_path / "features" / "a_32.npy"
    outputs.save_array(target, np.ones(3))
    monkeypatch.setattr(outputs.atomic, "_free_bytes", lambda directory: 0)  # the filesystem is full
    with pytest.raises(outputs.OutputError) as caught:
        outputs.atomic_write(target, _short_write_like_numpy)
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot write {target}: No space left on device" in message
    assert "100000 requested and 65504 written" in message
    assert np.array_equal(np.load(target), np.ones(3))  # the old file stays whole
    assert [p.name for p in target.parent.iterdir()] == ["a_32.npy"]  # no temp left


def test_short_write_with_room_left_is_still_one_output_error(tmp_path):
    target = tmp_path / "x.npy"
    with pytest.raises(outputs.OutputError, match=r"cannot write .*x\.npy: .*short write") as caught:
        outputs.atomic_write(target, _short_write_like_numpy)
    assert caught.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_enospc_from_python_io_is_an_output_error(tmp_path):
    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(outputs.OutputError, match="No space left on device"):
        outputs.atomic_write(tmp_path / "y.json", full)
    assert list(tmp_path.iterdir()) == []


def test_an_unrelated_os_error_is_not_translated(tmp_path):
    def gone(f):
        raise FileNotFoundError(errno.ENOENT, "vanished input")

    with pytest.raises(FileNotFoundError):
        outputs.atomic_write(tmp_path / "z.npy", gone)
    assert list(tmp_path.iterdir()) == []


def test_real_full_filesystem_keeps_nothing_partial_and_writes_again_once_space_returns(tmp_path):
    with small_filesystem(tmp_path / "small", "256k") as small:
        target = small / "features" / "big_32.npy"
        with pytest.raises(outputs.OutputError) as caught:  # numpy's own short write, on a real disk
            outputs.save_array(target, np.ones(100_000, np.float32))  # 400 kB > 256 kB
        assert caught.value.errno == errno.ENOSPC
        assert f"cannot write {target}: No space left on device" in str(caught.value)
        assert list(target.parent.iterdir()) == []
        manifest = small / "manifests" / "m.jsonl"
        outputs.append_record(manifest, {"key": "a", "path": "a.mp4", "status": "ok"})
        before = manifest.read_bytes()
        ballast = fill_filesystem(small, leave=8192)  # room for part of what comes next
        with pytest.raises(outputs.OutputError, match="No space left on device"):
            outputs.save_json(small / "runs" / "r.json", {"pad": "x" * 20_000})
        with pytest.raises(outputs.OutputError, match=f"cannot append to {manifest}: No space left"):
            outputs.append_record(
                manifest, {"key": "b", "path": "b.mp4", "status": "ok", "pad": "x" * 20_000}
            )
        assert manifest.read_bytes() == before  # no half line
        ballast.unlink()
        outputs.save_array(target, np.ones(10_000, np.float32))
        assert np.load(target).shape == (10_000,)
        assert sorted(p.name for p in small.rglob("*") if p.is_file()) == ["big_32.npy", "m.jsonl"]


# --- typed records ---------------------------------------------------------------------------------


def test_a_manifest_record_round_trips_and_reads_older_lines():
    record = outputs.ManifestRecord(
        key="a",
        path="a.mp4",
        status="ok",
        settings={"stride": 8},
        time="t",
        rows=3,
        output="features/a_8.npy",
    )
    data = record.as_json()
    assert data["error"] is None and "reason" not in data  # the identifying fields always, the rest when set
    assert outputs.ManifestRecord.from_json(json.loads(json.dumps(data))) == record
    older = {"key": "b", "path": "b.mp4", "status": "failed", "error": "boom", "a_future_field": 1}
    read = outputs.ManifestRecord.from_json(older)
    assert read.final_outcome == "failed" and read.settings == {} and read.error == "boom"
    with pytest.raises(ValueError, match="needs key, path, status"):
        outputs.ManifestRecord.from_json({"key": "c"})


def test_a_sidecar_round_trips_and_names_a_missing_field(tmp_path):
    sidecar = outputs.Sidecar(
        key="a",
        settings={"precision": "fp32"},
        timestamps=[[0.0, 1.0, 0.5]],
        checkpoint=outputs.CheckpointRecord("w.pyth", "abc", False),
        logits={"logits": "features/a_8.logits.npy"},
    )
    path = tmp_path / "a_8.json"
    outputs.save_sidecar(path, sidecar)
    assert outputs.load_sidecar(path) == sidecar
    assert outputs.read_sidecar(path)["checkpoint"] == {"path": "w.pyth", "sha256": "abc", "random": False}
    with pytest.raises(ValueError, match="sidecar has no 'timestamps' field"):
        outputs.Sidecar.from_json({"key": "a", "settings": {}})
    older = {"key": "a", "settings": {}, "timestamps": [], "config": {"hardware": {"precision": "bf16"}}}
    assert outputs.Sidecar.from_json(older).effective_settings == {"precision": "bf16"}
