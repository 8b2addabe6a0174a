"""The end of a run: the HDF5 file, the run record (config, command, environment, totals) and the summary."""

from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import av
import torch

import pipeline
from pipeline import naming
from pipeline.assemble import resolved_config
from pipeline.config import Device, ExtractConfig
from pipeline.consolidate import ConsolidateError, consolidate
from pipeline.outputs import ManifestRecord, OutputError, now_iso, save_json
from pipeline.run.plan import stopping
from pipeline.run.shard import ShardSummary

log = logging.getLogger(__name__)


def consolidate_outputs(
    cfg: ExtractConfig, output_dir: Path, latest: Mapping[str, ManifestRecord] | None = None
) -> Path | None:
    """Write features.h5 for the run (output.hdf5=true); a failure is logged (features stay), a full
    disk stops the run. `latest`: the newest manifest records, when the caller knows them
    (`RunPlan.records_now`): the manifests are not read again."""
    compression = cfg.output.hdf5_compression.value if cfg.output.hdf5_compression else None
    try:
        return consolidate(
            [output_dir],
            layout=cfg.output.hdf5_layout.value,
            compression=compression,
            latest={output_dir: latest} if latest is not None else None,
        )
    except ConsolidateError as error:
        log.error("consolidation failed: %s", error)
        return None
    except OutputError as error:
        raise stopping(error) from error


def environment_record(device: str = "cpu") -> dict[str, Any]:
    """Versions and host facts recorded for every run; the GPU's name only for `device` cuda (a CPU run
    makes no CUDA call: that would create a CUDA context nobody asked for)."""
    try:
        revision = (
            subprocess.run(
                ["git", "-C", str(Path(pipeline.__file__).resolve().parent), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        revision = None
    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "av": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "package_version": pipeline.__version__,
        "git_revision": revision,
        "cuda": cuda_device_name() if device == "cuda" else None,
        "pid": os.getpid(),
    }


def cuda_device_name() -> str | None:
    """The name of the current CUDA device (None when none is visible)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())


def finish_run(
    cfg: ExtractConfig,
    output_dir: Path,
    summaries: list[ShardSummary],
    hydra_dir: Path | None,
    h5: Path | None,
) -> dict[str, Any]:
    """Record runs/<timestamp>.json and print the summary; returns the run's totals and paths."""
    totals = {k: sum(getattr(s, k) for s in summaries) for k in ("ok", "failed", "skipped", "rows")}
    record = {
        "config": resolved_config(cfg),
        "command": sys.argv,
        "hydra_run_dir": str(hydra_dir) if hydra_dir else None,
        "log": str(hydra_dir / "extract.log") if hydra_dir else None,
        "output_dir": str(output_dir),
        "hdf5": str(h5) if h5 else None,
        "shards": [s.as_dict() for s in summaries],
        "totals": totals,
        "environment": environment_record(Device(cfg.hardware.device).value),
        "finished": now_iso(),
    }
    try:
        save_json(output_dir / naming.run_record_relpath(now_iso(), os.getpid()), record)
    except OutputError as error:
        raise stopping(error) from error
    where = naming.PACKED_DIR if cfg.output.store.value == "packed" else naming.FEATURES_DIR
    print(f"features: {output_dir / where}" + (f"\nhdf5: {h5}" if h5 else ""))
    print(
        f"summary: {totals['ok']} ok, {totals['failed']} failed, {totals['skipped']} skipped, "
        f"{totals['rows']} rows"
    )
    if totals["failed"]:
        print(f'failed videos are listed in {output_dir / naming.MANIFESTS_DIR} (status "failed")')
    return {"output_dir": str(output_dir), "hdf5": str(h5) if h5 else None, "totals": totals}
