"""Shard plans (pipeline.run.shards): the cut of a list into shards, decided once and kept in shards.json."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import naming
from pipeline.run.shards import list_digest, shard_plan, work_weights
from pipeline.synth import write_video
from pipeline.videolist import VideoEntry


def entries(root: Path, names: list[str]) -> list[VideoEntry]:
    return [VideoEntry(rel=n, path=root / n, key=n.rsplit(".", 1)[0]) for n in names]


def test_work_is_the_header_duration_else_the_size_else_one(tmp_path):
    write_video(tmp_path / "long.mp4", seconds=2.0, size=(64, 48))
    write_video(tmp_path / "short.mp4", seconds=0.5, size=(64, 48))
    (tmp_path / "junk.mp4").write_bytes(b"x" * 3_000_000)  # not a video: its size in MB
    listed = entries(tmp_path, ["long.mp4", "short.mp4", "junk.mp4", "missing.mp4"])
    listed.append(VideoEntry(rel="/abs.mp4", path=Path("/abs.mp4"), key="/abs", error="absolute path"))
    work = work_weights(listed)
    assert abs(work["long"] - 2.0) < 0.1 and abs(work["short"] - 0.5) < 0.1
    assert work["junk"] == 3.0
    assert work["missing"] == 1.0 and work["/abs"] == 1.0


def test_a_plan_is_made_once_and_reused_for_the_same_list_and_count(tmp_path):
    for i, seconds in enumerate((2.0, 1.0, 0.5, 0.5)):
        write_video(tmp_path / f"v{i}.mp4", seconds=seconds, size=(64, 48))
    listed = entries(tmp_path, [f"v{i}.mp4" for i in range(4)])
    out = tmp_path / "out"
    plan = shard_plan(listed, 2, out)
    assert sorted(k for shard in plan for k in shard) == ["v0", "v1", "v2", "v3"]
    assert plan[0] == ["v0"]  # the longest video alone balances the three others
    saved = json.loads((out / naming.SHARD_PLAN).read_text())
    assert saved["shards"] == plan and saved["list_sha256"] == list_digest(listed)
    (tmp_path / "v0.mp4").unlink()  # a reuse reads no video: the recorded cut stands
    assert shard_plan(listed, 2, out) == plan
    assert len(shard_plan(listed, 3, out)) == 3  # another count: a new cut, recorded
    assert json.loads((out / naming.SHARD_PLAN).read_text())["num_shards"] == 3


def test_an_unreadable_plan_file_is_made_again(tmp_path, caplog):
    write_video(tmp_path / "v.mp4", seconds=0.5, size=(64, 48))
    listed = entries(tmp_path, ["v.mp4"])
    out = tmp_path / "out"
    out.mkdir()
    (out / naming.SHARD_PLAN).write_text("{not json")
    assert shard_plan(listed, 2, out) in ([["v"], []], [[], ["v"]])
    assert "unreadable" in caplog.text
