"""What a benchmark measures: the model, the clip setting and the hardware knobs, and the flags that
reproduce them in a fresh process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Settings:
    """What is measured: the model, the clip setting and the hardware knobs (defaults: EPIC on CPU)."""

    model: str = "slowfast_r50"
    num_frames: int | None = 32  # None: the model's own
    sampling_rate: int | None = 1
    stride: int = 16
    fps: float | None = 30.0
    size: int | None = None  # model input size; None: the model's crop size
    batch_size: int = 4
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False
    decode_workers: int = 1
    decode_backend: str = "process"
    resize_backend: str = "torch"
    reuse_memory: bool = True
    repeats: int = 5
    arch_options: dict[str, Any] = field(default_factory=dict)  # model.arch_options, e.g. {"depth": 2}


def settings_args(s: Settings) -> list[str]:
    """Command-line flags that reproduce a Settings."""
    flags = [
        "--model",
        s.model,
        "--stride",
        str(s.stride),
        "--batch-size",
        str(s.batch_size),
        "--device",
        s.device,
        "--precision",
        s.precision,
        "--decode-workers",
        str(s.decode_workers),
        "--decode-backend",
        s.decode_backend,
        "--resize-backend",
        s.resize_backend,
        "--reuse-memory",
        "on" if s.reuse_memory else "off",
        "--repeats",
        str(s.repeats),
    ]
    for flag, value in (
        ("--num-frames", s.num_frames),
        ("--sampling-rate", s.sampling_rate),
        ("--fps", s.fps),
        ("--size", s.size),
    ):
        if value is not None:
            flags += [flag, str(value)]
    if s.channels_last is not None:
        flags += ["--channels-last", "on" if s.channels_last else "off"]
    if s.compile:
        flags.append("--compile")
    for key, value in s.arch_options.items():
        flags += ["--arch-option", f"{key}={value}"]
    return flags
