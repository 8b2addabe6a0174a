"""Which reduced precisions this machine runs natively, checked once at start.

bf16 autocast on a CPU without bf16 instructions is emulated (measured ~30x slower than fp32 on an AMD
Zen3), so `hardware.precision=bf16` on CPU is refused there with one line instead of becoming a trap.
`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is true also where bf16 is only emulated, so the test
here is the instruction set itself: AMX tiles or AVX512-BF16.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.inference import DeviceError

log = logging.getLogger(__name__)

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
