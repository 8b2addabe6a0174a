"""Shard plans: which videos each shard of a run owns, decided once and recorded in shards.json."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import naming, outputs
from pipeline.io import duration_of
from pipeline.videolist import VideoEntry, shard_entries

log = logging.getLogger(__name__)


def list_digest(entries: list[VideoEntry]) -> str:
    """Identity of a video list (its keys in order)."""
    return hashlib.sha256("\n".join(e.key for e in entries).encode()).hexdigest()


PROBE_THREADS = 16  # container headers read at once: opening a file is mostly waiting on the file system


def work_weight(entry: VideoEntry) -> float:
    """Work of one video: its duration from the container header, else its file size in MB, else 1."""
    weight = None
    if entry.error is None:
        try:
            weight = duration_of(entry.path)
        except Exception:  # noqa: BLE001 - unknown duration falls back to size
            weight = None
        if not weight and entry.path.is_file():
            weight = entry.path.stat().st_size / 1e6
    return float(weight or 1.0)


def work_weights(entries: list[VideoEntry], threads: int = PROBE_THREADS) -> dict[str, float]:
    """Work per video (`work_weight`), the headers read in parallel threads, progress logged."""
    weights: dict[str, float] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for number, (entry, weight) in enumerate(zip(entries, pool.map(work_weight, entries), strict=True)):
            weights[entry.key] = weight
            if (number + 1) % 50_000 == 0:
                log.info("shard plan: read %d/%d video headers", number + 1, len(entries))
    if len(entries) >= 1000:
        log.info("shard plan: %d video headers read in %.1f s", len(entries), time.perf_counter() - started)
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
