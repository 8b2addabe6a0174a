"""Video lists: parse, resolve against the data root, refuse collisions, shard, and scan a tree.

Pure apart from existence checks on the file system. A list is one path per line, relative to the data
root, with or without the video extension; a directory is a frame folder.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io.frames import pattern_regex
from pipeline.naming import VIDEO_EXTENSIONS, has_video_extension, video_key
from pipeline.outputs import atomic_write

log = logging.getLogger(__name__)

HEADER = "path"


class VideoListError(PipelineError):
    """A problem with the whole list (unreadable, colliding entries): the run refuses to start."""


@dataclass(frozen=True, slots=True)
class VideoEntry:
    """One video of the list, resolved against the data root."""

    rel: str  # normalised relative posix path (with the extension for files; "a" for folder a/)
    path: Path  # absolute path under root
    key: str  # naming.video_key(rel): identity for outputs and duplicates
    error: str | None = None  # per-entry problem, recorded as a failed video


def parse_video_list(text: str) -> list[str]:
    """Paths of a list text, one per line, in order.

    Tolerates CRLF, a UTF-8 BOM, blank lines, surrounding whitespace and a header line "path"
    (case-insensitive, first non-blank line only).
    """
    lines = [line.strip() for line in text.removeprefix("\ufeff").splitlines()]
    lines = [line for line in lines if line]
    if lines and lines[0].lower() == HEADER:
        lines = lines[1:]
    return lines


def _normalise_ext(ext: str) -> str:
    ext = ext.strip()
    return ext if ext.startswith(".") else "." + ext


def _resolve_one(line: str, root: Path, video_ext: str | None) -> VideoEntry:
    """Resolve one list line; problems specific to this line go into VideoEntry.error."""
    if line.startswith("/"):
        return VideoEntry(
            rel=line, path=Path(line), key=video_key(line), error=f"absolute path not allowed: {line}"
        )
    rel = posixpath.normpath(line)
    if rel == ".." or rel.startswith("../"):
        return VideoEntry(
            rel=rel, path=root / rel, key=video_key(rel), error=f"path escapes the data root: {line}"
        )
    if rel == ".":
        return VideoEntry(rel=rel, path=root, key=rel, error=f"path names the data root itself: {line}")
    path = root / rel
    # only a video_ext can change what a line names (one stat; none without it: a million-line list)
    if video_ext and not os.path.exists(path):
        if os.path.exists(f"{path}{video_ext}") or not has_video_extension(rel):
            rel = rel + video_ext
            path = root / rel
    return VideoEntry(rel=rel, path=path, key=video_key(rel))


def resolve_entries(lines: Sequence[str], root: Path, video_ext: str | None) -> list[VideoEntry]:
    """Resolve list lines against root: dedup identical entries, refuse two entries with one key.

    Each line names an existing file, an existing directory (frame folder), root/(line + video_ext),
    or, when missing, is kept (with video_ext appended unless it already has a video extension) so
    the runner reports it missing. Absolute and root-escaping paths become entries with `error` set.
    Raises VideoListError naming both entries when different paths share a key (a.mp4 and a.mkv).
    """
    root = Path(root).absolute()
    ext = _normalise_ext(video_ext) if video_ext else None
    entries: list[VideoEntry] = []
    seen: dict[str, VideoEntry] = {}
    for line in lines:
        entry = _resolve_one(line, root, ext)
        previous = seen.setdefault(entry.key, entry)
        if previous is not entry:
            if previous.rel == entry.rel:
                continue
            raise VideoListError(
                f"video list entries {previous.rel!r} and {entry.rel!r} share the output key {entry.key!r}"
            )
        entries.append(entry)
    return entries


def read_video_list(list_path: Path, root: Path, video_ext: str | None) -> list[VideoEntry]:
    """Read and resolve a video list file; VideoListError if it cannot be read or decoded."""
    try:
        text = Path(list_path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VideoListError(f"cannot read video list {list_path}: {exc}") from exc
    return resolve_entries(parse_video_list(text), root, video_ext)


def shard_entries(
    entries: Sequence[VideoEntry], num_shards: int, weights: Mapping[str, float] | None = None
) -> list[list[VideoEntry]]:
    """Split entries into num_shards balanced, disjoint, covering shards; deterministic.

    Greedy longest-first: entries by decreasing weight (ties by key, then list position) go to the
    currently lightest shard (ties: lowest shard index). Each shard keeps list order. weights maps
    key -> weight (e.g. duration); missing keys get the mean of the known weights (1.0 without any).
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    weights = dict(weights or {})
    for key, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of {key!r} must be finite and >= 0, got {value}")
    known = [weights[e.key] for e in entries if e.key in weights]
    default = sum(known) / len(known) if known else 1.0
    weight_of = [float(weights.get(e.key, default)) for e in entries]
    order = sorted(range(len(entries)), key=lambda i: (-weight_of[i], entries[i].key, i))
    loads = [0.0] * num_shards
    members: list[list[int]] = [[] for _ in range(num_shards)]
    for i in order:
        target = min(range(num_shards), key=lambda s: (loads[s], s))
        loads[target] += weight_of[i]
        members[target].append(i)
    return [[entries[i] for i in sorted(m)] for m in members]


def frames_regex(pattern: str) -> re.Pattern[str]:
    """Regex for frame file names from a format string ("frame_{:010d}.jpg") or, without braces, a glob."""
    if "{" not in pattern:
        return re.compile(fnmatch.translate(pattern))
    return re.compile(pattern_regex(pattern).pattern + r"\Z")


def scan_videos(
    root: Path, exts: Iterable[str] | None = None, frames_pattern: str | None = None
) -> list[str]:
    """Sorted relative posix paths of the videos under root.

    Files whose name ends with one of exts (case-insensitive; default VIDEO_EXTENSIONS) are listed;
    with frames_pattern, so are folders holding at least one matching file (frame folders).
    Hidden files and folders (name starting with ".") are skipped; folder symlinks are not followed.
    """
    root = Path(root)
    if not root.is_dir():
        raise VideoListError(f"video root {root} is not a directory")
    suffixes = tuple(_normalise_ext(e).lower() for e in (exts or VIDEO_EXTENSIONS))
    frame_re = frames_regex(frames_pattern) if frames_pattern else None
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        names = [f for f in filenames if not f.startswith(".")]
        for name in names:
            if name.lower().endswith(suffixes):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
        if frame_re is not None and rel_dir != "." and any(frame_re.match(n) for n in names):
            found.append(rel_dir)
    found.sort()
    keys: dict[str, str] = {}
    for rel in found:
        other = keys.setdefault(video_key(rel), rel)
        if other != rel:
            log.warning(
                "videos %r and %r share the output key %r; the run will refuse this list",
                other,
                rel,
                video_key(rel),
            )
    return found


def format_video_list(paths: Iterable[str]) -> str:
    """List text for paths, one per line, that parse_video_list reads back unchanged.

    Paths that cannot round-trip (newlines, surrounding whitespace) are skipped with a warning; a first
    path that reads like the header is written as "./path".
    """
    lines = []
    for rel in paths:
        if "\n" in rel or "\r" in rel or rel != rel.strip() or not rel:
            log.warning("skipping path that cannot be written to a video list: %r", rel)
            continue
        lines.append(rel)
    if lines and lines[0].lower() == HEADER:
        lines[0] = "./" + lines[0]
    return "".join(line + "\n" for line in lines)


def write_video_list(paths: Iterable[str], out_path: Path) -> int:
    """Write a video list atomically (outputs.atomic_write); returns the number of paths written."""
    text = format_video_list(paths)
    atomic_write(Path(out_path), lambda f: f.write(text.encode("utf-8")))
    return text.count("\n")
