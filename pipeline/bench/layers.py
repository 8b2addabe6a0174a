"""Per-conv roofline profile: what bounds each convolution of a model on this machine.

Each conv of the model is timed alone, on an input of the shape it sees in a forward pass, the way the
run executes it (channels_last, folded, fused with its ReLU where the block is fused, under the run's
autocast). Its FLOPs and bytes (input + weights + output) give an arithmetic intensity; beside the matmul
peak and the memory bandwidth measured in the same process, that says whether the conv could at best be
compute-bound (peak) or memory-bound (intensity x bandwidth), and how far from that bound it runs.
`python -m pipeline.benchmark --layers` prints it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models import fused as fused_ops

VECTOR_LANES_FP32 = 16  # an AVX-512 register holds 16 fp32 values: fewer output channels leave lanes idle


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a large tensor copy on the current torch threads (read + write counted): best of `repeats`."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * 4 / best / 1e9


@dataclass(frozen=True)
class InputLayout:
    """What a conv receives in a forward pass: shape, dtype and whether it is channels-last."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    channels_last: bool

    def random(self, device: torch.device) -> Tensor:
        """A random tensor of this layout (the values do not change a dense conv's speed)."""
        x = torch.randn(self.shape, device=device).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x


def conv_inputs(
    model: nn.Module, pathways: list[Tensor], autocast: Callable[[], Any]
) -> dict[str, InputLayout]:
    """The input layout of every Conv3d of one forward pass, by module name, in forward order."""
    seen: dict[str, InputLayout] = {}

    def record(name: str, x: Tensor) -> None:
        channels_last = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
        seen[name] = InputLayout(tuple(x.shape), x.dtype, channels_last and not x.is_contiguous())

    handles = [
        conv.register_forward_pre_hook(lambda m, args, name=name: record(name, args[0]))
        for name, conv in model.named_modules()
        if isinstance(conv, nn.Conv3d)
    ]
    try:
        with torch.inference_mode(), autocast(), fused_ops.unfused(model):
            model.forward_features(pathways)  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    return seen


def fused_convs(model: nn.Module) -> set[nn.Module]:
    """The convs that run fused with their ReLU (their block is fused; a projection shortcut is not)."""
    out: set[nn.Module] = set()
    for block in model.modules():
        if isinstance(block, fused_ops.FusableBlock) and block.fused:
            out.update(block.fused_convs())
    return out


def conv_row(
    name: str, conv: nn.Conv3d, x: Tensor, run: Callable[[], Tensor], repeats: int
) -> dict[str, Any]:
    """Time one conv on its input; its FLOPs (2 per multiply-add), bytes and arithmetic intensity."""
    out = run()  # warm-up (and the output's shape)
    seconds = statistics.median(_timed(run) for _ in range(repeats))
    macs = out.numel() * conv.weight[0].numel()
    element = x.element_size()
    nbytes = (x.numel() + conv.weight.numel() + out.numel()) * element
    return {
        "layer": name,
        "input": list(x.shape),
        "weight": list(conv.weight.shape),
        "ms": 1000 * seconds,
        "gflop": 2 * macs / 1e9,
        "gflop_per_s": 2 * macs / seconds / 1e9,
        "flops_per_byte": 2 * macs / nbytes,
        "narrow": conv.out_channels // conv.groups < VECTOR_LANES_FP32,
    }


def _timed(run: Callable[[], Tensor]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def model_pathways(clip_model: Any, batch: int, num_frames: int, size: int) -> list[Tensor]:
    """A random normalised batch as the model's pathways, in the run's memory format, on its device."""
    clip = torch.randn(batch, 3, num_frames, size, size, generator=torch.Generator().manual_seed(0))
    pathways = clip_model.model.pathways(clip.to(clip_model.device))
    if clip_model.channels_last:
        pathways = [p.contiguous(memory_format=torch.channels_last_3d) for p in pathways]
    return pathways


def layer_profile(
    clip_model: Any, batch: int, num_frames: int, size: int, peak_gflop_s: float, repeats: int = 3
) -> dict[str, Any]:
    """Every conv of `clip_model` (a TorchClipModel) timed alone, with its roofline bound; plus the time of
    one whole forward pass, so that what is not convolution shows as the rest."""
    bandwidth_gb_s = measure_bandwidth()
    pathways = model_pathways(clip_model, batch, num_frames, size)
    model = clip_model.model
    autocast = clip_model._autocast
    inputs = conv_inputs(model, pathways, autocast)
    with_relu = fused_convs(model)
    modules = dict(model.named_modules())
    rows = []
    with torch.inference_mode(), autocast():
        for name, layout in inputs.items():
            x = layout.random(pathways[0].device)
            conv = modules[name]
            assert isinstance(conv, nn.Conv3d)
            run = partial(fused_ops.conv_relu, conv, x) if conv in with_relu else partial(conv, x)
            row = conv_row(name, conv, x, run, repeats)
            row["fused_relu"] = conv in with_relu
            rows.append(row)
        forward = statistics.median(_timed(lambda: model.forward_features(pathways)) for _ in range(repeats))
    balance = peak_gflop_s / bandwidth_gb_s  # flops per byte where the two bounds meet
    for row in rows:
        row["bound"] = "compute" if row["flops_per_byte"] >= balance else "memory"
        row["attainable_gflop_s"] = min(peak_gflop_s, row["flops_per_byte"] * bandwidth_gb_s)
        row["of_attainable"] = row["gflop_per_s"] / row["attainable_gflop_s"]
    conv_ms = sum(r["ms"] for r in rows)
    return {
        "peak_gflop_s": peak_gflop_s,
        "bandwidth_gb_s": bandwidth_gb_s,
        "machine_balance_flops_per_byte": balance,
        "forward_ms": 1000 * forward,
        "convs_ms": conv_ms,
        "rest_ms": 1000 * forward - conv_ms,
        "convs": rows,
        "groups": group_summary(rows, peak_gflop_s),
    }


def group_summary(rows: list[dict[str, Any]], peak_gflop_s: float) -> list[dict[str, Any]]:
    """Convs grouped by what bounds them: time, FLOPs and GFLOP/s of each group against the peak."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        kind = (
            "narrow (fewer output channels than vector lanes)" if row["narrow"] else f"{row['bound']}-bound"
        )
        groups.setdefault(kind, []).append(row)
    out = []
    for kind, members in groups.items():
        ms = sum(r["ms"] for r in members)
        gflop = sum(r["gflop"] for r in members)
        rate = gflop / ms * 1000
        out.append(
            {
                "group": kind,
                "convs": len(members),
                "ms": ms,
                "gflop": gflop,
                "gflop_per_s": rate,
                "of_peak": rate / peak_gflop_s,
            }
        )
    return sorted(out, key=lambda g: -g["ms"])


def print_layer_profile(profile: dict[str, Any], top: int = 12) -> None:
    """The groups, the slowest convs and the time outside convolutions, one line each."""
    peak = profile["peak_gflop_s"]
    print(
        f"  layers:      each conv alone; matmul peak {peak:.0f} GFLOP/s, copy bandwidth "
        f"{profile['bandwidth_gb_s']:.1f} GB/s -> memory-bound below "
        f"{profile['machine_balance_flops_per_byte']:.0f} flops/byte"
    )
    for g in profile["groups"]:
        print(
            f"    {g['group']:50s} {g['convs']:3d} convs {g['ms']:8.1f} ms {g['gflop']:7.1f} GFLOP "
            f"{g['gflop_per_s']:5.0f} GFLOP/s ({100 * g['of_peak']:3.0f}% of peak)"
        )
    print(
        f"    {'outside convolutions (pooling, concat, means, copies)':50s}           "
        f"{profile['rest_ms']:8.1f} ms of {profile['forward_ms']:.0f} ms per forward"
    )
    for row in sorted(profile["convs"], key=lambda r: -r["ms"])[:top]:
        kernel = "x".join(str(k) for k in row["weight"][2:])
        print(
            f"    {row['layer']:34s} {row['weight'][1]:4d}->{row['weight'][0]:<4d} {kernel:5s} {row['ms']:7.1f} ms "
            f"{row['gflop_per_s']:5.0f} GFLOP/s {row['flops_per_byte']:6.0f} flops/B {row['bound']:7s} "
            f"{100 * row['of_attainable']:3.0f}% of its bound{' (narrow)' if row['narrow'] else ''}"
        )
