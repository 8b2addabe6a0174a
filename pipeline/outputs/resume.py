"""Resume decisions: whether a video's kept output still counts as done for this run's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.outputs.atomic import file_sha256
from pipeline.outputs.records import FAILED, OK, ManifestRecord, read_sidecar, settings_of_sidecar


@dataclass(frozen=True)
class ResumeDecision:
    """Whether a video is run again, and the one-line reason."""

    run: bool
    reason: str
    record: ManifestRecord | None = None


def decide_resume(
    record: ManifestRecord | None,
    output_dir: Path,
    settings: dict[str, Any],
    *,
    overwrite: bool,
    retry_failed: bool,
    verify_hash: bool = True,
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
    output = output_dir / str(record.output)
    if not output.is_file():
        return ResumeDecision(True, f"output missing: {record.output}")
    if output.stat().st_size != record.size:
        return ResumeDecision(True, "output size differs from the manifest")
    if verify_hash and file_sha256(output) != record.sha256:
        return ResumeDecision(True, "output sha256 differs from the manifest")
    return ResumeDecision(False, "done", record)


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
