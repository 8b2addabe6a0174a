"""Hydra callback: a sweep summary at the end of a multirun, which also sets the exit status.

Each sweep job writes `job_summary.json` in its own Hydra job dir (this works for every launcher,
including Slurm jobs on other nodes); `on_multirun_end` runs in the launching process and reads them all,
so it never depends on the launcher's result collection (the submitit launcher raises on the first failed
job).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.outputs import save_json

log = logging.getLogger(__name__)

JOB_SUMMARY = "job_summary.json"
SWEEP_SUMMARY = "sweep_summary.json"


def write_job_summary(job_dir: Path, record: dict[str, Any]) -> None:
    """Called by a sweep job at its end."""
    save_json(job_dir / JOB_SUMMARY, record)


def collect_sweep(sweep_dir: Path) -> dict[str, Any]:
    """Read every job's summary under a sweep dir; a job dir without one counts as a crashed job."""
    jobs = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name)
    ):
        summary_file = job_dir / JOB_SUMMARY
        if summary_file.is_file():
            job = json.loads(summary_file.read_text())
        else:
            job = {"status": 1, "error": f"job ended without a summary (crashed?): see {job_dir}"}
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        job["job_dir"] = str(job_dir)
        job["overrides"] = overrides_file.read_text().strip() if overrides_file.is_file() else None
        jobs.append(job)
    failed = [j for j in jobs if j.get("status")]
    return {"jobs": jobs, "finished": len(jobs) - len(failed), "failed": len(failed)}


class SweepSummary(Callback):
    """Write `<sweep dir>/sweep_summary.json`, print one line per run, exit 1 if any run failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        summary = collect_sweep(sweep_dir)
        save_json(sweep_dir / SWEEP_SUMMARY, summary)
        for job in summary["jobs"]:
            totals = job.get("totals") or {}
            state = "ok" if not job.get("status") else "FAILED"
            print(
                f"{state:6s} {job.get('overrides') or ''} -> {job.get('output_dir', '-')} "
                f"(rows {totals.get('rows', '-')}, failed videos {totals.get('failed', '-')})"
                + (f": {job['error']}" if job.get("error") else "")
            )
        print(
            f"sweep: {summary['finished']} runs finished, {summary['failed']} failed; {sweep_dir / SWEEP_SUMMARY}"
        )
        if summary["failed"]:
            sys.exit(1)
