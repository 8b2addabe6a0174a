"""Tests for pipeline.videolist and scripts/make_video_list.py on temporary trees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.videolist import (
    VideoEntry,
    VideoListError,
    format_video_list,
    frames_regex,
    parse_video_list,
    read_video_list,
    resolve_entries,
    scan_videos,
    shard_entries,
    write_video_list,
)

REPO = Path(__file__).resolve().parents[2]


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


# ---------------------------------------------------------------- parsing


def test_parse_tolerates_crlf_blanks_whitespace_and_header():
    text = "\ufeffPath\r\n  a.mp4 \r\n\r\n\tb/c.mkv\r\n\n d \n"
    assert parse_video_list(text) == ["a.mp4", "b/c.mkv", "d"]


def test_parse_header_only_on_first_line():
    assert parse_video_list("a.mp4\npath\n") == ["a.mp4", "path"]
    assert parse_video_list("\n\nPATH\nx\n") == ["x"]
    assert parse_video_list("") == []
    assert parse_video_list("path\n") == []


# ---------------------------------------------------------------- resolving


def test_resolve_files_folders_and_extensions(tmp_path):
    touch(tmp_path, "a.mp4", "sub/b.MKV", "c.mp4", "frames/P01/img_00001.jpg", "weird name.mov")
    lines = ["a.mp4", "sub/b.MKV", "c", "frames/P01/", "missing.avi", "gone", "weird name.mov"]
    entries = resolve_entries(lines, tmp_path, ".mp4")
    assert [e.rel for e in entries] == [
        "a.mp4",
        "sub/b.MKV",
        "c.mp4",  # found with video_ext
        "frames/P01",  # frame folder
        "missing.avi",  # missing, kept as is (known extension)
        "gone.mp4",  # missing, video_ext appended
        "weird name.mov",
    ]
    assert [e.key for e in entries] == ["a", "sub/b", "c", "frames/P01", "missing", "gone", "weird name"]
    assert all(e.error is None for e in entries)
    assert all(e.path == tmp_path.absolute() / e.rel for e in entries)
    assert all(e.path.is_absolute() for e in entries)


def test_resolve_without_video_ext_keeps_missing_lines(tmp_path):
    entries = resolve_entries(["x", "y.webm"], tmp_path, None)
    assert [(e.rel, e.key) for e in entries] == [("x", "x"), ("y.webm", "y")]


def test_resolve_video_ext_without_dot(tmp_path):
    touch(tmp_path, "v.mkv")
    assert resolve_entries(["v"], tmp_path, "mkv")[0].rel == "v.mkv"


def test_existing_directory_wins_over_extension(tmp_path):
    touch(tmp_path, "a/frame_1.jpg", "b.mp4")
    entries = resolve_entries(["a"], tmp_path, ".mp4")
    assert entries[0].rel == "a" and entries[0].path.is_dir()


def test_normalisation(tmp_path):
    entries = resolve_entries(["./x//y.mp4", "x/./z.mp4", "x/q/../w.mp4"], tmp_path, None)
    assert [e.rel for e in entries] == ["x/y.mp4", "x/z.mp4", "x/w.mp4"]


def test_absolute_and_escaping_paths_become_error_entries(tmp_path):
    entries = resolve_entries(["/etc/passwd.mp4", "../x.mp4", "a/../../y.mp4", "ok.mp4", "."], tmp_path, None)
    assert len(entries) == 5
    errors = [e.error for e in entries]
    assert "absolute" in errors[0] and "/etc/passwd.mp4" in errors[0]
    assert "escapes" in errors[1] and "../x.mp4" in errors[1]
    assert "escapes" in errors[2]
    assert errors[3] is None
    assert "root" in errors[4]


def test_duplicates_processed_once_in_list_order(tmp_path):
    touch(tmp_path, "a.mp4", "b.mp4")
    entries = resolve_entries(["b.mp4", "a.mp4", "./b.mp4", "a", "b.mp4"], tmp_path, ".mp4")
    assert [e.rel for e in entries] == ["b.mp4", "a.mp4"]


@pytest.mark.parametrize(
    ("files", "lines"),
    [
        (["a.mp4", "a.mkv"], ["a.mp4", "a.mkv"]),
        (["a.mp4", "a/f_1.jpg"], ["a.mp4", "a/"]),
        (["x/a.mp4", "x/a.MP4"], ["x/a.mp4", "x/a.MP4"]),
    ],
)
def test_key_collisions_are_refused_naming_both(tmp_path, files, lines):
    touch(tmp_path, *files)
    with pytest.raises(VideoListError) as info:
        resolve_entries(lines, tmp_path, None)
    message = str(info.value)
    rels = [line.rstrip("/") for line in lines]
    assert rels[0] in message and rels[1] in message


def test_read_video_list_roundtrip_and_errors(tmp_path):
    touch(tmp_path, "data/a.mp4", "data/b/c.mkv")
    listing = tmp_path / "list.csv"
    listing.write_bytes(b"path\r\na.mp4\r\nb/c\r\n")
    entries = read_video_list(listing, tmp_path / "data", ".mkv")
    assert [e.rel for e in entries] == ["a.mp4", "b/c.mkv"]
    with pytest.raises(VideoListError, match="cannot read video list"):
        read_video_list(tmp_path / "nope.csv", tmp_path, None)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(VideoListError, match="bad.csv"):
        read_video_list(bad, tmp_path, None)


# ---------------------------------------------------------------- sharding


def entries_for(keys: list[str]) -> list[VideoEntry]:
    return [VideoEntry(rel=k + ".mp4", path=Path("/r") / (k + ".mp4"), key=k) for k in keys]


def test_shards_are_disjoint_covering_ordered_and_deterministic():
    entries = entries_for([f"v{i:02d}" for i in range(23)][::-1])
    for num in (1, 2, 3, 5, 23, 30):
        shards = shard_entries(entries, num)
        assert len(shards) == num
        flat = [e for s in shards for e in s]
        assert sorted(e.key for e in flat) == sorted(e.key for e in entries)
        assert len(flat) == len(entries)
        for shard in shards:  # list order kept inside each shard
            positions = [entries.index(e) for e in shard]
            assert positions == sorted(positions)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1  # equal weights: balanced counts
        assert shard_entries(entries, num) == shards
    assert sum(1 for s in shard_entries(entries, 30) if not s) == 7


def test_shards_greedy_longest_first_by_weight():
    entries = entries_for(["a", "b", "c", "d", "e", "f"])
    weights = {"a": 1.0, "b": 7.0, "c": 5.0, "d": 4.0, "e": 3.0, "f": 2.0}
    shards = shard_entries(entries, 2, weights)
    # b(7)->0, c(5)->1, d(4)->1 (5<7), e(3)->0 (7<9), f(2)->1 (9<10)... then a(1)->0 (10<11)
    assert [[e.key for e in s] for s in shards] == [["a", "b", "e"], ["c", "d", "f"]]
    loads = [sum(weights[e.key] for e in s) for s in shards]
    assert loads == [11.0, 11.0]


def test_shard_weight_ties_broken_by_key_and_missing_weights_get_the_mean():
    entries = entries_for(["z", "y", "x"])
    shards = shard_entries(entries, 2, {"z": 2.0, "y": 2.0})  # x gets mean 2.0; order x, y, z
    assert [[e.key for e in s] for s in shards] == [["z", "x"], ["y"]]
    assert shard_entries(entries, 2, {"z": 2.0, "y": 2.0}) == shards


def test_shard_bad_arguments():
    entries = entries_for(["a"])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_shards"):
            shard_entries(entries, bad)
    with pytest.raises(ValueError, match="'a'"):
        shard_entries(entries, 1, {"a": -1.0})
    with pytest.raises(ValueError, match="'a'"):
        shard_entries(entries, 1, {"a": float("nan")})
    assert shard_entries([], 3) == [[], [], []]


# ---------------------------------------------------------------- scanning and writing


def test_frames_regex():
    rx = frames_regex("frame_{:010d}.jpg")
    assert rx.match("frame_0000000001.jpg") and rx.match("frame_12345678901.jpg")
    assert not rx.match("frame_1.png") and not rx.match("frame_0000000001.jpg.bak")
    assert not rx.match("xframe_0000000001.jpg")
    assert frames_regex("img_{:05d}.png").match("img_00042.png")
    assert frames_regex("{}.jpg").match("7.jpg")
    assert frames_regex("*.jpg").match("a.jpg") and not frames_regex("*.jpg").match("a.png")
    for bad in ("img_{:s}.jpg", "img_{name}.jpg", "img_{.jpg"):
        with pytest.raises(ValueError, match="frames pattern"):
            frames_regex(bad)


def test_scan_videos(tmp_path):
    touch(
        tmp_path,
        "b.MP4",
        "a/x.mkv",
        "a/notes.txt",
        ".hidden/h.mp4",
        "._b.mp4",
        "frames/P01/frame_0000000001.jpg",
        "frames/P02/other.jpg",
        "c.webm",
    )
    assert scan_videos(tmp_path) == ["a/x.mkv", "b.MP4", "c.webm"]
    assert scan_videos(tmp_path, [".mp4", "mkv"]) == ["a/x.mkv", "b.MP4"]
    assert scan_videos(tmp_path, [".mp4"], "frame_{:010d}.jpg") == ["b.MP4", "frames/P01"]
    with pytest.raises(VideoListError, match="not a directory"):
        scan_videos(tmp_path / "b.MP4")


def test_write_video_list_roundtrips_atomically(tmp_path):
    touch(tmp_path, "path", "q.mp4")
    out = tmp_path / "lists" / "video_list.csv"
    assert write_video_list(["path", "q.mp4", "bad\nname.mp4", " pad.mp4"], out) == 2
    assert out.read_text() == "./path\nq.mp4\n"
    assert [e.rel for e in read_video_list(out, tmp_path, None)] == ["path", "q.mp4"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["video_list.csv"]  # no temporary left
    assert format_video_list([]) == ""


def test_make_video_list_script(tmp_path):
    touch(tmp_path, "z.mp4", "a/b.MOV", "frames/v1/img_00001.png", "skip.txt")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_video_list.py"),
            str(tmp_path),
            "--frames",
            "img_{:05d}.png",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "video_list.csv").read_text() == "a/b.MOV\nframes/v1\nz.mp4\n"
    assert "3 paths" in result.stdout
    out = tmp_path / "o.csv"
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_video_list
    finally:
        sys.path.pop(0)
    assert make_video_list.main([str(tmp_path), "--ext", ".mp4", "-o", str(out)]) == 0
    assert out.read_text() == "z.mp4\n"
    assert make_video_list.main([str(tmp_path / "z.mp4")]) == 2
