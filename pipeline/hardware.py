"""What this machine offers a run: CPUs (this process's share of them), native bf16, the heap setting.

One place for the CPU counts: a run's model threads, its decode workers and FFmpeg threads, and each local
job's share all come from `usable_cpus()`.

bf16: which reduced precisions this machine runs natively, checked once at start. bf16 autocast on a CPU without bf16 instructions is emulated (measured ~30x slower than fp32 on an AMD
Zen3), so `hardware.precision=bf16` on CPU is refused there with one line instead of becoming a trap.
`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is true also where bf16 is only emulated, so the test
here is the instruction set itself: AMX tiles or AVX512-BF16.

Heap: for CPU inference, freed activation memory is kept for the next batch. glibc hands allocations above its mmap threshold (at most 32 MB) to fresh `mmap`s and unmaps them on
free, so every batch page-faults and zeroes its large activations again: about 650 MB per SlowFast R50
clip at 256x256, 20-30% of the CPU time on two cores. Serving everything from the heap and never trimming
it makes later batches reuse the same pages (measured here: 1.16x faster at batch 2, 1.39x at batch 4, for
0.2-0.7 GB more peak RSS; see the README's throughput section).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.config import ConfigError

log = logging.getLogger(__name__)


class DeviceError(ConfigError, RuntimeError):
    """`hardware.device` or `hardware.precision` that this machine cannot run; the message names the key."""


# --- CPUs -----------------------------------------------------------------------------------------

CPU_SHARE_ENV = "PIPELINE_CPUS"  # set by the local launcher in each of its jobs: that job's share of CPUs


def usable_cpus() -> int:
    """CPUs this process may run on: its launcher's share (PIPELINE_CPUS, one local job of several),
    Slurm's cpus_per_task when set, else the affinity mask."""
    for name in (CPU_SHARE_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """The model's thread count: an explicit OMP_NUM_THREADS, else `usable_cpus()`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else usable_cpus()


def split_cpus(cpu_ids: list[int], jobs: int) -> list[list[int]]:
    """`cpu_ids` cut into `jobs` disjoint contiguous blocks of equal size (the remainder left unused);
    with more jobs than CPUs, each job gets one CPU, shared round-robin."""
    ids = sorted(cpu_ids)
    if jobs < 1 or not ids:
        raise ValueError(f"split_cpus: need >= 1 job and >= 1 CPU (got {jobs} jobs, {len(ids)} CPUs)")
    share = len(ids) // jobs
    if share == 0:
        return [[ids[job % len(ids)]] for job in range(jobs)]
    return [ids[job * share : (job + 1) * share] for job in range(jobs)]


def decoder_threads(cpus: int, decode_workers: int) -> int:
    """FFmpeg threads per decode worker so that all workers together use about `cpus` CPUs.

    `decode_workers` 0 means one worker per CPU (as the engine reads it); FFmpeg's own default (0) would
    give every worker threads for every CPU of the node.
    """
    workers = cpus if decode_workers <= 0 else min(decode_workers, cpus)
    return max(1, cpus // max(1, workers))


# --- native bf16 ------------------------------------------------------------------------------------

CPUINFO = Path("/proc/cpuinfo")
CPU_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}  # /proc/cpuinfo flag -> name


def _torch_probe(name: str) -> Callable[[], bool] | None:
    """A private torch.cpu capability probe (present in torch 2.x), or None where this torch lacks it."""
    probe = getattr(torch.cpu, name, None)
    return probe if callable(probe) else None


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_native_bf16() -> str | None:
    """The instruction set that runs bf16 natively on this CPU ("AMX-BF16", "AVX512-BF16"), or None.

    torch's own probes (which also see whether the OS enabled AMX tiles) are asked first; /proc/cpuinfo
    answers where this torch has none.
    """
    amx, avx512 = _torch_probe("_is_amx_tile_supported"), _torch_probe("_is_avx512_bf16_supported")
    if amx is not None or avx512 is not None:
        if amx is not None and amx():
            return "AMX-BF16"
        if avx512 is not None and avx512():
            return "AVX512-BF16"
        return None
    flags = cpu_flags()
    return next((name for flag, name in CPU_BF16_FLAGS.items() if flag in flags), None)


def check_precision(device: torch.device, precision: str) -> None:
    """DeviceError (one line, a ConfigError) for bf16 on a CPU without native bf16; logs what runs it."""
    if device.type != "cpu" or precision != "bf16":
        return
    isa = cpu_native_bf16()
    if isa is None:
        raise DeviceError(
            "hardware.precision=bf16: this CPU has no native bf16 (no AMX or AVX512-BF16); emulated bf16 "
            "is many times slower than fp32 here, use hardware.precision=fp32"
        )
    log.info("hardware.precision=bf16: autocast on CPU with native %s", isa)


# --- heap -------------------------------------------------------------------------------------------

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): keep up to 2 GB free at the heap top


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and never trim it; False (nothing changed) elsewhere.

    Call it once the model is loaded (its weights then stay in their own mappings); it applies to the
    whole process and to processes forked after it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt ignores these parameters)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    if done:
        log.debug("glibc malloc: no mmap for large blocks, no heap trimming (freed memory is reused)")
    return done
