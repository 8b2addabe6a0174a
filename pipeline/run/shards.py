"""Shard plans: which videos each shard of a run owns, decided once and recorded in shards.json."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pipeline import naming, outputs
from pipeline.io import probe
from pipeline.videolist import VideoEntry, shard_entries

log = logging.getLogger(__name__)


def list_digest(entries: list[VideoEntry]) -> str:
    """Identity of a video list (its keys in order)."""
    return hashlib.sha256("\n".join(e.key for e in entries).encode()).hexdigest()


def work_weights(entries: list[VideoEntry]) -> dict[str, float]:
    """Work per video: duration from the container header, else the file size in MB, else 1."""
    weights: dict[str, float] = {}
    for entry in entries:
        weight = None
        if entry.error is None:
            try:
                weight = probe(entry.path).duration
            except Exception:  # noqa: BLE001 - unknown duration falls back to size
                weight = None
            if not weight and entry.path.is_file():
                weight = entry.path.stat().st_size / 1e6
        weights[entry.key] = float(weight or 1.0)
    return weights


def shard_plan(entries: list[VideoEntry], num_shards: int, output_dir: Path) -> list[list[str]]:
    """Keys per shard; reuses `<output_dir>/shards.json` when it was made for the same list and count."""
    path = output_dir / naming.SHARD_PLAN
    digest = list_digest(entries)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("list_sha256") == digest and saved.get("num_shards") == num_shards:
                return [list(s) for s in saved["shards"]]
        except (OSError, ValueError, KeyError):
            log.warning("%s is unreadable; making a new shard plan", path)
    shards = shard_entries(entries, num_shards, work_weights(entries))
    plan = [[e.key for e in shard] for shard in shards]
    outputs.save_json(
        path,
        {
            "num_shards": num_shards,
            "list_sha256": digest,
            "shards": plan,
            "weights": "duration from the container header, else file size in MB",
        },
    )
    return plan
