"""Shard manifests: one JSON line per finished (or failed) video and run, appended and fsynced when the
video ends; the newest record per video over all shards is what resume and consolidation go by.

Three kinds of line:
- a video record (`ManifestRecord`: key, path, status, ...), its extraction settings named by digest
  (`settings_digest`; older lines carry the settings inline, and still read);
- `{"kind": "settings", "digest": ..., "settings": {...}}`: written once per shard run for each set of
  settings its records name, before the first of them (a million records share one copy);
- `{"kind": "kept", ...}`: one line per shard run for the videos it kept from before (how many, why),
  instead of a line per kept video: a rerun with nothing to do writes one line, not a million.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import naming
from pipeline.outputs.atomic import OutputError
from pipeline.outputs.records import ManifestRecord

SETTINGS_KIND = "settings"
KEPT_KIND = "kept"


@dataclass(frozen=True)
class ManifestProblem:
    """A manifest line that could not be used."""

    path: Path
    line: int
    reason: str


def settings_digest(settings: Mapping[str, Any]) -> str:
    """The name of a set of extraction settings in a manifest: sha256 of its canonical JSON, 16 hex."""
    text = json.dumps(settings, sort_keys=True, allow_nan=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _line(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, allow_nan=False, default=str) + "\n"


def _append_lines(manifest: Path, lines: Iterable[str], sync: bool = True) -> None:
    """Append lines in one write (and fsync them); a failed append (disk full) is cut off again, leaving no
    half line."""
    text = "".join(lines)
    if not text:
        return
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(manifest, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                rest = memoryview(text.encode("utf-8"))
                while rest:
                    rest = rest[f.write(rest) :]
                if sync:
                    os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)  # the next record must not run into a half line
                raise
    except OSError as error:
        raise OutputError(error.errno or 0, f"cannot append to {manifest}: {error.strerror}") from error


def append_record(manifest: Path, record: ManifestRecord | Mapping[str, Any]) -> None:
    """Append one record with its settings inline (tools and tests that fabricate manifests; a mapping is
    written as given). A run writes through `ManifestWriter`, which names settings by digest."""
    _append_lines(manifest, [_line(record.as_json() if isinstance(record, ManifestRecord) else record)])


SYNC_INTERVAL_S = 5.0  # a run's manifest lines reach the disk (fsync) at least this often, and at its end


class ManifestWriter:
    """Appends one shard's records: each set of settings once (a `settings` line), records by digest.

    Each line is appended when its video ends (a killed process loses nothing appended: the lines are in
    the page cache), and fsynced every SYNC_INTERVAL_S and on `close`, not once per video: a machine that
    loses power loses at most those seconds of records, whose videos are then recomputed. The video's
    bytes were made durable before its line was appended (`pipeline.outputs.store`), so a line that
    survives a crash never names bytes that did not.
    """

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self._written: set[str] = set()  # digests whose settings line this writer wrote (once per run)
        self._synced = time.monotonic()

    def append(self, record: ManifestRecord) -> None:
        """Append a video's record (and its settings line first, the first time they appear)."""
        data = record.as_json()
        settings = data.pop("settings")
        digest = settings_digest(settings)
        data["settings_digest"] = digest
        lines = []
        if digest not in self._written:
            lines.append(_line({"kind": SETTINGS_KIND, "digest": digest, "settings": settings}))
        lines.append(_line(data))
        due = time.monotonic() - self._synced >= SYNC_INTERVAL_S
        _append_lines(self.manifest, lines, sync=due)
        if due:
            self._synced = time.monotonic()
        self._written.add(digest)

    def close(self) -> None:
        """fsync what was appended (the end of a shard run)."""
        if self.manifest.exists():
            try:
                with open(self.manifest, "rb") as f:
                    os.fsync(f.fileno())
            except OSError as error:
                raise OutputError(
                    error.errno or 0, f"cannot sync {self.manifest}: {error.strerror}"
                ) from error
        self._synced = time.monotonic()

    def kept(self, shard: int, num_shards: int, time: str, reasons: Mapping[str, int]) -> None:
        """One line for the videos this shard run kept from before: how many, for which reasons."""
        if reasons:
            line = {"kind": KEPT_KIND, "shard": shard, "num_shards": num_shards, "time": time}
            _append_lines(
                self.manifest, [_line({**line, "count": sum(reasons.values()), "reasons": reasons})]
            )


def iter_manifest(manifest: Path, start: int = 0) -> Iterator[dict[str, Any] | ManifestProblem]:
    """Each usable video record of one manifest as its JSON object (settings resolved, shared between
    records that name the same digest), in order, or the problem of a line that is none (with its
    number). `settings` and `kept` lines are not records. One line at a time: a million-line manifest
    never sits in memory as JSON objects. `start`: a byte offset at a line's start (the size the manifest
    had when it was read before); each writer names its settings after it starts, so what it appended
    since then resolves alone (line numbers then count from there)."""
    settings: dict[str, dict[str, Any]] = {}
    if not manifest.exists():
        return
    with open(manifest, encoding="utf-8", errors="replace") as f:
        if start:
            f.seek(start)
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield ManifestProblem(manifest, number, f"not JSON ({error.msg})")
                continue
            kind = record.get("kind") if isinstance(record, dict) else None
            if kind == SETTINGS_KIND and isinstance(record.get("settings"), dict):
                settings[str(record.get("digest"))] = record["settings"]
                continue
            if kind == KEPT_KIND:
                continue
            if not isinstance(record, dict) or any(k not in record for k in ManifestRecord.REQUIRED):
                yield ManifestProblem(manifest, number, "not a manifest record (needs key, path, status)")
                continue
            digest = record.pop("settings_digest", None)
            if digest is not None:
                if digest not in settings:
                    yield ManifestProblem(manifest, number, f"names unknown settings {digest}")
                    continue
                record["settings"] = settings[digest]
            yield record


def read_manifest(manifest: Path) -> tuple[list[dict[str, Any]], list[ManifestProblem]]:
    """All usable video records of one manifest (`iter_manifest`) and the problems of the other lines."""
    records: list[dict[str, Any]] = []
    problems: list[ManifestProblem] = []
    for item in iter_manifest(manifest):
        if isinstance(item, ManifestProblem):
            problems.append(item)
        else:
            records.append(item)
    return records, problems


def read_kept(manifest: Path) -> list[dict[str, Any]]:
    """The `kept` lines of one manifest (one per shard run that kept videos from before)."""
    kept = []
    if manifest.exists():
        with open(manifest, encoding="utf-8", errors="replace") as f:
            for line in f:
                if f'"kind": "{KEPT_KIND}"' in line:
                    with contextlib.suppress(json.JSONDecodeError):
                        kept.append(json.loads(line))
    return kept


def manifest_files(output_dir: Path) -> list[Path]:
    """Every shard manifest of an output dir, sorted."""
    return sorted(output_dir.glob(naming.MANIFEST_GLOB))


def newest(latest: dict[str, ManifestRecord], record: ManifestRecord) -> None:
    """Keep `record` in `latest` unless a newer record of its video is there."""
    previous = latest.get(record.key)
    if previous is None or str(record.time) >= str(previous.time):
        latest[record.key] = record


def appended_records(
    output_dir: Path, sizes: Mapping[str, int]
) -> tuple[list[ManifestRecord], list[ManifestProblem]] | None:
    """The records appended to an output dir's manifests since they had `sizes` (manifest name -> bytes;
    a manifest not named is read whole), and the problems of those lines; None when a manifest shrank or
    vanished since (it was rewritten: read them all again)."""
    records: list[ManifestRecord] = []
    problems: list[ManifestProblem] = []
    present = {path.name: path for path in manifest_files(output_dir)}
    if set(sizes) - set(present):
        return None
    for name, path in present.items():
        start = sizes.get(name, 0)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        if size < start:
            return None
        if size == start:
            continue
        for item in iter_manifest(path, start):
            if isinstance(item, ManifestProblem):
                problems.append(item)
            else:
                records.append(ManifestRecord.from_json(item))
    return records, problems


def latest_records(output_dir: Path) -> tuple[dict[str, ManifestRecord], list[ManifestProblem]]:
    """The newest record per video key over all shard manifests (a rerun may use other shards)."""
    latest: dict[str, ManifestRecord] = {}
    problems: list[ManifestProblem] = []
    for manifest in manifest_files(output_dir):
        for item in iter_manifest(manifest):
            if isinstance(item, ManifestProblem):
                problems.append(item)
                continue
            newest(latest, ManifestRecord.from_json(item))
    return latest, problems
