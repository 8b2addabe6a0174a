"""Tests for pipeline.synth, checked with plain PyAV / Pillow (not with pipeline.io)."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline import synth


def raw_frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (160, 120), (33, 25)])
def test_render_and_read_round_trip(size):
    for number in (0, 1, 2, 37, 255, 1000, synth.MAX_FRAME_NUMBER):
        image = synth.render_frame(number, size)
        assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
        assert synth.read_frame_number(image) == number


def test_frames_differ_and_gradient_moves():
    a, b = synth.render_frame(10), synth.render_frame(11)
    top = a.shape[0] // 3
    assert not np.array_equal(a[:top], b[:top])  # the gradient moves
    with pytest.raises(ValueError, match="outside"):
        synth.render_frame(synth.MAX_FRAME_NUMBER + 1)


def test_read_rejects_garbage():
    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(50):
        try:
            synth.read_frame_number(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        except ValueError:
            rejected += 1
    assert rejected >= 40  # a 4-bit check lets ~1/16 through
    for number in (5, 100, 1234, 4000):  # upside down: never the right number
        upside_down = np.ascontiguousarray(synth.render_frame(number)[::-1, ::-1])
        try:
            assert synth.read_frame_number(upside_down) != number
        except ValueError:
            pass


def test_write_video_cfr_with_plain_pyav(tmp_path):
    path = tmp_path / "a.mp4"
    assert synth.write_video(path, size=(64, 48), fps=25, seconds=1.2) == 30
    frames = raw_frames(path)
    assert len(frames) == 30
    assert [float(f.time) for f in frames] == pytest.approx([i / 25 for i in range(30)])
    assert [synth.read_frame_number(f.to_ndarray(format="rgb24")) for f in frames] == list(range(30))
    assert (frames[0].width, frames[0].height) == (64, 48)


def test_write_video_vfr_timestamps(tmp_path):
    path = tmp_path / "v.mkv"
    n = synth.write_video(path, size=(64, 48), seconds=1.0, vfr=True)
    times = [float(f.time) for f in raw_frames(path)]
    assert len(times) == n == 30  # 15 pairs of 1/20 + 1/60 s = 1 s
    assert np.diff(times)[:4] == pytest.approx([1 / 20, 1 / 60, 1 / 20, 1 / 60], abs=1e-3)


def test_write_video_rotation_metadata(tmp_path):
    path = tmp_path / "r.mp4"
    synth.write_video(path, size=(64, 48), seconds=0.2, rotation=90)
    frame = raw_frames(path)[0]
    assert (frame.width, frame.height, frame.rotation) == (48, 64, 90)
    stored = frame.to_ndarray(format="rgb24")
    assert synth.read_frame_number(np.ascontiguousarray(np.rot90(stored, 1))) == 0
    with pytest.raises(ValueError, match="multiple of 90"):
        synth.write_video(tmp_path / "x.mp4", rotation=45)


def test_write_video_options(tmp_path):
    path = tmp_path / "q.mkv"
    synth.write_video(path, codec="mpeg4", fps=Fraction(30000, 1001), seconds=0.5, options={"qscale": "2"})
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "mpeg4"
        assert float(stream.average_rate) == pytest.approx(30000 / 1001, rel=1e-3)


def test_write_frame_folder(tmp_path):
    paths = synth.write_frame_folder(tmp_path / "f", 3, pattern="img_{:05d}.png", start=7)
    assert [p.name for p in paths] == ["img_00007.png", "img_00008.png", "img_00009.png"]
    assert np.array_equal(np.asarray(Image.open(paths[2]).convert("RGB")), synth.render_frame(2))
    jpgs = synth.write_frame_folder(tmp_path / "g", 2)
    assert jpgs[0].name == "frame_0000000001.jpg"
    assert synth.read_frame_number(np.asarray(Image.open(jpgs[1]).convert("RGB"))) == 1


def test_broken_file_writers(tmp_path):
    synth.write_audio_only(tmp_path / "a.m4a", seconds=0.2)
    with av.open(str(tmp_path / "a.m4a")) as container:
        assert not container.streams.video and len(container.streams.audio) == 1
    synth.write_random_bytes(tmp_path / "r1", 100)
    synth.write_random_bytes(tmp_path / "r2", 100)
    assert (tmp_path / "r1").read_bytes() == (tmp_path / "r2").read_bytes() and (
        tmp_path / "r1"
    ).stat().st_size == 100
    (tmp_path / "src").write_bytes(bytes(range(200)))
    assert synth.write_truncated_copy(tmp_path / "src", tmp_path / "dst", 0.25) == 50
    assert (tmp_path / "dst").read_bytes() == bytes(range(50))
    synth.write_empty_video(tmp_path / "e.mkv")
    with av.open(str(tmp_path / "e.mkv")) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        assert sum(1 for p in container.demux(video=0) if p.size) == 0
    synth.write_corrupt_video(tmp_path / "c.ts", packets=7)
    with av.open(str(tmp_path / "c.ts")) as container:
        assert sum(1 for p in container.demux(video=0) if p.size) == 7


def test_make_demo_videos(tmp_path):
    root = tmp_path / "demo"
    entries = synth.make_demo_videos(root)
    assert 3 <= len(entries) <= 5
    with open(root / "video_list.csv", newline="") as f:
        rows = [row[0] for row in csv.reader(f)]
    assert rows == ["path", *entries]
    assert not [p for p in root.iterdir() if p.name.startswith(".demo-")]  # no staging leftovers
    sizes, codecs = set(), set()
    for entry in entries:
        path = root / entry
        if path.is_dir():
            files = sorted(path.iterdir())
            assert len(files) > 10
            assert synth.read_frame_number(np.asarray(Image.open(files[-1]).convert("RGB"))) == len(files) - 1
            continue
        frames = raw_frames(path)
        with av.open(str(path)) as container:
            codecs.add(container.streams.video[0].codec_context.name)
        sizes.add((frames[0].width, frames[0].height))
        assert synth.read_frame_number(frames[-1].to_ndarray(format="rgb24")) == len(frames) - 1
    assert len(codecs) >= 3 and len(sizes) >= 3
    # idempotent: a second call writes nothing
    stamp = (root / "video_list.csv").stat().st_mtime_ns
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert synth.make_demo_videos(root) == entries
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert (root / "video_list.csv").stat().st_mtime_ns == stamp
