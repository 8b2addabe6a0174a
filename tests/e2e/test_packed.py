"""output.store=packed end to end: the same features as the files store in a few files, moves between
stores without recomputing, and faults (a part truncated mid-video, a duplicate) recomputed on rerun."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import naming
from pipeline.api import compose_config
from pipeline.assemble import as_object
from pipeline.consolidate import ConsolidateError, consolidate
from pipeline.extract import extract
from pipeline.outputs import append_record, latest_records, read_manifest
from pipeline.outputs.reader import open_record, scan
from pipeline.synth import write_video
from tests.helpers import run_config

KEYS = [f"v{i}" for i in range(5)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packed_videos")
    for i, key in enumerate(KEYS):
        write_video(root / f"{key}.mp4", seconds=0.6 + 0.1 * i, size=(64, 48), first_number=i * 10)
    (root / "video_list.csv").write_text("".join(f"{key}.mp4\n" for key in KEYS))
    return root


def cfg(root: Path, out: Path, *extra: str):
    return compose_config(
        "slowfast_tiny",
        [
            "model.checkpoint=random",
            f"data.root={root}",
            f"output_dir={out}",
            "data.fps=30",
            "data.stride=4",
            "output.hdf5=false",
            "output.logits=true",
            *extra,
        ],
    )


def arrays_of(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Per key: features, timestamps and logits, read through the one reader."""
    found = scan([out])
    return {
        v.key: (v.load(), v.timestamps, {name: ref.load() for name, ref in v.logits.items()})
        for v in found.videos
    }


def files_under(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()]


def test_packed_holds_what_the_files_store_holds_in_a_few_files(videos: Path, tmp_path: Path) -> None:
    files, packed = tmp_path / "files", tmp_path / "packed"
    assert run_config(cfg(videos, files)).ok == 5
    assert run_config(cfg(videos, packed, "output.store=packed")).ok == 5
    a, b = arrays_of(files), arrays_of(packed)
    assert sorted(a) == sorted(b) == KEYS
    for key in KEYS:
        np.testing.assert_allclose(a[key][0], b[key][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a[key][1], b[key][1])
        assert sorted(a[key][2]) == sorted(b[key][2]) == ["logits"]
    data = [p.name for p in files_under(packed) if p.parts[-2] not in ("manifests", "locks", "runs")]
    assert data == ["part-00000.npk"]
    assert len(files_under(files)) - len(files_under(packed)) == 3 * 5 - 1  # .npy, .json, .logits.npy

    for layout in ("copy", "external"):
        h5_files = consolidate([files], tmp_path / f"files_{layout}.h5", layout=layout)
        h5_packed = consolidate([packed], packed / f"{layout}.h5", layout=layout)
        for key in KEYS:
            with h5py.File(h5_packed, "r") as h5, h5py.File(h5_files, "r") as ref:
                if layout == "external":
                    (entry,) = h5[key]["features"].external
                    assert entry[0] == "packed/shard-0-of-1/part-00000.npk" and entry[1] > 0
                    continue
                np.testing.assert_allclose(h5[key]["features"][()], ref[key]["features"][()], rtol=1e-5)
                np.testing.assert_array_equal(h5[key]["timestamps"][()], ref[key]["timestamps"][()])
                assert h5[key].attrs["fps"] == ref[key].attrs["fps"]
    # the external view over the parts opens with plain h5py (the documented prefix), from anywhere
    script = "import h5py, sys; print(h5py.File(sys.argv[1])['v3/features'][()].sum())"
    done = subprocess.run(
        [sys.executable, "-c", script, str(packed / "external.h5")],
        env={**os.environ, "HDF5_EXTFILE_PREFIX": "${ORIGIN}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(done.stdout) == pytest.approx(float(b["v3"][0].sum()), rel=1e-5)


def test_a_run_moves_between_stores_without_recomputing(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_config(cfg(videos, out))
    before = arrays_of(out)
    for store, gone in (("packed", "features"), ("files", None)):
        summary = run_config(cfg(videos, out, f"output.store={store}"))
        assert (summary.ok, summary.failed, summary.skipped) == (0, 0, 5)  # nothing extracted
        after = arrays_of(out)
        for key in KEYS:  # bit for bit: moved, not recomputed
            np.testing.assert_array_equal(after[key][0], before[key][0])
            np.testing.assert_array_equal(after[key][1], before[key][1])
            np.testing.assert_array_equal(after[key][2]["logits"], before[key][2]["logits"])
        latest, _ = latest_records(out)
        assert all(r.reason and r.reason.startswith("moved from the") for r in latest.values())
        assert all(r.packed == (store == "packed") for r in latest.values())
        if gone:
            assert not [p for p in (out / gone).rglob("*") if p.is_file()]
    again = run_config(cfg(videos, out))  # settled: nothing moves twice
    assert (again.ok, again.skipped) == (0, 5)


def test_a_part_truncated_mid_video_recomputes_only_that_video(
    videos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, clean = tmp_path / "out", tmp_path / "clean"
    run_config(cfg(videos, out, "output.store=packed"))
    latest, _ = latest_records(out)
    last = max(latest.values(), key=lambda r: int(r.offset or 0))
    part = out / str(last.output)
    with open(part, "rb+") as f:
        f.truncate(int(last.offset or 0) + int(last.size or 0) // 2)
    caplog.set_level(logging.INFO)
    summary = run_config(cfg(videos, out, "output.store=packed"))
    assert (summary.ok, summary.skipped) == (1, 4)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recomputing")]
    assert last.key in line and "output truncated" in line
    run_config(cfg(videos, clean, "output.store=packed"))
    ours, theirs = arrays_of(out), arrays_of(clean)
    for key in KEYS:
        np.testing.assert_allclose(ours[key][0], theirs[key][0], rtol=1e-5, atol=1e-6)
    assert len(list((out / "packed").rglob("*.npk"))) == 1


def test_a_video_in_two_shards_parts_counts_once_by_its_newest_record(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_config(cfg(videos, out, "output.store=packed", "hardware.num_shards=2", "hardware.shard_index=0"))
    run_config(cfg(videos, out, "output.store=packed", "hardware.num_shards=2", "hardware.shard_index=1"))
    # the same videos again as one shard, overwriting: every key now has a record in two shards' parts
    run_config(cfg(videos, out, "output.store=packed", "output.overwrite=true"))
    assert len(list((out / "packed").rglob("*.npk"))) == 3
    latest, _ = latest_records(out)
    assert {r.output for r in latest.values()} == {naming.packed_part_relpath(0, 1, 0)}
    records, _ = read_manifest(out / naming.manifest_relpath(0, 2))
    assert records  # the older records are still there, superseded
    found = scan([out])
    assert sorted(v.key for v in found.videos) == KEYS
    with h5py.File(consolidate([out]), "r") as h5:
        assert sorted(h5.attrs["num_videos"].reshape(-1).tolist()) == [5]


def test_a_manifest_that_disagrees_with_its_part_is_named_and_a_full_rerun_recomputes(
    videos: Path, tmp_path: Path
) -> None:
    out, clean = tmp_path / "out", tmp_path / "clean"
    run_config(cfg(videos, out, "output.store=packed"))
    manifest = out / naming.manifest_relpath(0, 1)
    lines = manifest.read_text().splitlines()
    records = {json.loads(line).get("key"): n for n, line in enumerate(lines)}
    a, b = json.loads(lines[records["v1"]]), json.loads(lines[records["v2"]])
    a["offset"] = b["offset"]  # v1's record now points at v2's bytes
    lines[records["v1"]] = json.dumps(a)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConsolidateError, match=r"v1.*the manifest.*output.verify=full recomputes it"):
        consolidate([out])
    summary = run_config(cfg(videos, out, "output.store=packed", "output.verify=full"))
    assert (summary.ok, summary.skipped) == (1, 4)
    run_config(cfg(videos, clean, "output.store=packed"))
    ours, theirs = arrays_of(out), arrays_of(clean)
    for key in KEYS:
        np.testing.assert_allclose(ours[key][0], theirs[key][0], rtol=1e-5, atol=1e-6)
    consolidate([out])


def packed_run(videos: Path, out: Path):
    """The tiny model's packed run of the test videos at their 30 fps, as a typed config."""
    overrides = ["model.checkpoint=random", f"data.root={videos}", f"output_dir={out}", "data.fps=30"]
    return as_object(compose_config("slowfast_tiny", [*overrides, "output.store=packed"]))


def test_a_rerun_with_nothing_to_do_reads_the_manifests_once(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.consolidate as consolidate_module

    assert extract(packed_run(videos, tmp_path / "out"), None)[0] == 0
    reads: list[Path] = []
    real = consolidate_module.latest_records
    monkeypatch.setattr(consolidate_module, "latest_records", lambda d: reads.append(d) or real(d))
    status, report = extract(packed_run(videos, tmp_path / "out"), None)
    assert status == 0 and report["totals"]["skipped"] == 5
    assert reads == []  # the plan's records served the consolidation
    with h5py.File(tmp_path / "out" / "features.h5", "r") as h5:
        assert sorted(h5.attrs["num_videos"].reshape(-1).tolist()) == [5]


def test_a_rerun_that_extracts_reads_the_manifests_once_and_consolidates_what_it_added(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final consolidation takes the plan's records plus the lines the shard appended since
    (RunPlan.records_now), not a second full read; features.h5 then holds the recomputed video."""
    import pipeline.consolidate as consolidate_module
    import pipeline.run.plan as plan_module

    assert extract(packed_run(videos, tmp_path / "out"), None)[0] == 0
    out = tmp_path / "out"
    h5_path = out / "features.h5"
    latest, _ = latest_records(out)
    redo = sorted(latest)[1]
    manifest = out / "manifests" / "shard-0-of-1.jsonl"
    append_record(manifest, {**latest[redo].as_json(), "status": "failed", "outcome": "failed", "error": "e"})
    reads: list[Path] = []
    for module in (consolidate_module, plan_module):
        real = module.latest_records
        monkeypatch.setattr(module, "latest_records", lambda d, real=real: reads.append(d) or real(d))
    status, report = extract(packed_run(videos, tmp_path / "out"), None)
    assert status == 0 and report["totals"]["ok"] == 1 and report["totals"]["skipped"] == 4
    assert reads == [out]  # the plan's read only
    after, _ = latest_records(out)
    assert after[redo].status == "ok" and after[redo].time != latest[redo].time
    with h5py.File(h5_path, "r") as h5:
        assert sorted(h5.attrs["num_videos"].reshape(-1).tolist()) == [5]
        stored = open_record(after[redo], out).load()
        np.testing.assert_array_equal(h5[redo]["features"][()], stored)
