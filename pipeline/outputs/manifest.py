"""Shard manifests: one JSON line per video and run, appended (and fsynced) when the video ends; the newest
record per video over all shards is what resume and consolidation go by."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import naming
from pipeline.outputs.atomic import OutputError
from pipeline.outputs.records import ManifestRecord


@dataclass(frozen=True)
class ManifestProblem:
    """A manifest line that could not be used."""

    path: Path
    line: int
    reason: str


def append_record(manifest: Path, record: ManifestRecord | Mapping[str, Any]) -> None:
    """Append one JSON line and fsync it; a failed append (disk full) is cut off again, leaving no half line.

    A mapping is written as given (tools and tests that fabricate manifests).
    """
    data = record.as_json() if isinstance(record, ManifestRecord) else dict(record)
    line = json.dumps(data, sort_keys=True, allow_nan=False, default=str) + "\n"
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(manifest, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                rest = memoryview(line.encode("utf-8"))
                while rest:
                    rest = rest[f.write(rest) :]
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)  # the next record must not run into a half line
                raise
    except OSError as error:
        raise OutputError(error.errno or 0, f"cannot append to {manifest}: {error.strerror}") from error


def read_manifest(manifest: Path) -> tuple[list[dict[str, Any]], list[ManifestProblem]]:
    """All usable records of one manifest as their JSON objects, in order, and the problems of the others
    (with line numbers)."""
    records: list[dict[str, Any]] = []
    problems: list[ManifestProblem] = []
    if not manifest.exists():
        return records, problems
    with open(manifest, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(ManifestProblem(manifest, number, f"not JSON ({error.msg})"))
                continue
            if not isinstance(record, dict) or any(k not in record for k in ManifestRecord.REQUIRED):
                problems.append(
                    ManifestProblem(manifest, number, "not a manifest record (needs key, path, status)")
                )
                continue
            records.append(record)
    return records, problems


def manifest_files(output_dir: Path) -> list[Path]:
    """Every shard manifest of an output dir, sorted."""
    return sorted(output_dir.glob(naming.MANIFEST_GLOB))


def latest_records(output_dir: Path) -> tuple[dict[str, ManifestRecord], list[ManifestProblem]]:
    """The newest record per video key over all shard manifests (a rerun may use other shards)."""
    latest: dict[str, ManifestRecord] = {}
    problems: list[ManifestProblem] = []
    for manifest in manifest_files(output_dir):
        records, bad = read_manifest(manifest)
        problems.extend(bad)
        for data in records:
            record = ManifestRecord.from_json(data)
            previous = latest.get(record.key)
            if previous is None or str(record.time) >= str(previous.time):
                latest[record.key] = record
    return latest, problems
