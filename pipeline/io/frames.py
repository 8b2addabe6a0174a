"""Folders of frame images (`frame_0000000001.jpg`, ...): numeric order, read with Pillow.

Files are matched against a Python format pattern with one integer field and ordered by that number
(so 2 comes before 10); other files are ignored. Frame k (in that order) has time k / fps. EXIF
orientation is not applied: extracted frames are stored upright.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.io.source import DecodeError, FrameSource, LoadImage, Resize, SourceInfo


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a format pattern like `frame_{:010d}.jpg`: literals escaped, the one field -> digits."""
    parts: list[str] = []
    fields = 0
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as error:
        raise ValueError(f"frames pattern {pattern!r}: {error}") from error
    for literal, field, spec, conversion in parsed:
        parts.append(re.escape(literal))
        if field is None:
            continue
        fields += 1
        if field not in ("", "0") or conversion or not re.fullmatch(r"(0\d+)?d?", spec or ""):
            raise ValueError(
                f"frames pattern {pattern!r}: only {{}}, {{:d}} or {{:0Nd}} fields are supported"
            )
        parts.append(r"(\d+)")
    if fields != 1:
        raise ValueError(f"frames pattern {pattern!r}: needs exactly one number field (found {fields})")
    return re.compile("".join(parts))


def list_frames(folder: Path, pattern: str) -> list[Path]:
    """Files of `folder` matching `pattern`, ordered by their number (then by name)."""
    regex = pattern_regex(pattern)
    found: list[tuple[int, str, Path]] = []
    for entry in Path(folder).iterdir():
        match = regex.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry.name, entry))
    found.sort(key=lambda item: (item[0], item[1]))
    return [entry for _, _, entry in found]


def _frame_files(folder: Path, pattern: str) -> list[Path]:
    if not folder.is_dir():
        raise DecodeError(folder, "frame folder not found")
    files = list_frames(folder, pattern)
    if not files:
        raise DecodeError(folder, f"no files matching {pattern!r}")
    return files


def _open_image(folder: Path, file: Path) -> Image.Image:
    try:
        return Image.open(file)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DecodeError(folder, f"not an image: {file.name}") from error


def _target(resize: Resize | None, width: int, height: int) -> tuple[int, int]:
    size = resize(width, height) if callable(resize) else resize
    return (width, height) if size is None else (int(size[0]), int(size[1]))


def read_image(folder: Path, file: Path, resize: Resize | None = None) -> np.ndarray:
    """One frame file as (H, W, 3) uint8 RGB (resized with Pillow's bilinear filter when asked)."""
    image = _open_image(folder, file)
    try:
        with image:
            image.load()
            rgb = image.convert("RGB")
            target = _target(resize, *rgb.size)
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.BILINEAR)
            return np.array(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        raise DecodeError(folder, f"not an image: {file.name} ({error})") from error


def probe_frames(folder: Path, *, pattern: str, fps: float) -> SourceInfo:
    """File names and the first image's header (no pixel decoding)."""
    folder = Path(folder)
    return _folder_info(folder, _frame_files(folder, pattern), fps)


def _folder_info(folder: Path, files: list[Path], fps: float) -> SourceInfo:
    with _open_image(folder, files[0]) as image:
        width, height = image.size
    return SourceInfo(
        path=folder,
        kind="frames",
        width=width,
        height=height,
        native_fps=float(fps),
        duration=len(files) / float(fps),
        frame_count=len(files),
        codec=None,
        rotation=0,
    )


class FolderSource(FrameSource):
    """Frames of a folder in numeric order; see `pipeline.io.open_source`."""

    def __init__(
        self,
        folder: Path,
        *,
        fps: float | None = None,
        pattern: str,
        frames_fps: float,
        resize: Resize | None = None,
    ) -> None:
        if not frames_fps > 0:
            raise ValueError(f"frames_fps must be > 0 (got {frames_fps})")
        self.path = Path(folder)
        files = _frame_files(self.path, pattern)
        self._files: list[Path] | None = files
        self._frames_fps = float(frames_fps)
        self._resize = resize  # resolved per image: folders may mix sizes
        info = _folder_info(self.path, files, frames_fps)
        width, height = _target(resize, info.width, info.height)
        if min(width, height) < 1:
            raise ValueError(f"resize must be (width, height) >= 1 (got {(width, height)})")
        info = dataclasses.replace(info, width=width, height=height)
        super().__init__(info, fps)

    def _decode(self) -> Iterator[tuple[LoadImage, float]]:
        for k, file in enumerate(self._files or []):
            if self._files is None:  # closed
                return
            yield partial(read_image, self.path, file, self._resize), k / self._frames_fps

    def close(self) -> None:
        """Stop reading (idempotent)."""
        self._files = None
