"""Tests for pipeline.naming: keys, output paths, run directory names."""

from __future__ import annotations

import pytest

from pipeline import naming
from pipeline.naming import (
    VIDEO_EXTENSIONS,
    feature_relpath,
    has_video_extension,
    hdf5_group_name,
    lock_relpath,
    manifest_relpath,
    run_dir_name,
    sidecar_relpath,
    video_key,
)


@pytest.mark.parametrize(
    ("rel", "key"),
    [
        ("a.mp4", "a"),
        ("a/b.c.mp4", "a/b.c"),
        ("P01/P01_01.MP4", "P01/P01_01"),
        ("x.Mkv", "x"),
        ("clip.mp4.mp4", "clip.mp4"),  # only ONE extension removed
        ("a/", "a"),  # frame folder
        ("frames/P01_01", "frames/P01_01"),
        ("notes.txt", "notes.txt"),  # unknown extension kept
        ("movie.ts", "movie"),
        ("movie.mts", "movie"),
        ("a/.mp4", "a/.mp4"),  # nothing left of the name: kept whole
        ("v.mpeg", "v"),
        ("v.3GP", "v"),
    ],
)
def test_video_key(rel, key):
    assert video_key(rel) == key


def test_every_extension_is_stripped_case_insensitively():
    for ext in VIDEO_EXTENSIONS:
        assert ext.startswith(".") and ext == ext.lower()
        assert video_key("dir/v" + ext) == "dir/v"
        assert video_key("dir/v" + ext.upper()) == "dir/v"
        assert has_video_extension("v" + ext.upper())
    assert not has_video_extension("v.jpg")


def test_video_key_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        video_key("/")


def test_feature_and_sidecar_paths():
    assert feature_relpath("a.b", 32) == "features/a.b_32.npy"
    assert feature_relpath(video_key("a.b.mp4"), 32) == "features/a.b_32.npy"
    assert feature_relpath("P01/P01_01", 8) == "features/P01/P01_01_8.npy"
    assert sidecar_relpath("P01/P01_01", 8) == "features/P01/P01_01_8.json"
    assert sidecar_relpath("a.npy", 16) == "features/a.npy_16.json"


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "./a", "a/"])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="invalid video key"):
        feature_relpath(key, 32)
    with pytest.raises(ValueError, match="invalid video key"):
        hdf5_group_name(key)


def test_bad_num_frames_refused():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_frames"):
            feature_relpath("a", bad)


def test_manifest_and_lock_paths():
    assert manifest_relpath(0, 1) == "manifests/shard-0-of-1.jsonl"
    assert manifest_relpath(3, 8) == "manifests/shard-3-of-8.jsonl"
    assert lock_relpath(7, 8) == "locks/shard-7-of-8.lock"
    for i, n in ((8, 8), (-1, 4), (0, 0)):
        with pytest.raises(ValueError, match="shard"):
            manifest_relpath(i, n)
        with pytest.raises(ValueError, match="shard"):
            lock_relpath(i, n)


def test_hdf5_group_name_keeps_slashes():
    assert hdf5_group_name("P01/videos/P01_01") == "P01/videos/P01_01"
    assert hdf5_group_name("a.b") == "a.b"


def test_run_dir_name_basic_and_extras():
    assert run_dir_name("epic", "SLOWFAST_8x8_R50", 32, 1, 16) == "epic/SLOWFAST_8x8_R50_32x1_s16"
    assert run_dir_name("epic", "slowfast_r50", 32, 2, 16, {"fps": 30}) == "epic/slowfast_r50_32x2_s16_fps30"
    assert run_dir_name("d", "m", 8, 8, 8, {"fps": 29.97}) == "d/m_8x8_s8_fps29.97"
    assert run_dir_name("d", "m", 8, 8, 8, {"fps": 30.0}) == "d/m_8x8_s8_fps30"
    # keys in sorted order; None/False skipped; True gives the key alone; tuples joined with x
    name = run_dir_name(
        "d", "m", 8, 8, 8, {"window": "centered", "flip": True, "crop": None, "resize": (256, 340)}
    )
    assert name == "d/m_8x8_s8_flip_resize256x340_windowcentered"
    assert run_dir_name("d", "m", 8, 8, 8, {"flip": False}) == "d/m_8x8_s8"
    assert run_dir_name("d", "m", 8, 8, 8, {}) == run_dir_name("d", "m", 8, 8, 8, None)


def test_run_dir_name_is_deterministic_and_safe():
    extra = {"b": 2, "a": 1}
    assert run_dir_name("d", "m", 8, 8, 8, extra) == run_dir_name("d", "m", 8, 8, 8, {"a": 1, "b": 2})
    name = run_dir_name("my data/v2", "model:one", 8, 2, 4, {"pad": "zero fill"})
    assert name == "my-data-v2/model-one_8x2_s4_padzero-fill"
    assert name.count("/") == 1


def test_run_dir_name_long_extras_become_a_digest():
    extra = {f"setting{i}": f"value{i}" for i in range(10)}
    name = run_dir_name("d", "m", 8, 8, 8, extra)
    assert name.startswith("d/m_8x8_s8_x") and len(name) == len("d/m_8x8_s8_x") + 10
    assert name == run_dir_name("d", "m", 8, 8, 8, dict(reversed(list(extra.items()))))
    changed = {**extra, "setting3": "other"}
    assert run_dir_name("d", "m", 8, 8, 8, changed) != name


def test_run_dir_name_rejects_bad_numbers():
    with pytest.raises(ValueError, match="stride"):
        run_dir_name("d", "m", 8, 8, 0)
    with pytest.raises(ValueError, match="sampling_rate"):
        run_dir_name("d", "m", 8, -1, 8)


def test_logits_sidecar_and_feature_names_share_one_stem():
    assert naming.logits_relpath("P01/a.b", 32, "verb") == "features/P01/a.b_32.verb.npy"
    assert naming.feature_of_sidecar(naming.sidecar_relpath("P01/a.b", 32)) == naming.feature_relpath(
        "P01/a.b", 32
    )
    assert naming.feature_of_sidecar("/abs/out/features/x_8.json") == "/abs/out/features/x_8.npy"
    with pytest.raises(ValueError, match="not a sidecar"):
        naming.feature_of_sidecar("features/x_8.npy")
    assert naming.sidecar_of_feature("/abs/out/features/x_8.npy") == "/abs/out/features/x_8.json"
    with pytest.raises(ValueError, match="not a feature file"):
        naming.sidecar_of_feature("features/x_8.json")


def test_run_record_and_hdf5_names():
    assert (
        naming.run_record_relpath("2026-01-02T03:04:05+01:00", 42) == "runs/2026-01-02T03-04-05+01-00-42.json"
    )
    assert naming.hdf5_logits_name("logits") == "logits"
    assert naming.hdf5_logits_name("noun") == "logits_noun"
    assert naming.MANIFEST_GLOB == "manifests/shard-*-of-*.jsonl"
