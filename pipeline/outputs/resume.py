"""Resume decisions: whether a video's kept output still counts as done for this run's settings.

How much is checked (`output.verify`):
- `stat` (the default): a feature file whose size, mtime and inode are what its manifest record says is
  taken as unchanged, without reading it; one that changed in any of them is hashed and kept only if its
  sha256 still matches. A packed part likewise: one whose size, mtime and inode are what its last record
  saw after writing (`unchanged_parts`) vouches for all its records; in any other part each record is
  hashed. Reading the data (consolidation, export) checks each packed record's sha256 again.
- `full`: every kept output is hashed (sha256) against its record, as every rerun did before.
A kept video in the other store (`output.store` changed) is moved, not recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.outputs.atomic import file_sha256
from pipeline.outputs.records import FAILED, OK, ManifestRecord, read_sidecar, settings_of_sidecar
from pipeline.outputs.store import record_sha256

VERIFY_MODES = ("stat", "full")


@dataclass(frozen=True, slots=True)
class ResumeDecision:
    """Whether a video is run again (or only moved to this run's store), and the one-line reason."""

    run: bool
    reason: str
    record: ManifestRecord | None = None
    move: bool = False  # kept, but in the other store: copy it into this run's store


def decide_resume(
    record: ManifestRecord | None,
    output_dir: Path,
    settings: dict[str, Any],
    *,
    overwrite: bool,
    retry_failed: bool,
    verify: str = "stat",
    store: str = "files",
    unchanged: Mapping[str, int] | None = None,
) -> ResumeDecision:
    """Decide from the newest manifest record whether a video's output can be kept."""
    if overwrite:
        return ResumeDecision(True, "output.overwrite=true")
    if record is None:
        return ResumeDecision(True, "new")
    outcome = record.final_outcome
    if outcome == FAILED:
        if retry_failed:
            return ResumeDecision(True, f"retrying failed video ({record.error})")
        return ResumeDecision(False, "failed before; output.retry_failed=false", record)
    if outcome != OK:
        return ResumeDecision(True, f"unknown outcome {outcome!r} in manifest")
    recorded = record.settings
    if "precision" in settings and "precision" not in recorded:
        recorded = legacy_settings(recorded, output_dir, record)
    if recorded != settings:
        return ResumeDecision(True, f"settings changed: {changed_settings(recorded, settings)}")
    if record.packed:
        size = (unchanged or {}).get(str(record.output))
        problem = packed_problem(record, output_dir, verify, size)
    else:
        problem = file_problem(record, output_dir, verify)
    if problem is not None:
        return ResumeDecision(True, problem)
    if ("packed" if record.packed else "files") != store:
        return ResumeDecision(False, f"done; moved to the {store} store", record, move=True)
    return ResumeDecision(False, "done", record)


def file_problem(record: ManifestRecord, output_dir: Path, verify: str) -> str | None:
    """Why a feature file no longer counts (missing, another size, changed bytes), or None."""
    output = output_dir / str(record.output)
    try:
        stat = os.stat(output)
    except FileNotFoundError:
        return f"output missing: {record.output}"
    if stat.st_size != record.size:
        return "output size differs from the manifest"
    unchanged = record.mtime_ns is not None and (stat.st_mtime_ns, stat.st_ino) == (
        record.mtime_ns,
        record.inode,
    )
    if (verify == "full" or not unchanged) and file_sha256(output) != record.sha256:
        return "output sha256 differs from the manifest"
    return None


def unchanged_parts(latest: Mapping[str, ManifestRecord], output_dir: Path) -> dict[str, int]:
    """The packed parts whose size, mtime and inode are what their last-written newest record saw after
    its write, with their size: nothing touched them since, so their records need no hashing and no
    stat of their own (one stat per part)."""
    last: dict[str, ManifestRecord] = {}
    for record in latest.values():
        if record.packed and record.final_outcome == OK and record.output and record.mtime_ns is not None:
            before = last.get(record.output)
            if before is None or _end(record) > _end(before):
                last[record.output] = record
    unchanged = {}
    for part, record in last.items():
        try:
            stat = os.stat(output_dir / part)
        except OSError:
            continue
        if (stat.st_size, stat.st_mtime_ns, stat.st_ino) == (_end(record), record.mtime_ns, record.inode):
            unchanged[part] = stat.st_size
    return unchanged


def _end(record: ManifestRecord) -> int:
    return int(record.offset or 0) + int(record.size or 0)


def packed_problem(
    record: ManifestRecord, output_dir: Path, verify: str, unchanged_size: int | None = None
) -> str | None:
    """Why a packed video no longer counts (its part missing or cut short, its bytes changed), or None;
    its bytes are hashed unless its part is unchanged (`unchanged_size`: its size) and verify=stat."""
    offset, size = int(record.offset or 0), int(record.size or 0)
    truncated = f"output truncated: {record.output} ends inside the video's record"
    if unchanged_size is not None and verify != "full":
        return truncated if unchanged_size < offset + size else None
    part = output_dir / str(record.output)
    try:
        length = os.stat(part).st_size
    except FileNotFoundError:
        return f"output missing: {record.output}"
    if length < offset + size:
        return truncated
    try:
        if record_sha256(part, offset, size) != record.sha256:
            return "output sha256 differs from the manifest"
    except (OSError, ValueError) as error:
        return f"output unreadable: {error}"
    return None


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> str:
    """The settings that differ, each with its old and new value: "precision ('fp32' -> 'bf16')"."""
    absent = "absent"
    return ", ".join(
        f"{k} ({before.get(k, absent)!r} -> {now.get(k, absent)!r})"
        for k in sorted(set(before) | set(now))
        if before.get(k, absent) != now.get(k, absent)
    )


def legacy_settings(recorded: dict[str, Any], output_dir: Path, record: ManifestRecord) -> dict[str, Any]:
    """A manifest record's settings from before `precision` was one, completed from its video's sidecar
    (unchanged, so compared as different, when the sidecar is unreadable)."""
    sidecar = output_dir / str(record.output or "")
    try:
        data = read_sidecar(sidecar.with_suffix(".json"))
    except (OSError, ValueError):
        return recorded
    return settings_of_sidecar({**data, "settings": recorded})
