"""`python -m pipeline.extract model=... data=... hardware=...`: the Hydra app, the whole story in one page.

compose config -> validate -> plan (video list, shards, resume) -> run shards (in-process, local
workers or Slurm) -> consolidate to HDF5 -> record the run -> summary and exit status.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import run
from pipeline.assemble import as_object
from pipeline.callbacks import write_job_summary
from pipeline.config import ExtractConfig, Launcher, register_configs, validate
from pipeline.errors import EXIT_BUG, EXIT_USER_ERROR, EXPECTED_ERRORS, describe_error
from pipeline.weights import WeightsError, download_command

log = logging.getLogger("pipeline.extract")
register_configs()


def demo_weights(cfg: ExtractConfig) -> ExtractConfig:
    """The demo alone falls back to random weights when the zoo file is not cached (and says so loudly)."""
    if cfg.data.name != "demo" or cfg.model.checkpoint != "zoo":
        return cfg
    try:
        run.resolve_zoo_checkpoint(cfg.model)
        return cfg
    except (FileNotFoundError, WeightsError):
        log.warning("=" * 78)
        log.warning(
            "DEMO ON RANDOM WEIGHTS: no cached checkpoint for %s; features are NOT meaningful.",
            cfg.model.name,
        )
        log.warning("Fetch real weights with: %s", download_command(cfg.model.name))
        log.warning("=" * 78)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint="random"))


def extract(cfg: ExtractConfig, hydra_dir: Path | None) -> tuple[int, dict]:
    """Run the configured extraction; returns the exit status (0 ok, 1 a video failed) and the run's totals."""
    run.prepare_demo(cfg)
    validate(cfg)  # the one validation of the values: the plan and the shards trust it
    cfg = demo_weights(cfg)
    plan = run.plan_run(cfg)  # once: the list, shards, resume decisions, settings, weights
    if cfg.dry_run:
        return run.print_plan(plan), {}
    if cfg.hardware.launcher is Launcher.inprocess:
        summaries = [run.run_shard(shard) for shard in plan.shards]
    else:
        launched = run.launch_run(plan)
        if launched is None:  # submitted without waiting (hardware.wait=false)
            return 0, {"output_dir": str(plan.output_dir), "submitted": True}
        summaries = launched
    complete = cfg.hardware.shard_index is None
    h5 = (
        run.consolidate_outputs(plan.cfg, plan.output_dir, plan.records_now())
        if cfg.output.hdf5 and complete
        else None
    )
    report = run.finish_run(plan.cfg, plan.output_dir, summaries, hydra_dir, h5)
    return (1 if report["totals"]["failed"] else 0), report


@hydra.main(version_base="1.3", config_path="pkg://pipeline.conf", config_name="config")
def main(cfg: DictConfig) -> int:
    """Hydra entry point; a sweep job returns its status instead of exiting (so the sweep goes on)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode is RunMode.MULTIRUN
    job_dir = Path(hydra_cfg.runtime.output_dir)
    error: str | None = None
    report: dict[str, Any] = {}
    try:
        status, report = extract(as_object(cfg), job_dir)
    except EXPECTED_ERRORS as caught:
        error, status = describe_error(caught), EXIT_USER_ERROR
        log.error("%s", error)
        log.debug("details", exc_info=True)
    except Exception as caught:  # a bug: the traceback goes to the console and the job's log
        error, status = describe_error(caught), EXIT_BUG
        log.exception("internal error (please report it with this traceback): %s", error)
    if multirun:
        write_job_summary(job_dir, {"status": status, "error": error, **report})
    elif status:
        sys.exit(status)
    return status


if __name__ == "__main__":
    main()
