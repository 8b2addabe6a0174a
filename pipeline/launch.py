"""Scale-out of shards through submitit: local worker processes (one per GPU) or a Slurm job array.

`launch_shards` submits one job per shard, then either waits (progress over shards, a per-shard
outcome with logs for failures) or, for Slurm with `hardware.wait=false`, also submits a
consolidation job that runs after the array (`afterany`) and returns at once. Plain arguments only:
the Hydra glue is `launch_run`, which `pipeline.extract` calls.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from submitit.core.utils import JobPaths, pickle_load

from pipeline import naming
from pipeline.config import ExtractConfig, HardwareConfig
from pipeline.errors import PipelineError
from pipeline.hardware import CPU_SHARE_ENV, split_cpus, usable_cpus

if TYPE_CHECKING:
    from pipeline.run import ShardSummary

log = logging.getLogger(__name__)

RunFn = Callable[[ExtractConfig, int, int], Any]
"""run_fn(cfg, shard_index, num_shards) -> the shard's summary (pipeline.run.run_shard)."""
ConsolidateFn = Callable[[ExtractConfig, list["ShardOutcome"]], Any]
"""consolidate_fn(cfg, outcomes): runs after every shard has ended (Slurm, hardware.wait=false)."""

STDERR_TAIL_LINES = 20
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"})
_WAITING = "UNKNOWN PENDING REQUEUED REQUEUE_HOLD REQUEUE_FED SUSPENDED PREEMPTED RESV_DEL_HOLD SPECIAL_EXIT"
WAITING_STATES = frozenset(["", *_WAITING.split()])
"""Slurm states of a job that may still run; anything else (and no result) is a failure."""


class LaunchError(PipelineError, RuntimeError):
    """A launch that cannot go on (no sbatch, a rejected submission, failed shards): one clear line."""


def _name(value: Enum | str) -> str:
    """The plain string of an enum member or a string."""
    return str(value.value if isinstance(value, Enum) else value)


def _one_line(text: str) -> str:
    """Join the non-empty lines of a (multi-line) message into one line."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


# --- what runs in a job -------------------------------------------------------------------------


def _setup_job_logging() -> None:
    """Show the pipeline's INFO lines in the job's stderr log (a fresh job process has no handler)."""
    ours = logging.getLogger("pipeline")
    if logging.getLogger().handlers or ours.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)


def _default_run_fn(cfg: ExtractConfig, shard_index: int, num_shards: int) -> ShardSummary:
    from pipeline.run import run_shard

    return run_shard(cfg, shard_index, num_shards)


class ShardTask(submitit.helpers.Checkpointable):
    """One shard as a submitit job; on preemption or timeout it requeues itself and resumes from its manifest."""

    def __init__(self, run_fn: RunFn | None = None, cpus: Sequence[int] | None = None) -> None:
        self.run_fn = run_fn
        self.cpus = list(cpus) if cpus is not None else None  # this job's share of the node's CPUs

    def with_cpus(self, cpus: Sequence[int]) -> ShardTask:
        """The same task, confined to `cpus` (one local job of several on a node)."""
        return ShardTask(self.run_fn, cpus)

    def _take_cpu_share(self) -> None:
        """Size everything from this job's CPUs: usable_cpus() reads PIPELINE_CPUS, threads follow."""
        if not self.cpus:
            return
        os.environ[CPU_SHARE_ENV] = str(len(self.cpus))
        try:
            os.sched_setaffinity(0, self.cpus)  # decode workers and FFmpeg threads inherit it
        except (AttributeError, OSError) as error:  # not Linux, or CPUs gone: the count still holds
            log.debug("could not pin this job to CPUs %s: %s", self.cpus, error)

    def __call__(self, cfg: ExtractConfig, shard_index: int, num_shards: int) -> Any:
        _setup_job_logging()
        self._take_cpu_share()
        log.info(
            "shard %d/%d starting on %s (CUDA_VISIBLE_DEVICES=%s)",
            shard_index,
            num_shards,
            os.uname().nodename,
            os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        )
        return (self.run_fn or _default_run_fn)(cfg, shard_index, num_shards)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same call; the rerun skips what the shard manifest already records as done."""
        log.warning(
            "shard interrupted (preemption or time limit): requeueing; the rerun resumes from its manifest"
        )
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class ConsolidateTask(submitit.helpers.Checkpointable):
    """The job after the array: reads every shard's outcome from the submitit folder, then consolidates."""

    def __init__(self, consolidate_fn: ConsolidateFn) -> None:
        self.consolidate_fn = consolidate_fn

    def __call__(self, cfg: ExtractConfig, folder: str, job_ids: dict[int, str]) -> Any:
        _setup_job_logging()
        states = slurm_states(list(job_ids.values())) or {}
        outcomes: list[ShardOutcome] = []
        for shard, job_id in sorted(job_ids.items()):
            state = states.get(job_id, "UNKNOWN")
            outcomes.append(
                collect_outcome(shard, job_id, Path(folder), state, grace_s=_grace_s(state, WaitOptions()))
            )
        report_failures(outcomes)
        return self.consolidate_fn(cfg, outcomes)


# --- outcomes -----------------------------------------------------------------------------------


@dataclass
class ShardOutcome:
    """How one shard's job ended: its result, or why not, with the paths of its logs."""

    shard: int
    job_id: str
    state: str
    ok: bool
    result: Any = None
    error: str | None = None
    stdout: Path | None = None
    stderr: Path | None = None
    stderr_tail: str = ""

    def describe(self) -> str:
        """A multi-line failure report: shard, job id, state, error, log paths and the stderr tail."""
        lines = [
            f"shard {self.shard} FAILED (job {self.job_id}, state {self.state}): {self.error}",
            f"  stdout: {self.stdout}",
            f"  stderr: {self.stderr}",
        ]
        if self.stderr_tail:
            lines.append(f"  last {STDERR_TAIL_LINES} lines of stderr:")
            lines.extend(f"    {line}" for line in self.stderr_tail.splitlines())
        return "\n".join(lines)


@dataclass
class LaunchResult:
    """Submitted jobs and, when waited for, one outcome per shard (in shard order)."""

    launcher: str
    folder: Path
    job_ids: dict[int, str] = field(default_factory=dict)
    outcomes: list[ShardOutcome] = field(default_factory=list)
    consolidate_job_id: str | None = None
    waited: bool = True

    @property
    def array_id(self) -> str | None:
        """The Slurm array (or single job) id of the shards; None for other launchers or no jobs."""
        if self.launcher != "slurm" or not self.job_ids:
            return None
        return next(iter(self.job_ids.values())).split("_")[0]

    @property
    def failed(self) -> list[ShardOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def results(self) -> dict[int, Any]:
        """Shard index -> the run function's return value, for the shards that finished."""
        return {o.shard: o.result for o in self.outcomes if o.ok}


def tail_lines(path: Path | None, count: int = STDERR_TAIL_LINES) -> str:
    """The last `count` lines of a text file ('' when it does not exist)."""
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        data = f.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-count:])


def collect_outcome(shard: int, job_id: str, folder: Path, state: str, grace_s: float = 0.0) -> ShardOutcome:
    """Read an ended job's result pickle (waiting up to `grace_s` for it to appear) into a ShardOutcome."""
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    deadline = time.monotonic() + grace_s
    while not paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    outcome = ShardOutcome(shard, job_id, state, ok=False, stdout=paths.stdout, stderr=paths.stderr)
    if paths.result_pickle.exists():
        try:
            kind, payload = pickle_load(paths.result_pickle)
        except Exception as error:  # noqa: BLE001 - an unreadable result is a failed shard, not a crash
            outcome.error = f"unreadable result {paths.result_pickle}: {error}"
        else:
            if kind == "success":
                outcome.ok, outcome.result = True, payload
            else:
                lines = [line for line in str(payload).splitlines() if line.strip()]
                outcome.error = lines[-1].strip() if lines else "the job raised an exception"
    else:
        outcome.error = f"the job ended ({state}) without a result"
    if not outcome.ok:
        outcome.stderr_tail = tail_lines(paths.stderr)
    return outcome


def report_failures(outcomes: Sequence[ShardOutcome]) -> None:
    """Log every failed shard with its job id, logs and stderr tail."""
    for outcome in outcomes:
        if not outcome.ok:
            log.error("%s", outcome.describe())


# --- executors ----------------------------------------------------------------------------------


def _require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
    if missing:
        raise LaunchError(
            f"hardware.launcher=slurm: {', '.join(missing)} not found on PATH "
            "(run this on a Slurm login node, or pick another hardware config)"
        )


def make_executor(
    hw: HardwareConfig, folder: Path | str, *, gpus_per_node: int | None = None
) -> submitit.Executor:
    """A submitit executor for `hw.launcher` ("local" or "slurm") writing its files under `folder`.

    `gpus_per_node` overrides `hw.gpus_per_node` (Slurm; the consolidation job asks for none).
    """
    launcher = _name(hw.launcher)
    if launcher == "local":
        local = submitit.LocalExecutor(folder=str(folder))
        local.update_parameters(
            timeout_min=hw.timeout_min,
            signal_delay_s=hw.signal_delay_s,
            gpus_per_node=0,
            setup=list(hw.setup or []),
        )
        return local
    if launcher != "slurm":
        raise LaunchError(
            f"hardware.launcher={launcher}: only 'local' and 'slurm' submit jobs "
            "('inprocess' runs the shards in this process)"
        )
    _require_slurm()
    executor = submitit.AutoExecutor(
        folder=str(folder), cluster="slurm", slurm_max_num_timeout=hw.max_num_timeout
    )
    params: dict[str, Any] = {
        "timeout_min": int(hw.timeout_min),
        "cpus_per_task": int(hw.cpus_per_task),
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_partition": hw.partition,
        "slurm_account": hw.account,
        "slurm_qos": hw.qos,
        "slurm_constraint": hw.constraint,
        "slurm_array_parallelism": int(hw.array_parallelism),
        "slurm_signal_delay_s": int(hw.signal_delay_s),
        "slurm_additional_parameters": dict(hw.additional_parameters or {}),
        "slurm_setup": list(hw.setup or []),
    }
    if hw.mem_gb is not None:
        params["mem_gb"] = hw.mem_gb
    gpus = hw.gpus_per_node if gpus_per_node is None else gpus_per_node
    if gpus:
        params["gpus_per_node"] = int(gpus)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def local_gpus(hw: HardwareConfig) -> list[int]:
    """GPU ids for the local launcher, one worker each; [] on the CPU."""
    if _name(hw.device) != "cuda":
        return []
    if hw.gpus is not None:
        gpus = [int(g) for g in hw.gpus]
        if not gpus:
            raise LaunchError("hardware.gpus: empty list (null = all visible GPUs)")
        return gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        try:
            gpus = [int(part) for part in visible.split(",") if part.strip()]
        except ValueError:
            raise LaunchError(
                f"hardware.gpus: CUDA_VISIBLE_DEVICES={visible!r} is not a list of integers; "
                "set hardware.gpus=[...] explicitly"
            ) from None
    else:
        import torch

        gpus = list(range(torch.cuda.device_count()))
    if not gpus:
        raise LaunchError("hardware.device=cuda with the local launcher, but no GPU is visible")
    return gpus


def slot_cpus(slots: int) -> list[list[int]]:
    """Each concurrent local job's share of this process's CPUs (disjoint blocks of usable_cpus())."""
    try:
        ids = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        ids = list(range(os.cpu_count() or 1))
    return split_cpus(ids[: usable_cpus()], slots)


def local_slots(hw: HardwareConfig) -> list[int | None]:
    """Concurrent local workers: one per GPU, or CPUs // hardware.threads on the CPU (at least one)."""
    gpus = local_gpus(hw)
    if gpus:
        return list(gpus)
    cpus = usable_cpus()
    return [None] * max(1, cpus // (hw.threads or cpus))


# --- job states ---------------------------------------------------------------------------------


def _run_quiet(command: list[str], timeout_s: float = 60.0) -> str | None:
    """stdout of a command, or None when it fails or times out (the caller keeps its last view)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as error:
        log.debug("%s failed: %s", command[0], error)
        return None
    if done.returncode != 0:
        log.debug("%s failed: %s", command[0], done.stderr.strip())
        return None
    return done.stdout


def _expand_ids(job_id: str) -> list[str]:
    """'12_[3-5%2]' -> ['12_3', '12_4', '12_5']; plain ids pass through."""
    from submitit.slurm.slurm import read_job_id

    ids: list[str] = []
    for parts in read_job_id(job_id):
        if len(parts) == 3:
            ids.extend(f"{parts[0]}_{i}" for i in range(int(parts[1]), int(parts[2]) + 1))
        else:
            ids.append("_".join(parts))
    return ids


def slurm_states(job_ids: Sequence[str], timeout_s: float = 60.0) -> dict[str, str] | None:
    """Current state per job id: squeue (live, recent jobs) first, sacct for the rest.

    Ids neither knows are absent; None when both commands failed (no information at all).
    """
    wanted = set(job_ids)
    states: dict[str, str] = {}
    squeue = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"]
    try:
        squeue += ["-u", getpass.getuser()]
    except (KeyError, OSError):  # no user name: all jobs, filtered below
        pass
    squeue_out = _run_quiet(squeue, timeout_s)
    for line in (squeue_out or "").splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in wanted:
            states[jid] = state.split()[0] if state else ""
    rest = sorted({jid.split("_")[0] for jid in wanted - set(states)})
    if not rest:
        return states
    sacct_out = _run_quiet(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(rest)], timeout_s)
    if squeue_out is None and sacct_out is None:
        return None
    for line in (sacct_out or "").splitlines():
        raw, _, state = line.strip().partition("|")
        try:
            ids = _expand_ids(raw)
        except Exception:  # noqa: BLE001 - an odd sacct line is skipped
            continue
        for jid in ids:
            if jid in wanted and jid not in states:
                states[jid] = state.split()[0] if state else ""
    return states


# --- progress -----------------------------------------------------------------------------------


class ShardProgress:
    """finished/running/pending/failed over shards: a tqdm bar on a terminal, log lines otherwise."""

    def __init__(self, total: int, every_s: float = 60.0) -> None:
        self.total, self.every_s = total, every_s
        self.counts = {"finished": 0, "running": 0, "pending": total, "failed": 0}
        self.last_log = float("-inf")
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="shard", dynamic_ncols=True)

    def update(self, finished: int, running: int, pending: int, failed: int) -> None:
        counts = {"finished": finished, "running": running, "pending": pending, "failed": failed}
        changed = counts != self.counts
        done_before = self.counts["finished"] + self.counts["failed"]
        self.counts = counts
        if self.bar is not None:
            self.bar.set_postfix(running=running, pending=pending, failed=failed, refresh=False)
            self.bar.update(finished + failed - done_before)
        elif changed or time.monotonic() - self.last_log >= self.every_s:
            self.last_log = time.monotonic()
            log.info(
                "shards: %d/%d finished, %d running, %d pending, %d failed",
                finished,
                self.total,
                running,
                pending,
                failed,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class WaitOptions:
    """Polling knobs of the waiting launcher."""

    poll_s: float | None = None
    """seconds between state checks; None = 1 (local), or for Slurm from 1 s growing to 30 s as jobs age"""
    log_every_s: float = 60.0
    lost_after_s: float = 300.0
    """a job that squeue and sacct have never listed for this long counts as failed"""
    vanish_after_s: float = 10.0
    """a job (or a task of an array they list) that they stop listing for this long has ended"""
    result_grace_s: float = 30.0
    """how long an ended job's result file may take to appear (shared file systems)"""


# --- launching ----------------------------------------------------------------------------------


def _job_name(cfg: ExtractConfig) -> str:
    model = getattr(getattr(cfg, "model", None), "name", None)
    return f"extract-{model}" if model else "extract"


def _submission_error(error: Exception) -> LaunchError:
    text = _one_line(str(error))
    lines = [part for part in text.split(" | ") if "error" in part.lower()] or [text]
    return LaunchError(f"sbatch rejected the shard jobs: {' | '.join(lines)}")


def launch_shards(
    cfg: ExtractConfig,
    shards: Sequence[int],
    num_shards: int,
    *,
    run_fn: RunFn | None = None,
    consolidate_fn: ConsolidateFn | None = None,
    folder: Path | str | None = None,
    wait_options: WaitOptions | None = None,
) -> LaunchResult:
    """Run `shards` (of `num_shards`) with `cfg.hardware`'s launcher, one job per shard.

    Waits (hardware.wait, and always for the local launcher) and returns one outcome per shard; with
    Slurm and wait=false it also submits `consolidate_fn` to run after the array and returns at once.
    """
    hw = cfg.hardware
    launcher = _name(hw.launcher)
    folder = (
        Path(folder if folder is not None else (hw.log_dir or naming.JOB_LOGS_DIR)).expanduser().resolve()
    )
    options = wait_options or WaitOptions()
    shards = list(shards)
    if launcher not in ("local", "slurm"):
        raise LaunchError(
            f"hardware.launcher={launcher}: only 'local' and 'slurm' submit jobs "
            "('inprocess' runs the shards in this process)"
        )
    if not shards:
        log.info("no shard needs running")
        return LaunchResult(launcher, folder)
    task = ShardTask(run_fn)
    if launcher == "local":
        if not hw.wait:
            log.warning(
                "hardware.wait=false is for Slurm: local workers are children of this process; waiting"
            )
        return _run_local(cfg, task, shards, num_shards, folder, options)
    executor = make_executor(hw, folder)
    executor.update_parameters(name=_job_name(cfg))
    n = len(shards)
    try:
        jobs = executor.map_array(task, [cfg] * n, shards, [num_shards] * n)
    except Exception as error:  # sbatch's message arrives in submitit's exception
        raise _submission_error(error) from error
    result = LaunchResult(
        "slurm", folder, job_ids={s: job.job_id for s, job in zip(shards, jobs, strict=True)}
    )
    log.info(
        "submitted %d shard(s) of %d as Slurm job %s; logs in %s", n, num_shards, result.array_id, folder
    )
    if not hw.wait:
        if consolidate_fn is not None:
            result.consolidate_job_id = _submit_consolidation(cfg, hw, folder, result, consolidate_fn)
        result.waited = False
        log.info(
            "not waiting (hardware.wait=false): shards = job %s%s; follow with: squeue -j %s",
            result.array_id,
            f", consolidation = job {result.consolidate_job_id}" if result.consolidate_job_id else "",
            result.array_id,
        )
        return result
    result.outcomes = _wait_slurm(result, options)
    return result


def _submit_consolidation(
    cfg: ExtractConfig, hw: HardwareConfig, folder: Path, result: LaunchResult, consolidate_fn: ConsolidateFn
) -> str:
    """Submit the job that runs after the whole array (afterany); cancel the array if sbatch refuses it."""
    executor = make_executor(hw, folder, gpus_per_node=0)
    executor.update_parameters(
        name=f"{_job_name(cfg)}-consolidate", slurm_dependency=f"afterany:{result.array_id}"
    )
    try:
        job = executor.submit(ConsolidateTask(consolidate_fn), cfg, str(folder), dict(result.job_ids))
    except Exception as error:
        subprocess.run(["scancel", str(result.array_id)], capture_output=True, timeout=60)
        raise LaunchError(
            f"the consolidation job was rejected, so shard job {result.array_id} was cancelled: "
            f"{_submission_error(error)}"
        ) from error
    return job.job_id


def _category(state: str) -> str:
    if state in RUNNING_STATES:
        return "running"
    if state in WAITING_STATES:
        return "pending"
    return "ended"


def _grace_s(state: str, options: WaitOptions) -> float:
    """How long to wait for an ended job's result file: long after success, briefly otherwise."""
    return options.result_grace_s if state in ("COMPLETED", "FINISHED") else min(options.result_grace_s, 5.0)


def _wait_slurm(result: LaunchResult, options: WaitOptions) -> list[ShardOutcome]:
    """Poll the array until every shard has ended; never hangs on cancelled, vanished or unknown jobs.

    An array task cancelled while pending leaves no record in squeue or sacct (Slurm 22.05): a task
    that squeue/sacct stop listing while they answer (and list its array) counts as cancelled.
    """
    started = time.monotonic()
    all_ids = list(result.job_ids.values())
    pending = dict(result.job_ids)  # shard -> job id, not yet ended
    last_seen = dict.fromkeys(all_ids, started)
    gone_since: dict[str, float] = {}
    ended_at: dict[str, float] = {}
    states: dict[str, str] = {}
    outcomes: dict[int, ShardOutcome] = {}
    progress = ShardProgress(len(pending), options.log_every_s)
    try:
        while pending:
            fresh = slurm_states(all_ids)
            if fresh is None:
                log.warning("squeue and sacct both failed; keeping the last known states")
            now = time.monotonic()
            listed_arrays = {jid.split("_")[0] for jid in fresh or {}}
            for shard, jid in list(pending.items()):
                if fresh is not None and jid in fresh:
                    last_seen[jid], states[jid] = now, fresh[jid]
                    gone_since.pop(jid, None)
                elif fresh is not None and (jid in states or jid.split("_")[0] in listed_arrays):
                    gone_since.setdefault(jid, now)  # it (or its array) was listed, it is not any more
                state, error = states.get(jid, "UNKNOWN"), None
                has_result = JobPaths(result.folder, job_id=jid, task_id=0).result_pickle.exists()
                if has_result and state not in RUNNING_STATES:
                    pass
                elif jid in gone_since and now - gone_since[jid] >= options.vanish_after_s:
                    if state in WAITING_STATES:
                        state, error = (
                            "CANCELLED",
                            "cancelled before it started (Slurm keeps no record of it)",
                        )
                    else:
                        state, error = f"LOST (last state {state})", "no longer listed by squeue or sacct"
                elif fresh is not None and jid not in fresh and now - last_seen[jid] > options.lost_after_s:
                    state, error = "LOST (never listed)", "never listed by squeue or sacct"
                elif _category(state) != "ended":
                    continue
                ended_at.setdefault(jid, now)
                if not has_result and now - ended_at[jid] < _grace_s(state, options):
                    continue  # its result may still be on its way (shared file systems)
                outcome = collect_outcome(shard, jid, result.folder, state)
                if error and not outcome.ok:
                    outcome.error = error
                if not outcome.ok:
                    log.error("%s", outcome.describe())
                outcomes[shard] = outcome
                del pending[shard]
            # an ended job still waiting for its result file shows as running until it is collected
            cats = [
                _category(states.get(jid, "UNKNOWN")).replace("ended", "running") for jid in pending.values()
            ]
            failed = sum(not o.ok for o in outcomes.values())
            progress.update(len(outcomes) - failed, cats.count("running"), cats.count("pending"), failed)
            if pending:
                age = time.monotonic() - started
                time.sleep(options.poll_s if options.poll_s is not None else min(30.0, max(1.0, age / 10)))
    except KeyboardInterrupt:
        log.warning("stopped waiting; the jobs keep running (cancel them with: scancel %s)", result.array_id)
        raise
    finally:
        progress.close()
    return [outcomes[s] for s in sorted(outcomes)]


def _run_local(
    cfg: ExtractConfig,
    task: ShardTask,
    shards: list[int],
    num_shards: int,
    folder: Path,
    options: WaitOptions,
) -> LaunchResult:
    """Run the shards as local submitit jobs, at most one per GPU (or CPU slot) at a time, and wait."""
    hw = cfg.hardware
    slots = local_slots(hw)
    shares = slot_cpus(len(slots))
    executor = make_executor(hw, folder)
    poll_s = options.poll_s if options.poll_s is not None else 1.0
    result = LaunchResult("local", folder)
    queue = list(shards)
    running: dict[int, tuple[int, submitit.Job[Any]]] = {}  # slot index -> (shard, job)
    outcomes: dict[int, ShardOutcome] = {}
    progress = ShardProgress(len(shards), options.log_every_s)
    log.info(
        "running %d shard(s) of %d locally on %s, %d CPU(s) each; logs in %s",
        len(shards),
        num_shards,
        f"GPUs {slots}" if slots[0] is not None else f"{len(slots)} CPU worker(s)",
        len(shares[0]),
        folder,
    )
    try:
        while queue or running:
            for slot, gpu in enumerate(slots):
                if slot in running or not queue:
                    continue
                shard = queue.pop(0)
                if gpu is None:
                    executor.update_parameters(gpus_per_node=0, visible_gpus=())
                else:
                    executor.update_parameters(gpus_per_node=1, visible_gpus=[gpu])
                job = executor.submit(task.with_cpus(shares[slot]), cfg, shard, num_shards)
                result.job_ids[shard] = job.job_id
                running[slot] = (shard, job)
                log.info(
                    "shard %d: local job %s%s", shard, job.job_id, "" if gpu is None else f" on GPU {gpu}"
                )
            for slot, (shard, job) in list(running.items()):
                state = job.state
                if state != "RUNNING":
                    outcomes[shard] = collect_outcome(shard, job.job_id, folder, state, grace_s=2.0)
                    if not outcomes[shard].ok:
                        log.error("%s", outcomes[shard].describe())
                    del running[slot]
            failed = sum(not o.ok for o in outcomes.values())
            progress.update(len(outcomes) - failed, len(running), len(queue), failed)
            if queue or running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping the local shard jobs")
        for _, job in running.values():
            job.cancel()
        raise
    finally:
        progress.close()
    result.outcomes = [outcomes[s] for s in sorted(outcomes)]
    return result


# --- the pipeline's use (python -m pipeline.extract) --------------------------------------------


def shard_count(hw: HardwareConfig) -> int:
    """hardware.num_shards, where 0 (local launcher) means one shard per GPU / CPU worker."""
    return int(hw.num_shards) if hw.num_shards > 0 else len(local_slots(hw))


def shards_to_run(cfg: ExtractConfig, num_shards: int) -> tuple[list[int], list[ShardSummary]]:
    """The wanted shards that still have videos to extract, and summaries of those with nothing to do."""
    from pipeline.run import ShardSummary, plan_run

    hw = cfg.hardware
    wanted = [hw.shard_index] if hw.shard_index is not None else list(range(num_shards))
    todo: list[int] = []
    complete: list[ShardSummary] = []
    for shard in wanted:
        _, entries, decisions, _, _ = plan_run(cfg, shard, num_shards)
        if any(decisions[e.key].run for e in entries if not e.error):
            todo.append(shard)
        else:
            errors = sum(bool(e.error) for e in entries)
            complete.append(ShardSummary(shard, num_shards, failed=errors, skipped=len(entries) - errors))
    return todo, complete


def _failed_shards_line(failed: Sequence[ShardOutcome]) -> str:
    where = "; ".join(f"shard {o.shard} (job {o.job_id}, {o.state}, stderr {o.stderr})" for o in failed)
    return f"{len(failed)} shard(s) failed: {where}; rerun the same command to retry them"


def finish_detached(
    cfg: ExtractConfig,
    outcomes: list[ShardOutcome],
    *,
    output_dir: str,
    complete: list[ShardSummary],
) -> dict[str, Any]:
    """The consolidation job of a run submitted without waiting: HDF5 + run record, like a waiting run."""
    from pipeline.run import consolidate_outputs, finish_run

    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise LaunchError(f"not consolidating: {_failed_shards_line(failed)}")
    summaries = sorted([*complete, *(o.result for o in outcomes)], key=lambda s: s.shard)
    out = Path(output_dir)
    h5 = consolidate_outputs(cfg, out) if cfg.output.hdf5 and cfg.hardware.shard_index is None else None
    return finish_run(cfg, out, summaries, None, h5)


def _with_num_shards(cfg: ExtractConfig, num_shards: int) -> ExtractConfig:
    return dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, num_shards=num_shards))


def launch_run(cfg: ExtractConfig, output_dir: Path) -> list[ShardSummary] | None:
    """Run a whole extraction with the local or Slurm launcher; shard summaries, or None if not waiting.

    Raises LaunchError (after logging each failure with its logs) when a shard job failed.
    """
    hw = cfg.hardware
    num_shards = shard_count(hw)
    if num_shards != hw.num_shards:
        cfg = _with_num_shards(cfg, num_shards)
    todo, complete = shards_to_run(cfg, num_shards)
    if complete:
        log.info("%d shard(s) have nothing left to do: %s", len(complete), [s.shard for s in complete])
    folder = Path(hw.log_dir).expanduser() if hw.log_dir else Path(output_dir) / naming.JOB_LOGS_DIR
    finish = functools.partial(finish_detached, output_dir=str(output_dir), complete=complete)
    result = launch_shards(cfg, todo, num_shards, consolidate_fn=finish, folder=folder)
    if not result.waited:
        return None
    if result.failed:
        raise LaunchError(_failed_shards_line(result.failed))
    return sorted([*complete, *result.results.values()], key=lambda s: s.shard)
