"""The model alone: clips/s on ready clips, GFLOPs (fvcore), the machine's matmul peak as yardstick,
time and GFLOP/s per stage, and a reduced precision's speed and fidelity against fp32."""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.bench.measure import CpuMeter, median_rate, random_clips, time_call
from pipeline.hardware import cpu_native_bf16
from pipeline.inference import TorchClipModel, build_arch
from pipeline.models.base import VideoModel
from pipeline.models.fused import unfused


def measure_model(
    models: dict[str, Any],
    batch: int,
    num_frames: int,
    size: int,
    repeats: int,
    cpu: dict[str, float] | None = None,
) -> dict[str, float]:
    """Clips/s of each model on ready uint8 clips; the models take turns so that load drift hits all alike.

    `cpu`, when given, receives each model's median CPU seconds per clip (all its threads).
    """
    clips, valid = random_clips(batch, num_frames, size)
    for model in models.values():
        model(clips, valid)  # warm-up (and compilation)
    times: dict[str, list[float]] = {name: [] for name in models}
    cpu_times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            with CpuMeter() as meter:
                times[name].append(time_call(model, clips, valid))
            cpu_times[name].append(meter.ours / batch)
    if cpu is not None:
        cpu.update({name: statistics.median(spent) for name, spent in cpu_times.items()})
    return {name: median_rate(batch, spent) for name, spent in times.items()}


def flop_input(model: VideoModel, num_frames: int, size: int) -> torch.Tensor:
    """A blank clip (1, C, T, size, size) on the device of the model's weights (the FLOP counter's input)."""
    device = next(model.parameters()).device
    return torch.zeros(1, model.spec.input_channels, num_frames, size, size, device=device)


def attention_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle of `aten::scaled_dot_product_attention` (which fvcore leaves uncounted), in fvcore's
    convention of one flop per multiply-add: its two matrix products, q k^T (B x heads x L x S x E
    multiply-adds for queries (..., L, E) and keys (..., S, E)) and the weights times v (B x heads x L x S x
    Ev): 2 x B x heads x L^2 x head_dim for self-attention. The scale, mask and softmax are element-wise
    and, like every element-wise op, not counted."""
    q, k, v = (list(x.type().sizes()) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


# ops whose multiply-adds fvcore does not count by itself, and their handles
EXTRA_FLOP_HANDLES = {"aten::scaled_dot_product_attention": attention_macs}


def gflops_per_clip(model: VideoModel, num_frames: int, size: int) -> float | None:
    """fvcore's count (one multiply-add = one flop) for one clip through forward_features, attention's
    matrix products included (`attention_macs`)."""
    analysis = flop_analysis(model, num_frames, size)
    return analysis.total() / 1e9 if analysis is not None else None


def flop_analysis(model: VideoModel, num_frames: int, size: int) -> Any:
    """fvcore's FlopCountAnalysis of one clip through forward_features (None without fvcore)."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None

    class Features(torch.nn.Module):
        def __init__(self, inner: VideoModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *pathways: torch.Tensor) -> torch.Tensor:
            return self.inner.forward_features(list(pathways))

    with torch.inference_mode(), unfused(model):  # the tracer cannot record oneDNN's fused conv op
        pathways = model.pathways(flop_input(model, num_frames, size))
        analysis = FlopCountAnalysis(Features(model).eval(), tuple(pathways))
        analysis.set_op_handle(**EXTRA_FLOP_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        analysis.total()  # counts now, under inference mode
        return analysis


# --- the machine's own yardstick: fp32 matmul peak, per-stage efficiency, bf16 against fp32 ----------


def measure_matmul_peak(
    size: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """GFLOP/s (2 flops per multiply-add) of a size x size matmul in `dtype` on the current torch threads
    (or the GPU): the best of `repeats`, the machine's peak least disturbed by other load."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def multiply() -> None:
        torch.mm(a, b, out=out)
        if out.is_cuda:
            torch.cuda.synchronize()

    multiply()  # warm-up
    best = min(time_call(multiply) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def stage_profile(clip_model: Any, batch: int, num_frames: int, size: int, repeats: int = 2) -> list[dict]:
    """Time and GFLOP/s (2 flops per multiply-add) of each top-level module of the model on one batch,
    as the configured fast paths run it (hooks around each stage; median of `repeats` batches)."""
    model = clip_model.model
    analysis = flop_analysis(model, num_frames, size)
    macs = analysis.by_module() if analysis is not None else {}
    stages = top_level_stages(model)
    spent: dict[str, list[float]] = {name: [] for name, _ in stages}
    started: dict[str, float] = {}
    handles = []
    for name, module in stages:
        handles.append(
            module.register_forward_pre_hook(
                lambda m, a, name=name: started.__setitem__(name, time.perf_counter())
            )
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, name=name: spent[name].append(time.perf_counter() - started[name])
            )
        )
    clips, valid = random_clips(batch, num_frames, size)
    try:
        clip_model(clips, valid)  # warm-up
        for times in spent.values():
            times.clear()
        total = statistics.median(time_call(clip_model, clips, valid) for _ in range(repeats))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, _ in stages:
        if not spent[name]:
            continue  # not called by forward_features (e.g. the classifier)
        seconds = statistics.median(spent[name]) * len(spent[name]) / repeats  # per batch
        gmacs = macs.get(f"inner.{name}", 0) / 1e9 * batch  # flop_analysis wraps the model as `inner`
        rows.append(
            {
                "stage": name,
                "ms": 1000 * seconds,
                "share": seconds / total,
                "gflop": 2 * gmacs,
                "gflop_per_s": 2 * gmacs / seconds if seconds > 0 else 0.0,
            }
        )
    rest = total - sum(r["ms"] for r in rows) / 1000
    rows.append(
        {
            "stage": "(outside stages)",
            "ms": 1000 * rest,
            "share": rest / total,
            "gflop": 0.0,
            "gflop_per_s": 0.0,
        }
    )
    return rows


def top_level_stages(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The model's children, a list of blocks (a ModuleList, never called itself: a ViT's or MViT's
    `blocks`) counting as its blocks one by one ("blocks.0", "blocks.1", ...)."""
    stages: list[tuple[str, torch.nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            stages += [(f"{name}.{i}", block) for i, block in enumerate(child)]
        else:
            stages.append((name, child))
    return stages


def fidelity(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Per row of features: the smallest cosine similarity and the largest relative L2 error of got vs want."""
    a = got.reshape(len(got), -1).astype(np.float64)
    b = want.reshape(len(want), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-30)
    relative = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    return {"rows": len(a), "min_cosine": float(cosine.min()), "max_relative_l2": float(relative.max())}


def fp32_twin(clip_model: Any) -> Any:
    """The same prepared model (folded norms, memory layout) without autocast, on a copy of the weights, so
    that its fp32 fast paths (conv + ReLU fusion) do not reach the reduced-precision model."""
    return TorchClipModel(
        copy.deepcopy(clip_model.model),
        device=clip_model.device,
        mean=clip_model.mean,
        std=clip_model.std,
        precision="fp32",
        channels_last=clip_model.channels_last,
        logits=clip_model.logits,
        fold_bn=False,  # already folded
    )


def compare_with_fp32(
    extractor: Any, video: Path, batch: int, num_frames: int, size: int, repeats: int
) -> dict[str, Any]:
    """Speed and fidelity of the configured precision against fp32 in the same process: model-only
    clips/s of both (taking turns), and per-row fidelity of the features of the same video's clips."""
    reduced = extractor.engine.model
    fp32 = fp32_twin(reduced)
    cpu: dict[str, float] = {}
    rates = measure_model({"reduced": reduced, "fp32": fp32}, batch, num_frames, size, repeats, cpu)
    extractor.engine.model = fp32
    try:
        want, _ = extractor.extract(video)
    finally:
        extractor.engine.model = reduced
    got, _ = extractor.extract(video)
    return {
        "precision": reduced.precision,
        "clips_per_s": rates["reduced"],
        "fp32_clips_per_s": rates["fp32"],
        "speedup": rates["reduced"] / rates["fp32"],
        "cpu_s_per_clip": cpu["reduced"],
        "fp32_cpu_s_per_clip": cpu["fp32"],
        "fidelity_video": str(video),
        **fidelity(got, want),
    }


def plain_model(extractor: Any) -> Any:
    """The same architecture as plain fp32 NCDHW (no fast path), on the same device."""
    c = extractor.config
    model = build_arch(c.model)
    return TorchClipModel(
        model,
        device=extractor.engine.model.device,
        mean=c.model.mean,
        std=c.model.std,
        precision="fp32",
        channels_last=False,
        fold_bn=False,
    )


def matmul_peaks(device: str = "cpu") -> dict[str, float]:
    """The fp32 and bf16 matmul peaks (GFLOP/s, 2 flops per multiply-add) measured now: the yardsticks of
    every model's achieved GFLOP/s. bf16 only where it runs natively (a GPU, or a CPU with AMX or
    AVX512-BF16: emulated bf16 is no peak of anything)."""
    peaks = {"fp32": measure_matmul_peak(device=device)}
    if device != "cpu" or cpu_native_bf16() is not None:
        peaks["bf16"] = measure_matmul_peak(dtype=torch.bfloat16, device=device)
    return peaks


def achieved(gmacs: float | None, clips_per_s: float, peaks: dict[str, float]) -> dict[str, float]:
    """Achieved GFLOP/s (2 flops per multiply-add) of a model and its share of each matmul peak."""
    if not gmacs:
        return {}
    rate = 2 * gmacs * clips_per_s
    return {"achieved_gflop_s": rate, **{f"share_of_{k}_peak": rate / v for k, v in peaks.items()}}


def efficiency(
    clip_model: Any, report: dict[str, Any], batch: int, num_frames: int, size: int
) -> dict[str, Any]:
    """Achieved GFLOP/s of the model beside this machine's fp32 matmul peak (and the bf16/fp16 one for a
    reduced precision: efficiency is against the run's own precision), and the per-stage profile."""
    device = clip_model.device.type
    out: dict[str, Any] = {"matmul_peak_gflop_s": measure_matmul_peak(device=device)}
    out["peak_gflop_s"] = out["matmul_peak_gflop_s"]
    if clip_model.dtype is not None:  # the precision's own peak: bf16 on AMX is several times fp32's
        out["peak_gflop_s"] = out[f"{clip_model.precision}_matmul_peak_gflop_s"] = measure_matmul_peak(
            dtype=clip_model.dtype, device=device
        )
    gmacs = report.get("gflops_per_clip")
    if gmacs:
        out["achieved_gflop_s"] = 2 * gmacs * report["model_clips_per_s"]
        out["efficiency_vs_peak"] = out["achieved_gflop_s"] / out["peak_gflop_s"]
    if not getattr(clip_model, "compiled", False):  # a compiled graph runs no module hooks
        out["stages"] = stage_profile(clip_model, batch, num_frames, size)
    again = measure_matmul_peak(dtype=clip_model.dtype or torch.float32, device=device)
    if again > out["peak_gflop_s"]:  # measured before and after the profile: the better is the peak
        for key in [k for k in out if k.endswith("matmul_peak_gflop_s")][-1:]:
            out[key] = again
        out["peak_gflop_s"] = again
        if "achieved_gflop_s" in out:
            out["efficiency_vs_peak"] = out["achieved_gflop_s"] / again
    return out
