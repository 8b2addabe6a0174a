"""Tests for pipeline.io: decode order and timestamps by the frame number drawn in each frame, codecs and
containers, rotation, resampling (pure and on videos), frame folders and every kind of bad input."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline import synth
from pipeline.io import DecodeError, Frame, SourceInfo, open_source, probe
from pipeline.io.frames import list_frames, pattern_regex
from pipeline.io.resample import resample

SIZE = (64, 48)


def numbers(frames: list[Frame]) -> list[int]:
    return [synth.read_frame_number(f.image) for f in frames]


def decode_all(path: Path, **kwargs) -> list[Frame]:
    with open_source(path, **kwargs) as source:
        return list(source)


# ---------------------------------------------------------------- resample (pure, no video)


def stamps(times: list[float]) -> list[tuple[int, float]]:
    return [(i, t) for i, t in enumerate(times)]


def reference_resample(times: list[float], fps: float, tol: float = 1e-6) -> list[tuple[int, float]]:
    """The rule written out literally: for each k, the last input whose time <= k / fps."""
    rel = [t - times[0] for t in times]
    out, k = [], 0
    while k / fps <= max(rel) + tol:
        chosen = max(i for i, t in enumerate(rel) if t <= k / fps + tol)
        out.append((chosen, k / fps))
        k += 1
    return out


def test_resample_same_rate_keeps_every_frame():
    times = [i / 30 for i in range(90)]
    out = list(resample(stamps(times), 30))
    assert [i for i, _ in out] == list(range(90))
    assert [t for _, t in out] == pytest.approx(times)


def test_resample_60_to_30_takes_every_other_frame():
    out = list(resample(stamps([i / 60 for i in range(120)]), 30))
    assert [i for i, _ in out] == list(range(0, 120, 2))
    assert [t for _, t in out] == pytest.approx([k / 30 for k in range(60)])


def test_resample_25_to_30_repeats_frames():
    times = [i / 25 for i in range(50)]  # last frame at 1.96 s -> outputs k = 0..58
    out = list(resample(stamps(times), 30))
    assert len(out) == 59
    assert [i for i, _ in out] == [math.floor(k * 25 / 30 + 1e-9) for k in range(59)]
    assert [i for i, _ in out][:8] == [0, 0, 1, 2, 3, 4, 5, 5]


def test_resample_vfr_gives_evenly_spaced_frames():
    # gaps alternate 1/20 s and 1/60 s, starting at 7.5 s (times are relative to the first frame)
    times, t = [], 7.5
    for i in range(40):
        times.append(t)
        t += 1 / 20 if i % 2 == 0 else 1 / 60
    out = list(resample(stamps(times), 30))
    assert out == reference_resample(times, 30)
    assert [i for i, _ in out][:8] == [0, 0, 2, 2, 4, 4, 6, 6]
    assert np.diff([t for _, t in out]) == pytest.approx(1 / 30)


@pytest.mark.parametrize("fps", [7.0, 12.5, 29.97, 50.0, 100.0])
def test_resample_matches_reference_on_irregular_times(fps):
    rng = np.random.default_rng(int(fps * 100))
    times = np.cumsum(rng.uniform(0.001, 0.09, 200)).tolist()
    assert list(resample(stamps(times), fps)) == reference_resample(times, fps)


def test_resample_native_passes_everything_with_relative_times():
    times = [2.0, 2.05, 2.0666, 2.3]
    out = list(resample(stamps(times), None))
    assert [i for i, _ in out] == [0, 1, 2, 3]
    assert [t for _, t in out] == pytest.approx([0.0, 0.05, 0.0666, 0.3])


def test_resample_edges():
    assert list(resample([], 30)) == []
    assert list(resample([], None)) == []
    assert list(resample([("only", 4.0)], 30)) == [("only", 0.0)]
    # tolerance: a frame 1e-7 s late still counts for its target, one 1e-3 s late does not...
    assert [i for i, _ in resample(stamps([0.0, 0.1 + 1e-7]), 10)] == [0, 1]
    assert [i for i, _ in resample(stamps([0.0, 0.1 + 1e-3, 0.2]), 10)] == [0, 0, 2]
    # ...unless the tolerance is widened (Matroska's millisecond timestamps)
    assert [i for i, _ in resample(stamps([0.0, 0.1 + 1e-3, 0.2]), 10, tolerance=2e-3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="fps"):
        list(resample(stamps([0.0]), 0))


def test_resample_is_lazy():
    pulled = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield i, i / 30

    stream = resample(source(), 30)
    assert [next(stream)[0] for _ in range(3)] == [0, 1, 2]
    assert len(pulled) <= 4


# ---------------------------------------------------------------- videos: codecs, containers, timestamps

CODECS = [
    ("h264.mp4", {"codec": "libx264"}),
    ("h264.mkv", {"codec": "libx264"}),
    ("h264.mov", {"codec": "libx264"}),
    ("mpeg4.avi", {"codec": "mpeg4"}),
    ("mpeg4.mkv", {"codec": "mpeg4"}),
    ("vp9.webm", {"codec": "libvpx-vp9"}),
    ("mjpeg.avi", {"codec": "mjpeg"}),
    ("mjpeg.mov", {"codec": "mjpeg"}),
    ("hevc10.mkv", {"codec": "libx265", "pix_fmt": "yuv420p10le"}),
    ("vp9_10.webm", {"codec": "libvpx-vp9", "pix_fmt": "yuv420p10le"}),
]
CODEC_NAMES = {"libx264": "h264", "mpeg4": "mpeg4", "libvpx-vp9": "vp9", "mjpeg": "mjpeg", "libx265": "hevc"}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


def write_or_skip(path: Path, **kwargs) -> int:
    try:
        return synth.write_video(path, **kwargs)
    except (av.FFmpegError, ValueError) as error:
        if "10le" in str(kwargs.get("pix_fmt")):
            pytest.skip(f"this FFmpeg build cannot encode {kwargs['codec']} {kwargs['pix_fmt']}: {error}")
        raise


@pytest.mark.parametrize("name, kwargs", CODECS, ids=[name for name, _ in CODECS])
def test_codec_and_container_decode_in_order(media, name, kwargs):
    path = media / name
    n = write_or_skip(path, size=SIZE, fps=30, seconds=1.0, **kwargs)
    if "pix_fmt" in kwargs:  # really stored as 10-bit
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.pix_fmt == kwargs["pix_fmt"]
    info = probe(path)
    assert (info.kind, info.width, info.height, info.rotation) == ("video", 64, 48, 0)
    assert info.codec == CODEC_NAMES[kwargs["codec"]]
    assert info.native_fps == pytest.approx(30, rel=1e-3)
    assert info.frame_count in (None, n) or abs(info.frame_count - n) <= 1
    with open_source(path) as source:
        assert isinstance(source.info, SourceInfo)
        frames = list(source)
        assert source.frames_decoded == n
    assert numbers(frames) == list(range(n))
    assert [f.index for f in frames] == list(range(n))
    assert [f.time for f in frames] == pytest.approx([i / 30 for i in range(n)], abs=1e-3)
    for f in frames:
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
    # the pixels are the drawn picture (lossy codecs: small mean error), so colours are RGB, not BGR
    errors = [
        np.abs(f.image.astype(int) - synth.render_frame(i, SIZE).astype(int)).mean()
        for i, f in enumerate(frames)
    ]
    assert max(errors) < 8
    swapped = frames[5].image[..., ::-1].astype(int) - synth.render_frame(5, SIZE).astype(int)
    assert np.abs(swapped).mean() > 2 * errors[5]


def test_frames_stay_valid_after_later_frames_decode(media):
    path = media / "keep.mp4"
    synth.write_video(path, size=SIZE, fps=30, seconds=1.0)
    frames = decode_all(path)  # every array kept alive while the decoder moved on
    assert numbers(frames) == list(range(30))


@pytest.mark.parametrize("ext, frames", [("mp4", 1), ("mp4", 3), ("mkv", 2)])
def test_very_short_video_loses_no_frame(media, ext, frames):
    # x264 hands out these packets only when flushed; the decoder then returns several frames at once
    path = media / f"short{frames}.{ext}"
    assert synth.write_video(path, size=SIZE, fps=30, seconds=frames / 30) == frames
    assert numbers(decode_all(path)) == list(range(frames))
    assert numbers(decode_all(path, fps=30)) == list(range(frames))


def test_larger_odd_width_video(media):
    # 3 * 150 bytes per row is not a multiple of FFmpeg's line alignment: the rows get copied contiguous
    path = media / "odd.mp4"
    synth.write_video(path, size=(150, 96), fps=10, seconds=1.0)
    frames = decode_all(path)
    assert numbers(frames) == list(range(10))
    assert all(f.image.shape == (96, 150, 3) and f.image.flags.c_contiguous for f in frames)


def count_conversions(monkeypatch) -> list[int]:
    """Count VideoSource's colour conversions (decoded frame -> RGB array)."""
    from pipeline.io.video import VideoSource

    calls: list[int] = []
    convert = VideoSource._to_array

    def counted(self, frame):
        calls.append(1)
        return convert(self, frame)

    monkeypatch.setattr(VideoSource, "_to_array", counted)
    return calls


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_video_60_to_30_fps(media, ext, monkeypatch):
    path = media / f"sixty.{ext}"
    synth.write_video(path, size=SIZE, fps=60, seconds=1.0)
    conversions = count_conversions(monkeypatch)
    with open_source(path, fps=30) as source:
        frames = list(source)
        assert source.frames_decoded == 60
    assert len(conversions) == 30  # dropped frames are decoded, never converted
    assert numbers(frames) == list(range(0, 60, 2))
    assert [f.time for f in frames] == pytest.approx([k / 30 for k in range(30)])
    assert [f.index for f in frames] == list(range(30))


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_video_25_to_30_fps(media, ext, monkeypatch):
    path = media / f"twentyfive.{ext}"
    codec = "libvpx-vp9" if ext == "webm" else "libx264"
    synth.write_video(path, codec=codec, size=SIZE, fps=25, seconds=2.0)
    conversions = count_conversions(monkeypatch)
    frames = decode_all(path, fps=30)
    assert len(frames) == 59  # last input frame at 1.96 s
    assert numbers(frames) == [math.floor(k * 25 / 30 + 1e-9) for k in range(59)]
    assert (
        len(conversions) == len(set(numbers(frames))) == 49
    )  # each used frame converted once, even if repeated


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_video_vfr(media, ext):
    path = media / f"vfr.{ext}"
    n = synth.write_video(path, size=SIZE, fps=30, seconds=1.0, vfr=True)
    native = decode_all(path)
    assert numbers(native) == list(range(n))
    expected_times = np.cumsum([0] + [1 / 20 if i % 2 == 0 else 1 / 60 for i in range(n - 1)])
    assert [f.time for f in native] == pytest.approx(expected_times.tolist(), abs=1e-3)
    resampled = decode_all(path, fps=30)
    assert numbers(resampled) == [2 * (k // 2) for k in range(len(resampled))]
    assert np.diff([f.time for f in resampled]) == pytest.approx(1 / 30)
    assert len(resampled) == math.floor(expected_times[-1] * 30 + 1e-6) + 1


def test_native_rate_29_97(media):
    path = media / "ntsc.mp4"
    n = synth.write_video(path, size=SIZE, fps=30000 / 1001, seconds=1.0)
    info = probe(path)
    assert info.native_fps == pytest.approx(30000 / 1001, rel=1e-4)
    frames = decode_all(path)
    assert [f.time for f in frames] == pytest.approx([i * 1001 / 30000 for i in range(n)], abs=1e-4)


# ---------------------------------------------------------------- rotation


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_comes_out_upright(media, rotation):
    path = media / f"rot{rotation}.mp4"
    n = synth.write_video(path, size=SIZE, fps=30, seconds=0.5, rotation=rotation)
    with av.open(str(path)) as container:  # stored sideways (for 90/270), with a display matrix
        raw = next(container.decode(video=0))
        stored_shape = (raw.height, raw.width)
        assert raw.rotation % 360 == rotation
    assert stored_shape == ((64, 48) if rotation % 180 else (48, 64))
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (64, 48, rotation)
    frames = decode_all(path)
    assert numbers(frames) == list(range(n))
    assert all(f.image.shape == (48, 64, 3) and f.image.flags.c_contiguous for f in frames)
    error = np.abs(frames[3].image.astype(int) - synth.render_frame(3, SIZE).astype(int)).mean()
    assert error < 8


def test_phone_portrait_display_matrix(media):
    """A phone's portrait clip: sensor frames stored landscape, tkhd matrix [0 1 0; -1 0 0; 0 0 1]
    (FFmpeg reports "rotation of -90 degrees"; players turn the picture 90 degrees clockwise)."""
    path = media / "phone.mov"
    upright_size = (48, 64)  # portrait (w, h)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_matrix([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30])
        for i in range(6):
            stored = np.ascontiguousarray(
                np.rot90(synth.render_frame(i, upright_size), 1)
            )  # upright turned ccw
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode(None))
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (48, 64, 270)
    frames = decode_all(path)
    assert numbers(frames) == list(range(6))
    assert frames[0].image.shape == (64, 48, 3)


@pytest.mark.parametrize("rotation", [0, 90])
def test_decoder_resize(media, rotation):
    path = media / f"resize{rotation}.mp4"
    synth.write_video(path, size=(128, 96), fps=10, seconds=1.0, rotation=rotation)
    with open_source(path, resize=(64, 48)) as source:
        assert (source.info.width, source.info.height) == (64, 48)
        frames = list(source)
    assert all(f.image.shape == (48, 64, 3) for f in frames)
    assert numbers(frames) == list(range(10))  # the blocks survive the 2x downscale, upright


def test_decoder_resize_function_of_source_size(media):
    path = media / "portrait.mp4"
    synth.write_video(path, size=(128, 96), fps=10, seconds=0.5, rotation=270)
    seen = []

    def half(width, height):
        seen.append((width, height))
        return width // 2, height // 2

    with open_source(path, resize=half) as source:
        frames = list(source)
    assert seen == [(128, 96)]  # called once, with the upright size
    assert frames[0].image.shape == (48, 64, 3) and numbers(frames) == list(range(5))
    folder = media / "folder_sizes"
    synth.write_frame_folder(folder, 3, size=(128, 96))
    frames = decode_all(folder, resize=half)
    assert frames[0].image.shape == (48, 64, 3) and numbers(frames) == [0, 1, 2]


def test_resize_to_native_size_changes_nothing(media):
    path = media / "same.mp4"
    synth.write_video(path, size=SIZE, fps=10, seconds=0.5)
    plain, same = decode_all(path), decode_all(path, resize=SIZE)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(plain, same, strict=True))


def test_close_stops_iteration(media):
    path = media / "close.mkv"
    synth.write_video(path, size=SIZE, fps=30, seconds=1.0)
    source = open_source(path)
    assert [f.index for f in (next(source), next(source))] == [0, 1]
    source.close()
    source.close()  # idempotent
    with pytest.raises(StopIteration):
        next(source)


def test_threads_setting_gives_same_frames(media):
    path = media / "threads.mp4"
    synth.write_video(path, size=SIZE, fps=30, seconds=0.5)
    one = decode_all(path, threads=1)
    auto = decode_all(path, threads=0)
    assert numbers(one) == numbers(auto) == list(range(15))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, auto, strict=True))


# ---------------------------------------------------------------- bad inputs


def assert_one_line(error: pytest.ExceptionInfo, path: Path, cause: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert cause in message


def check_bad(path: Path, cause: str) -> None:
    for call in (probe, open_source):
        with pytest.raises(DecodeError) as error:
            call(path)
        assert_one_line(error, path, cause)
        assert error.value.path == path


def test_missing_file(tmp_path):
    check_bad(tmp_path / "nope.mp4", "file not found")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    check_bad(tmp_path / "empty.mp4", "empty file")


def test_random_bytes(tmp_path):
    synth.write_random_bytes(tmp_path / "noise.mp4", 10_000)
    check_bad(tmp_path / "noise.mp4", "cannot open: Invalid data")


@pytest.mark.parametrize("name", ["tone.m4a", "tone.wav"])
def test_audio_only(tmp_path, name):
    synth.write_audio_only(tmp_path / name, seconds=0.3)
    check_bad(tmp_path / name, "no video stream")


def test_zero_decodable_frames(tmp_path):
    synth.write_empty_video(tmp_path / "empty_track.mkv")
    check_bad(tmp_path / "empty_track.mkv", "zero decodable frames")


def test_corrupt_video_data(tmp_path):
    synth.write_corrupt_video(tmp_path / "garbage.ts")
    check_bad(tmp_path / "garbage.ts", "decode error before the first frame: Invalid data")


def test_truncated_mp4_without_index(media, tmp_path):
    synth.write_video(media / "full.mp4", size=SIZE, fps=30, seconds=1.0)
    synth.write_truncated_copy(media / "full.mp4", tmp_path / "cut.mp4", 0.5)  # the moov index is at the end
    check_bad(tmp_path / "cut.mp4", "cannot open")


def test_truncated_mjpeg_avi_fails_mid_stream(media, tmp_path):
    synth.write_video(media / "full.avi", codec="mjpeg", size=SIZE, fps=30, seconds=1.0)
    with av.open(str(media / "full.avi")) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    pos, size = packets[15]
    cut = tmp_path / "cut.avi"
    cut.write_bytes((media / "full.avi").read_bytes()[: pos + size // 4])  # inside the 16th JPEG
    assert probe(cut).kind == "video"  # the start is fine
    got = []
    with pytest.raises(DecodeError) as error, open_source(cut) as source:
        got.extend(source)
    assert_one_line(error, cut, "truncated: decode error at 0.5 s: ")
    assert numbers(got) == list(range(15))


def test_truncated_mkv_yields_a_prefix(media, tmp_path):
    synth.write_video(media / "full.mkv", size=SIZE, fps=30, seconds=1.0)
    cut = tmp_path / "cut.mkv"
    synth.write_truncated_copy(media / "full.mkv", cut, 0.5)
    frames = decode_all(cut)  # FFmpeg stops quietly at the cut: fewer frames, no error
    assert 0 < len(frames) < 30
    assert numbers(frames) == list(range(len(frames)))


def test_invalid_fps(tmp_path):
    synth.write_video(tmp_path / "ok.mp4", size=SIZE, seconds=0.2)
    with pytest.raises(ValueError, match="fps"):
        open_source(tmp_path / "ok.mp4", fps=0)


# ---------------------------------------------------------------- frame folders


def test_pattern_regex():
    assert pattern_regex("frame_{:010d}.jpg").fullmatch("frame_0000000012.jpg").group(1) == "0000000012"
    assert pattern_regex("img_{:05d}.png").fullmatch("img_00007.png")
    assert pattern_regex("img_{:05d}.png").fullmatch("img_00007.jpg") is None
    assert pattern_regex("a.b{}.jpg").fullmatch("axb1.jpg") is None  # literal dot is escaped
    assert pattern_regex("{:d}.jpg").fullmatch("123.jpg")
    for bad in ("frames.jpg", "{}_{}.jpg", "{:5d}.jpg", "{name}.jpg", "{:.2f}.jpg"):
        with pytest.raises(ValueError, match="frames pattern"):
            pattern_regex(bad)


def test_frame_folder_numeric_order_and_filtering(tmp_path):
    folder = tmp_path / "clip"
    paths = synth.write_frame_folder(folder, 12, pattern="img_{:d}.png", size=SIZE, start=1)
    assert [p.name for p in paths][:3] == ["img_1.png", "img_2.png", "img_3.png"]
    (folder / "notes.txt").write_text("not a frame")
    (folder / "img_x.png").write_bytes(b"ignored")
    (folder / "thumb.png").write_bytes(paths[0].read_bytes())
    (folder / "img_5.png.bak").write_bytes(b"ignored")
    assert [p.name for p in list_frames(folder, "img_{:d}.png")] == [f"img_{i}.png" for i in range(1, 13)]
    info = probe(folder, frames_pattern="img_{:d}.png", frames_fps=12.5)
    assert (info.kind, info.width, info.height, info.frame_count) == ("frames", 64, 48, 12)
    assert info.native_fps == 12.5 and info.duration == pytest.approx(12 / 12.5)
    with open_source(folder, fps=None, frames_pattern="img_{:d}.png", frames_fps=12.5) as source:
        frames = list(source)
        assert source.frames_decoded == 12
    assert numbers(frames) == list(range(12))  # 2 before 10, unlike a string sort
    assert [f.time for f in frames] == pytest.approx([k / 12.5 for k in range(12)])
    assert np.array_equal(frames[4].image, synth.render_frame(4, SIZE))  # png is lossless
    assert all(f.image.flags.c_contiguous and f.image.dtype == np.uint8 for f in frames)


def test_frame_folder_resample_and_resize(tmp_path, monkeypatch):
    from pipeline.io import frames as frames_module

    folder = tmp_path / "clip"
    synth.write_frame_folder(folder, 20, size=(128, 96))  # default pattern frame_{:010d}.jpg
    read, original = [], frames_module.read_image

    def counted(*args):
        read.append(args[1].name)
        return original(*args)

    monkeypatch.setattr(frames_module, "read_image", counted)
    frames = decode_all(folder, fps=15, frames_fps=30, resize=(64, 48))
    assert len(read) == 10  # files that resampling drops are never read
    assert numbers(frames) == list(range(0, 20, 2))
    assert frames[0].image.shape == (48, 64, 3)


def test_frame_folder_grayscale_becomes_rgb(tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    Image.fromarray(np.full((10, 12), 77, np.uint8), mode="L").save(folder / "frame_0000000001.png")
    frames = decode_all(folder, frames_pattern="frame_{:010d}.png")
    assert frames[0].image.shape == (10, 12, 3) and (frames[0].image == 77).all()


def test_frame_folder_bad_image(tmp_path):
    folder = tmp_path / "clip"
    synth.write_frame_folder(folder, 5, size=SIZE)
    (folder / "frame_0000000004.jpg").write_text("this is text, not a JPEG")
    with pytest.raises(DecodeError) as error, open_source(folder) as source:
        list(source)
    assert_one_line(error, folder, "not an image: frame_0000000004.jpg")
    # a bad first file fails already at open
    (folder / "frame_0000000001.jpg").write_bytes(b"")
    with pytest.raises(DecodeError, match="not an image: frame_0000000001.jpg"):
        open_source(folder)


def test_frame_folder_truncated_jpeg(tmp_path):
    folder = tmp_path / "clip"
    paths = synth.write_frame_folder(folder, 3, size=(128, 96))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    with (
        pytest.raises(DecodeError, match="not an image: frame_0000000002.jpg"),
        open_source(folder) as source,
    ):
        list(source)


def test_empty_frame_folder(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    check_bad(tmp_path, "no files matching 'frame_{:010d}.jpg'")
