"""A run planned once (pipeline.run.plan): one plan per run, a shard plan per shard, decisions made again
only when the manifests moved on since (a requeued job, another run beside it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.api import compose_config
from pipeline.assemble import as_object
from pipeline.outputs import ManifestRecord, append_record
from pipeline.run import plan_run, print_plan, run_shard
from pipeline.run.plan import RunError, manifest_stamp
from pipeline.synth import write_video

BASE = ["model.checkpoint=random", "data.fps=30", "hardware.batch_size=2", "output.hdf5=false"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(folder / f"v{i}.mp4", seconds=0.6, size=(64, 48))
    (folder / "video_list.csv").write_text("v0.mp4\nv1.mp4\nv2.mp4\nnone.mp4\n")
    return folder


def config(root: Path, out: Path, *overrides: str):
    return as_object(
        compose_config("slowfast_tiny", [f"data.root={root}", f"output_dir={out}", *BASE, *overrides])
    )


def test_one_plan_holds_the_run_and_its_shards(root, tmp_path):
    plan = plan_run(config(root, tmp_path / "out", "hardware.num_shards=2"))
    assert plan.num_shards == 2 and [s.index for s in plan.shards] == [0, 1]
    assert sorted(e.key for s in plan.shards for e in s.entries) == ["none", "v0", "v1", "v2"]
    assert plan.weights.random and plan.settings["random_weights"] is True
    assert all(s.settings is plan.settings and s.weights is plan.weights for s in plan.shards)
    assert all(d.reason == "new" for s in plan.shards for d in s.decisions.values())
    only = plan_run(config(root, tmp_path / "out", "hardware.num_shards=2", "hardware.shard_index=1"))
    assert [s.index for s in only.shards] == [1]
    assert [e.key for e in only.shards[0].entries] == [e.key for e in plan.shards[1].entries]  # shards.json


def test_a_list_that_cannot_be_read_is_one_line(root, tmp_path):
    with pytest.raises(RunError, match="cannot read video list"):
        plan_run(config(root, tmp_path / "out", f"data.video_list={tmp_path / 'nope.csv'}"))


def test_a_shard_decides_again_only_when_its_manifests_moved_on(root, tmp_path):
    out = tmp_path / "out"
    (shard,) = plan_run(config(root, out)).shards
    assert shard.current() is shard  # nothing changed: the plan's decisions stand
    first = run_shard(shard)  # the same stale plan, run once: it extracts
    assert (first.ok, first.failed) == (3, 1)
    fresh = shard.current()  # a requeued job with the old plan sees what was done
    assert fresh is not shard and fresh.stamp == manifest_stamp(out)
    assert [fresh.decisions[k].run for k in ("v0", "v1", "v2")] == [False, False, False]
    again = run_shard(shard)  # so running the stale plan again extracts nothing
    assert (again.ok, again.skipped) == (0, 3)


def test_a_manifest_line_of_another_run_counts(root, tmp_path):
    out = tmp_path / "out"
    (shard,) = plan_run(config(root, out)).shards
    record = ManifestRecord(key="v0", path="v0.mp4", status="failed", settings=shard.settings, time="9999")
    append_record(out / "manifests" / "shard-0-of-1.jsonl", record)
    assert shard.current().decisions["v0"].reason.startswith("retrying failed video")


def test_the_dry_run_prints_every_decision(root, tmp_path, capsys):
    assert print_plan(plan_run(config(root, tmp_path / "out"))) == 0
    printed = capsys.readouterr().out
    assert "plan: 4 run" in printed and "run  v0.mp4  (new)" in printed  # a missing file fails when read
