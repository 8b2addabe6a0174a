"""The packed store: appended parts readable by numpy alone, torn tails cut, faults found by resume."""

from __future__ import annotations

import errno
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline import naming
from pipeline.outputs import (
    ManifestRecord,
    ManifestWriter,
    OutputError,
    PackedStore,
    Sidecar,
    VideoArrays,
    appended_records,
    decide_resume,
    latest_records,
    read_kept,
    read_manifest,
    read_packed,
    unchanged_parts,
)
from pipeline.outputs import store as store_module
from pipeline.outputs.reader import ReadError, open_record
from pipeline.outputs.store import part_counts, part_extents

SETTINGS = {"model": "tiny", "num_frames": 8, "stride": 4, "precision": "fp32"}
CONFIG = {"model": {"name": "tiny"}, "output": {"store": "packed"}}


def video(key: str, rows: int = 3, dim: int = 5, heads: tuple[str, ...] = ()) -> tuple[VideoArrays, Sidecar]:
    rng = np.random.default_rng(len(key) * 7 + rows)
    features = rng.standard_normal((rows, dim)).astype(np.float32)
    stamps = np.stack([np.arange(rows), np.arange(rows) + 1.0, np.arange(rows) + 0.5], axis=1)
    logits = {head: rng.standard_normal((rows, 4)).astype(np.float32) for head in heads}
    sidecar = Sidecar.from_json(
        {
            "key": key,
            "settings": SETTINGS,
            "config": CONFIG,
            "timestamps": stamps.tolist(),
            "fps": 30.0,
            "rows": rows,
            "dim": dim,
            "video": f"{key}.mp4",
        }
    )
    return VideoArrays(features, stamps, logits), sidecar


def write_run(out: Path, keys: list[str], *, shard: int = 0, shards: int = 1) -> list[ManifestRecord]:
    """Append videos the way a shard does: the store's bytes first, then the manifest record."""
    latest, _ = latest_records(out)
    manifest = ManifestWriter(out / naming.manifest_relpath(shard, shards))
    store = PackedStore(
        out,
        shard,
        shards,
        {"settings": SETTINGS, "config": CONFIG},
        part_extents(latest),
        part_counts(latest),
    )
    records = []
    for key in keys:
        arrays, sidecar = video(key)
        stored = store.write(key, arrays, sidecar)
        record = ManifestRecord(
            key=key, path=f"{key}.mp4", status="ok", outcome="ok", settings=SETTINGS, **stored.fields()
        )
        manifest.append(record)
        records.append(record)
    return records


def decide(out: Path, key: str, verify: str = "stat") -> str:
    latest, _ = latest_records(out)
    unchanged = unchanged_parts(latest, out) if verify == "stat" else {}
    decision = decide_resume(
        latest.get(key),
        out,
        SETTINGS,
        overwrite=False,
        retry_failed=True,
        verify=verify,
        store="packed",
        unchanged=unchanged,
    )
    return decision.reason


def test_a_video_reads_back_exactly_through_the_reader_and_numpy_alone(tmp_path: Path) -> None:
    store = PackedStore(tmp_path, 0, 1, {"settings": SETTINGS, "config": CONFIG}, {}, {})
    written = {}
    for key, heads in (("a", ()), ("b/c", ("logits", "verb"))):
        arrays, sidecar = video(key, heads=heads)
        stored = store.write(key, arrays, sidecar)
        written[key] = (arrays, sidecar, stored)
    for key, (arrays, sidecar, stored) in written.items():
        found = read_packed(tmp_path / stored.output, int(stored.offset or 0), stored.size, stored.sha256)
        np.testing.assert_array_equal(found.arrays["features"].load(), arrays.features)
        assert found.sidecar.timestamps == arrays.timestamps.tolist()
        assert found.sidecar.settings == SETTINGS and found.sidecar.config == CONFIG
        assert found.sidecar.fps == sidecar.fps == 30.0 and found.sidecar.video == sidecar.video
        for head, values in arrays.logits.items():
            np.testing.assert_array_equal(found.arrays[naming.hdf5_logits_name(head)].load(), values)
        record = ManifestRecord(key=key, path="", status="ok", **stored.fields())
        np.testing.assert_array_equal(open_record(record, tmp_path).load(), arrays.features)

    # the module docstring's snippet reads a part with numpy and json only
    snippet = textwrap.dedent(store_module.__doc__.split("without this package:")[1].split("\n\n")[1])
    namespace = {"np": np, "json": json, "part": tmp_path / written["a"][2].output}
    exec(snippet, namespace)  # noqa: S102 - our own documented snippet
    assert namespace["header"]["settings"] == SETTINGS
    assert namespace["meta"]["key"] == "b/c"
    np.testing.assert_array_equal(namespace["arrays"]["features"], written["b/c"][0].features)
    np.testing.assert_array_equal(namespace["arrays"]["logits_verb"], written["b/c"][0].logits["verb"])


def test_parts_roll_over_and_a_rerun_appends_after_its_records(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "PART_VIDEOS", 2)
    write_run(tmp_path, ["a", "b", "c"])
    write_run(tmp_path, ["d", "e"])
    parts = sorted((tmp_path / "packed" / "shard-0-of-1").iterdir())
    assert [p.name for p in parts] == ["part-00000.npk", "part-00001.npk", "part-00002.npk"]
    latest, _ = latest_records(tmp_path)
    assert sorted(part_counts(latest).values()) == [1, 2, 2]
    for key, record in latest.items():
        assert open_record(record, tmp_path).sidecar.key == key


def test_a_torn_tail_is_cut_and_the_part_counts_as_unchanged_again(tmp_path: Path) -> None:
    (first, second) = write_run(tmp_path, ["a", "b"])
    part = tmp_path / str(second.output)
    assert set(unchanged_parts(latest_records(tmp_path)[0], tmp_path)) == {second.output}
    with open(part, "ab") as f:  # a kill in the middle of the next video's append
        f.write(b"\x93NUMPY half a video")
    assert unchanged_parts(latest_records(tmp_path)[0], tmp_path) == {}
    assert decide(tmp_path, "a") == "done"  # its bytes were hashed, and still match
    write_run(tmp_path, [])  # the shard opens its store: the tail goes
    assert part.stat().st_size == int(second.offset or 0) + int(second.size or 0)
    assert set(unchanged_parts(latest_records(tmp_path)[0], tmp_path)) == {second.output}
    write_run(tmp_path, ["c"])
    latest, _ = latest_records(tmp_path)
    assert latest["c"].offset == part.stat().st_size - int(latest["c"].size or 0)
    assert [open_record(latest[k], tmp_path).sidecar.key for k in "abc"] == ["a", "b", "c"]


def test_truncation_and_corruption_are_found_and_only_full_verification_sees_a_silent_edit(
    tmp_path: Path,
) -> None:
    first, second = write_run(tmp_path, ["a", "b"])
    part = tmp_path / str(first.output)
    data = bytearray(part.read_bytes())
    mtime = part.stat().st_mtime_ns
    inside_a = int(first.offset or 0) + int(first.size or 0) - 3  # a feature byte of video a
    data[inside_a] ^= 0xFF
    part.write_bytes(bytes(data))
    assert decide(tmp_path, "a") == "output sha256 differs from the manifest"  # the part changed: hashed
    assert decide(tmp_path, "b") == "done"
    with pytest.raises(ReadError, match="differs from its manifest"):
        open_record(first, tmp_path).load()

    os.utime(part, ns=(mtime, mtime))  # the same size, mtime and inode: stat cannot tell
    assert decide(tmp_path, "a") == "done"
    assert decide(tmp_path, "a", verify="full") == "output sha256 differs from the manifest"

    with open(part, "rb+") as f:  # cut inside video b
        f.truncate(int(second.offset or 0) + 10)
    assert decide(tmp_path, "b").startswith("output truncated")
    (tmp_path / str(first.output)).unlink()
    assert decide(tmp_path, "a").startswith("output missing")


def test_a_run_with_other_settings_begins_a_new_part(tmp_path: Path) -> None:
    write_run(tmp_path, ["a"])
    other = PackedStore(tmp_path, 0, 1, {"settings": {**SETTINGS, "stride": 2}, "config": CONFIG}, {}, {})
    arrays, sidecar = video("b")
    stored = other.write("b", arrays, sidecar)
    assert stored.output.endswith("part-00001.npk") and stored.offset is not None


def test_a_full_disk_leaves_no_half_video_in_the_part(tmp_path: Path, monkeypatch) -> None:
    (record,) = write_run(tmp_path, ["a"])
    part = tmp_path / str(record.output)
    size = part.stat().st_size
    real = store_module._write_all

    def half_then_full(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    latest, _ = latest_records(tmp_path)
    header = {"settings": SETTINGS, "config": CONFIG}
    store = PackedStore(tmp_path, 0, 1, header, part_extents(latest), part_counts(latest))
    monkeypatch.setattr(store_module, "_write_all", half_then_full)
    with pytest.raises(OutputError, match="No space left on device"):
        store.write("b", *video("b"))
    assert part.stat().st_size == size
    monkeypatch.setattr(store_module, "_write_all", real)
    assert open_record(record, tmp_path).load().shape == (3, 5)


def test_manifest_names_settings_once_and_keeps_one_line_per_kept_run(tmp_path: Path) -> None:
    write_run(tmp_path, ["a", "b", "c"])
    manifest = tmp_path / naming.manifest_relpath(0, 1)
    lines = manifest.read_text().splitlines()
    assert sum('"kind": "settings"' in line for line in lines) == 1
    assert all("num_frames" not in line for line in lines[1:])  # records name the settings by digest
    writer = ManifestWriter(manifest)  # a rerun: its own settings line before its first record
    writer.kept(0, 1, "2026-01-01T00:00:00+00:00", {"done": 3})
    writer.append(ManifestRecord(key="d", path="d.mp4", status="failed", settings=SETTINGS, error="x"))
    records, problems = read_manifest(manifest)
    assert not problems and [r["key"] for r in records] == ["a", "b", "c", "d"]
    assert all(r["settings"] == SETTINGS for r in records)
    assert read_kept(manifest) == [
        {
            "kind": "kept",
            "shard": 0,
            "num_shards": 1,
            "time": "2026-01-01T00:00:00+00:00",
            "count": 3,
            "reasons": {"done": 3},
        }
    ]
    assert sum('"kind": "settings"' in line for line in manifest.read_text().splitlines()) == 2
    with open(manifest, "a") as f:
        f.write(json.dumps({"key": "e", "path": "e.mp4", "status": "ok", "settings_digest": "feed"}) + "\n")
    records, problems = read_manifest(manifest)
    assert [r["key"] for r in records][-1] == "d"
    assert len(problems) == 1 and "unknown settings feed" in problems[0].reason


def test_appended_records_are_the_lines_since_a_read_with_their_settings(tmp_path: Path) -> None:
    """What a run's shards appended after its plan read the manifests (RunPlan.records_now): only those
    lines, each resolved by the settings line its writer wrote; a manifest that shrank or vanished since
    means reading everything again (None)."""
    write_run(tmp_path, ["a", "b"])
    manifest = tmp_path / naming.manifest_relpath(0, 1)
    sizes = {manifest.name: manifest.stat().st_size}
    assert appended_records(tmp_path, sizes) == ([], [])
    writer = ManifestWriter(manifest)  # the run's shard: a settings line of its own, then its records
    writer.kept(0, 1, "2026-01-01T00:00:00+00:00", {"done": 1})
    writer.append(ManifestRecord(key="b", path="b.mp4", status="failed", settings=SETTINGS, error="x"))
    writer.append(ManifestRecord(key="c", path="c.mp4", status="failed", settings=SETTINGS, error="y"))
    appended = appended_records(tmp_path, sizes)
    assert appended is not None
    records, problems = appended
    assert not problems and [(r.key, r.error, r.settings) for r in records] == [
        ("b", "x", SETTINGS),
        ("c", "y", SETTINGS),
    ]
    other = tmp_path / naming.manifest_relpath(1, 2)  # a manifest the read did not see: read whole
    ManifestWriter(other).append(ManifestRecord(key="z", path="z.mp4", status="failed", settings=SETTINGS))
    records, _ = appended_records(tmp_path, sizes) or ([], [])
    assert [r.key for r in records] == ["b", "c", "z"]
    with open(manifest, "r+b") as f:
        f.truncate(sizes[manifest.name] - 1)
    assert appended_records(tmp_path, sizes) is None  # rewritten since: read everything again
    other.unlink()
    assert appended_records(tmp_path, {**sizes, other.name: 10}) is None
