"""The records an output dir keeps about each video, typed: the manifest line (`ManifestRecord`) and the
sidecar beside a feature file (`Sidecar`). Written and read here only; other modules use the fields.

Both are JSON on disk. Reading is tolerant of records written by older versions (absent fields are None,
unknown ones are ignored) and strict about the fields a reader cannot do without.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import naming
from pipeline.outputs.atomic import TEMP_MARK, save_json

OK, FAILED, SKIPPED = "ok", "failed", "skipped"  # a manifest record's status: what this run did


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    if cls not in _FIELD_NAMES:
        _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return _FIELD_NAMES[cls]


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are fields of the dataclass `cls`."""
    names = _field_names(cls)
    return {k: v for k, v in data.items() if k in names}


_INTERNED = ("status", "outcome", "output", "reason")  # few distinct values among a million records


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """One line of a shard manifest: what one run did with one video.

    `status` is this run's action (ok: extracted, failed, skipped: kept from before); `outcome` is what the
    video's output is after it (a skipped video keeps its earlier outcome, ok or failed).
    """

    key: str
    path: str
    status: str
    settings: dict[str, Any] = field(default_factory=dict)
    time: str = ""
    outcome: str | None = None
    error: str | None = None
    reason: str | None = None  # skipped: why the kept output still counts
    seconds: float | None = None
    frames: int | None = None
    rows: int | None = None
    dim: int | None = None
    output: str | None = None  # the feature file (files store) or the part (packed), relative to the dir
    offset: int | None = None  # packed: where the video's record starts in its part
    sha256: str | None = None  # of the feature file (files) or of the video's record (packed)
    size: int | None = None  # bytes of the same
    mtime_ns: int | None = None  # files store: the feature file's mtime and inode when written; a file
    inode: int | None = None  # whose size, mtime and inode are unchanged is taken as unchanged
    partial: bool | None = None  # decoding stopped well before the header's duration

    REQUIRED = ("key", "path", "status")

    @property
    def final_outcome(self) -> str:
        """The video's outcome: `outcome`, or for records without one, their status."""
        return self.outcome or self.status

    def as_json(self) -> dict[str, Any]:
        """The JSON object of the manifest line: the identifying fields always, the others when set."""
        always = {"key", "path", "status", "outcome", "settings", "time", "error"}
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if k in always or v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestRecord:
        """A record from its JSON object; ValueError when a required field is missing."""
        missing = [name for name in cls.REQUIRED if name not in data]
        if missing:
            raise ValueError(f"not a manifest record (needs {', '.join(cls.REQUIRED)})")
        values = dict(data)
        if not _field_names(cls).issuperset(values):  # a field of a newer version: left out
            values = _known(cls, data)
        values["settings"] = values.get("settings") or {}  # shared by the records of one settings line
        for name in _INTERNED:
            if isinstance(values.get(name), str):
                values[name] = sys.intern(values[name])
        return cls(**values)

    @property
    def packed(self) -> bool:
        """Whether the video's output is a record in a packed part (else a feature file of its own)."""
        return self.offset is not None


@dataclass(frozen=True)
class CheckpointRecord:
    """The weights a video's features were computed with."""

    path: str | None = None
    sha256: str | None = None
    random: bool = False


@dataclass(frozen=True)
class Sidecar:
    """The metadata beside one video's feature file: its rows' time spans, the video, the settings, the
    resolved config. `logits` maps a classifier head to its file (relative to the output dir)."""

    key: str
    settings: dict[str, Any]
    timestamps: list[list[float]]  # rows x [start, end, centre] seconds
    video: str | None = None
    source: str | None = None
    kind: str | None = None
    shape: list[int] | None = None
    rows: int | None = None
    dim: int | None = None
    dtype: str | None = None
    fps: float | None = None
    native_fps: float | None = None
    frames: int | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    codec: str | None = None
    decode_seconds: float | None = None
    seconds: float | None = None
    model: str | None = None
    checkpoint: CheckpointRecord = field(default_factory=CheckpointRecord)
    logits: dict[str, str] | None = None
    top5: dict[str, list[list[Any]]] | None = None
    package_version: str | None = None
    config: dict[str, Any] | None = None
    created: str | None = None

    REQUIRED = ("key", "settings", "timestamps")

    def as_json(self) -> dict[str, Any]:
        """The JSON object of the sidecar file (every field)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sidecar:
        """A sidecar from its JSON object; ValueError naming the first required field that is missing."""
        for name in cls.REQUIRED:
            if name not in data:
                raise ValueError(f"sidecar has no {name!r} field")
        values = _known(cls, data)
        checkpoint = values.get("checkpoint")
        values["checkpoint"] = CheckpointRecord(**_known(CheckpointRecord, checkpoint or {}))
        if values.get("logits") is not None and not isinstance(values["logits"], Mapping):
            raise ValueError("'logits' must map head names to files")
        return cls(**values)

    @property
    def effective_settings(self) -> dict[str, Any]:
        """The extraction settings; a sidecar written before `precision` was a setting takes it from its
        resolved config (`hardware.precision`), so older fp32 work is neither lost nor mixed with bf16."""
        return settings_of_sidecar({"settings": self.settings, "config": self.config})


def settings_of_sidecar(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """A sidecar's (JSON object's) extraction settings, completed as `Sidecar.effective_settings` says."""
    settings = dict(sidecar.get("settings") or {})
    config = sidecar.get("config")
    hardware = config.get("hardware") if isinstance(config, dict) else None
    if "precision" not in settings and isinstance(hardware, dict) and "precision" in hardware:
        settings["precision"] = hardware["precision"]
    return settings


def iter_sidecars(output_dir: Path) -> Iterator[Path]:
    """Every sidecar JSON under features/, sorted."""
    yield from sorted(
        p for p in (output_dir / naming.FEATURES_DIR).rglob("*.json") if TEMP_MARK not in p.name
    )


def read_sidecar(path: Path) -> dict[str, Any]:
    """One sidecar file's JSON object, as written."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_sidecar(path: Path) -> Sidecar:
    """One sidecar file, typed; ValueError (naming the field) for a sidecar without its required fields."""
    return Sidecar.from_json(read_sidecar(path))


def save_sidecar(path: Path, sidecar: Sidecar, durable: bool = True) -> None:
    """Write a sidecar atomically."""
    save_json(path, sidecar.as_json(), durable)
