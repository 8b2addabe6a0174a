"""Hydra multirun sweeps: one stable output dir per point, a sweep summary, and the exit status."""

from __future__ import annotations

import json

from pipeline.synth import write_video
from tests.helpers import run_extract


def test_sweep_gives_one_output_dir_per_point_and_a_summary(tmp_path):
    root = tmp_path / "root"
    write_video(root / "a.mp4", seconds=1.0)
    (root / "bad.mp4").write_bytes(b"nope")
    (root / "video_list.csv").write_text("a.mp4\n")
    sweep = (
        "-m",
        "model=slowfast_tiny",
        "model.checkpoint=random",
        "data=custom",
        f"data.root={root}",
        "data.num_frames=4,8",
    )
    done = run_extract(tmp_path, *sweep, "hydra.sweep.dir=sweep")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for T in (4, 8):
        out = tmp_path / "outputs" / "custom" / f"slowfast_tiny_{T}x1_s{T}"
        assert (out / "features" / f"a_{T}.npy").is_file()
        assert (out / "features.h5").is_file()
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert (summary["finished"], summary["failed"]) == (2, 0)
    assert "sweep: 2 runs finished, 0 failed" in done.stdout

    # a point that fails (bad list entry) does not stop the others, and the sweep exits 1
    (root / "video_list.csv").write_text("a.mp4\nbad.mp4\n")
    done = run_extract(tmp_path, *sweep, "hydra.sweep.dir=sweep2")
    assert done.returncode == 1
    summary = json.loads((tmp_path / "sweep2" / "sweep_summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == [1, 1]
    assert all(j["totals"]["skipped"] == 1 and j["totals"]["failed"] == 1 for j in summary["jobs"])
