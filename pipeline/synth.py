"""Synthetic test media: videos whose frames carry their own number, frame folders, broken files, demo set.

Every frame shows a moving colour gradient (top third) above a 8 x 2 grid of big black/white blocks
(bottom two thirds) that encode the frame number (12 bits) and a 4-bit check, so `read_frame_number`
recovers the number from a decoded frame even after lossy compression at 64 x 48.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

NUMBER_BITS = 12
CHECK_BITS = 4
GRID_COLS, GRID_ROWS = 8, 2
MAX_FRAME_NUMBER = 2**NUMBER_BITS - 1
_ON, _OFF = 235, 20
# VFR videos alternate these gaps between frames (seconds): 1/20 then 1/60.
VFR_TIME_BASE = Fraction(1, 600)
VFR_GAPS = (30, 10)  # in VFR_TIME_BASE ticks


def _check(number: int) -> int:
    return ((number ^ (number >> 4) ^ (number >> 8)) & 0xF) ^ 0b1010


def _bits(number: int) -> list[int]:
    word = (number << CHECK_BITS) | _check(number)
    total = NUMBER_BITS + CHECK_BITS
    return [(word >> (total - 1 - i)) & 1 for i in range(total)]


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges: x edges (GRID_COLS + 1) and y edges (GRID_ROWS + 1) of the block area."""
    top = height // 3
    xs = np.linspace(0, width, GRID_COLS + 1).round().astype(int)
    ys = np.linspace(top, height, GRID_ROWS + 1).round().astype(int)
    return xs, ys


def render_frame(number: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """The upright (H, W, 3) uint8 RGB picture of frame `number` at size (width, height)."""
    if not 0 <= number <= MAX_FRAME_NUMBER:
        raise ValueError(f"frame number {number} is outside 0..{MAX_FRAME_NUMBER}")
    width, height = size
    image = np.empty((height, width, 3), dtype=np.uint8)
    x = np.arange(width, dtype=np.float64)[None, :] / width
    y = np.arange(height, dtype=np.float64)[:, None] / max(height // 3, 1)
    phase = number / 30.0
    image[..., 0] = 128 + 90 * np.sin(2 * np.pi * (x + phase / 2))
    image[..., 1] = 128 + 90 * np.sin(2 * np.pi * (y / 2 + x / 3 + phase / 3))
    image[..., 2] = 128 + 90 * np.cos(2 * np.pi * (x / 2 - phase / 5))
    xs, ys = _grid(width, height)
    for i, bit in enumerate(_bits(number)):
        row, col = divmod(i, GRID_COLS)
        image[ys[row] : ys[row + 1], xs[col] : xs[col + 1]] = _ON if bit else _OFF
    return image


def read_frame_number(image: np.ndarray) -> int:
    """Recover the number drawn by `render_frame` from a decoded (H, W, 3) frame; ValueError if garbled."""
    height, width = image.shape[:2]
    xs, ys = _grid(width, height)
    word = 0
    for i in range(NUMBER_BITS + CHECK_BITS):
        row, col = divmod(i, GRID_COLS)
        y0, y1, x0, x1 = ys[row], ys[row + 1], xs[col], xs[col + 1]
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4  # central half of the cell
        cell = image[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
        word = (word << 1) | int(cell.mean() > (_ON + _OFF) / 2)
    number, check = word >> CHECK_BITS, word & (2**CHECK_BITS - 1)
    if check != _check(number):
        raise ValueError(f"no valid frame number in this image (read {number}, check bits differ)")
    return number


def _default_pix_fmt(codec: str) -> str:
    return "yuvj420p" if codec == "mjpeg" else "yuv420p"


def _codec_options(codec: str) -> dict[str, str]:
    if codec == "libx265":
        return {"x265-params": "log-level=error"}
    if codec in ("libvpx-vp9", "libvpx"):
        return {"deadline": "realtime", "cpu-used": "8"}
    return {}


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    fps: float = 30,
    seconds: float = 2.0,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int = 0,
    vfr: bool = False,
    first_number: int = 0,
) -> int:
    """Encode a numbered test video at `path` (format from the extension); returns the frames written.

    `size` is the displayed (upright) size; with `rotation` (counter-clockwise degrees, multiple of 90)
    the frames are stored turned the other way and the display matrix says how to turn them back.
    `vfr`: timestamps alternate 1/20 s and 1/60 s gaps, over `seconds` like the constant-rate case.
    """
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees (got {rotation})")
    turns = (rotation // 90) % 4
    width, height = size
    stored = (height, width) if turns % 2 else (width, height)
    rate = Fraction(fps).limit_denominator(1001)
    if vfr:
        ticks, t = [], 0
        while t * VFR_TIME_BASE < seconds:
            ticks.append(t)
            t += VFR_GAPS[len(ticks) % 2 == 0]
        time_base = VFR_TIME_BASE
    else:
        count = int(round(seconds * rate))
        ticks, time_base = list(range(count)), 1 / rate
    if first_number + len(ticks) - 1 > MAX_FRAME_NUMBER:
        raise ValueError(f"too many frames for the {NUMBER_BITS}-bit frame number ({len(ticks)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options={**_codec_options(codec), **(options or {})})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = stored
        stream.pix_fmt = pix_fmt or _default_pix_fmt(codec)
        stream.codec_context.time_base = time_base
        if vfr:
            stream.time_base = time_base
        if turns:
            stream.set_display_rotation(90 * turns)
        for i, tick in enumerate(ticks):
            picture = render_frame(first_number + i, size)
            if turns:
                picture = np.ascontiguousarray(np.rot90(picture, -turns))
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = tick, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return len(ticks)


def write_frame_folder(
    folder: Path,
    n: int,
    *,
    pattern: str = "frame_{:010d}.jpg",
    size: tuple[int, int] = (64, 48),
    start: int = 1,
) -> list[Path]:
    """Write frames 0..n-1 (drawn as by `render_frame`) named `pattern.format(start + i)`; returns paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / pattern.format(start + i)
        image = Image.fromarray(render_frame(i, size))
        options: dict[str, Any] = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
        image.save(path, **options)
        paths.append(path)
    return paths


def write_audio_only(path: Path, seconds: float = 1.0) -> None:
    """A file with one audio stream (a 440 Hz tone) and no video: PCM for .wav, AAC otherwise."""
    path = Path(path)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    rate = 44100
    total = int(seconds * rate)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / rate)).astype(np.float32)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        chunk = 4410
        for start in range(0, total, chunk):
            samples = tone[None, start : start + chunk]
            if codec == "pcm_s16le":
                frame = av.AudioFrame.from_ndarray(
                    (samples * 32767).astype(np.int16), format="s16", layout="mono"
                )
            else:
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> int:
    """Copy the first `fraction` of the bytes of `src` to `dst`; returns the bytes written."""
    data = Path(src).read_bytes()
    keep = data[: int(len(data) * fraction)]
    Path(dst).write_bytes(keep)
    return len(keep)


def write_random_bytes(path: Path, n: int = 4096, seed: int = 0) -> None:
    """`n` deterministic random bytes (not any media format)."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())


# (relative path, writer arguments) of the demo set; the frame folder is added separately.
DEMO_VIDEOS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("clip_h264.mp4", {"codec": "libx264", "size": (320, 240), "fps": 30, "seconds": 4.0}),
    ("clip_vp9.webm", {"codec": "libvpx-vp9", "size": (256, 144), "fps": 25, "seconds": 3.0}),
    ("clip_mpeg4.avi", {"codec": "mpeg4", "size": (160, 120), "fps": 24, "seconds": 2.0}),
)
DEMO_FRAMES: tuple[str, dict[str, Any]] = (
    "clip_frames",
    {"n": 45, "size": (128, 96), "pattern": "frame_{:010d}.jpg"},
)
DEMO_LIST = "video_list.csv"


def make_demo_videos(root: Path) -> list[str]:
    """Write the demo set and `root/video_list.csv` (header `path`); returns the listed relative paths.

    Idempotent: when the list already exists nothing is written. Atomic: everything is made in a
    temporary folder inside `root` and moved in place, the list last.
    """
    root = Path(root)
    entries = [name for name, _ in DEMO_VIDEOS] + [DEMO_FRAMES[0]]
    listing = root / DEMO_LIST
    if listing.exists():
        log.info("demo videos already in %s", root)
        return entries
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".demo.lock", "a") as lock:  # concurrent sweep jobs: one builds, the others wait
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if listing.exists():
            log.info("demo videos already in %s", root)
            return entries
        with tempfile.TemporaryDirectory(dir=root, prefix=".demo-") as tmp:
            staging = Path(tmp)
            for name, kwargs in DEMO_VIDEOS:
                write_video(staging / name, **kwargs)
            folder_name, folder_kwargs = DEMO_FRAMES
            write_frame_folder(staging / folder_name, **folder_kwargs)
            for name in entries:
                target = root / name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(staging / name, target)
            (staging / DEMO_LIST).write_text("path\n" + "".join(f"{name}\n" for name in entries))
            os.replace(staging / DEMO_LIST, listing)
    log.info("wrote %d demo videos to %s", len(entries), root)
    return entries


def write_empty_video(path: Path) -> None:
    """A Matroska file with an H.264 video track that holds no frame, next to a short audio track."""
    with av.open(str(path), mode="w", format="matroska") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4410), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


def write_corrupt_video(path: Path, packets: int = 10, seed: int = 0) -> None:
    """An MPEG-TS file whose H.264 packets are random bytes behind an IDR-slice start code."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.open()
        for i in range(packets):
            payload = b"\x00\x00\x00\x01\x65" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes()
            packet = av.Packet(payload)
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base, packet.is_keyframe = Fraction(1, 30), True
            container.mux(packet)
