"""Slurm job states (squeue, then sacct), waiting for an array without hanging on cancelled, vanished or
unknown jobs, and the consolidation job submitted after an array."""

from __future__ import annotations

import getpass
import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from submitit.core.utils import JobPaths

from pipeline.launch.outcomes import LaunchResult, ShardOutcome, ShardProgress, collect_outcome

log = logging.getLogger(__name__)

RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"})
_WAITING = "UNKNOWN PENDING REQUEUED REQUEUE_HOLD REQUEUE_FED SUSPENDED PREEMPTED RESV_DEL_HOLD SPECIAL_EXIT"
WAITING_STATES = frozenset(["", *_WAITING.split()])
"""Slurm states of a job that may still run; anything else (and no result) is a failure."""


# --- job states ---------------------------------------------------------------------------------


def run_quiet(command: list[str], timeout_s: float = 60.0) -> str | None:
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


def expand_ids(job_id: str) -> list[str]:
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
    squeue_out = run_quiet(squeue, timeout_s)
    for line in (squeue_out or "").splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in wanted:
            states[jid] = state.split()[0] if state else ""
    rest = sorted({jid.split("_")[0] for jid in wanted - set(states)})
    if not rest:
        return states
    sacct_out = run_quiet(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(rest)], timeout_s)
    if squeue_out is None and sacct_out is None:
        return None
    for line in (sacct_out or "").splitlines():
        raw, _, state = line.strip().partition("|")
        try:
            ids = expand_ids(raw)
        except Exception:  # noqa: BLE001 - an odd sacct line is skipped
            continue
        for jid in ids:
            if jid in wanted and jid not in states:
                states[jid] = state.split()[0] if state else ""
    return states


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


def category(state: str) -> str:
    if state in RUNNING_STATES:
        return "running"
    if state in WAITING_STATES:
        return "pending"
    return "ended"


def grace_s(state: str, options: WaitOptions) -> float:
    """How long to wait for an ended job's result file: long after success, briefly otherwise."""
    return options.result_grace_s if state in ("COMPLETED", "FINISHED") else min(options.result_grace_s, 5.0)


def wait_slurm(result: LaunchResult, options: WaitOptions) -> list[ShardOutcome]:
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
                elif category(state) != "ended":
                    continue
                ended_at.setdefault(jid, now)
                if not has_result and now - ended_at[jid] < grace_s(state, options):
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
                category(states.get(jid, "UNKNOWN")).replace("ended", "running") for jid in pending.values()
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
