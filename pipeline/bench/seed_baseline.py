"""The old extractor's algorithm, re-implemented for the whole-process benchmark; not used by extraction.

    python -m pipeline.bench.seed_baseline --video V --checkpoint W.pyth --out X.npy \\
        --num-frames T --sampling-rate TAU --stride S [--model slowfast_r50] [--size 256] \\
        [--model-impl pyslowfast|ours]

What the seed (a 2020 fork of PySlowFast) did, as far as it is known, written anew: decode the whole video
into memory as full-resolution RGB frames; squash every frame to size x size with OpenCV's INTER_LINEAR;
one clip centred on every stride-th frame i (frames i + (j - T/2) * tau, j = 0..T-1; frames outside the
video are 0 after normalisation); normalise (x / 255 - mean) / std in float32; cut the SlowFast pathways
(the slow one at PySlowFast's indices); run a plain fp32 NCDHW model one clip at a time; save one .npy.
The model is PySlowFast's own (PyPI slowfast==1.0, `--model-impl pyslowfast`) or ours in plain mode
(`ours`: fp32, NCDHW, batch norms not folded), which computes the same. torch and FFmpeg use the usable
CPUs (OMP_NUM_THREADS when set, as our pipeline) and libgomp spins as by default (run as a script, the
lower spin count `import pipeline` sets is undone). `python -m pipeline.benchmark --vs-seed` times this
against `python -m pipeline.extract`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.models.spec import ModelSpec

log = logging.getLogger(__name__)

MODEL_IMPLS = ("pyslowfast", "ours")
# Our arch name -> PySlowFast 1.0's MODEL.ARCH (our "c2d" is their "c2d_nopool").
PYSLOWFAST_ARCH = {"slowfast": "slowfast", "slow": "slowonly", "c2d": "c2d_nopool", "i3d": "i3d"}
# builder_kwargs of our ResNet specs that PySlowFast 1.0's config can express.
PYSLOWFAST_OPTIONS = {
    "depth",
    "width_per_group",
    "beta_inv",
    "fusion_kernel",
    "fusion_conv_channel_ratio",
    "num_block_temp_kernel",
    "nonlocal_location",
    "nonlocal_instantiation",
}
PACKAGE_SPINCOUNT = "10000"  # the GOMP_SPINCOUNT that `import pipeline` sets (pipeline/__init__.py)

FeaturesFn = Callable[[list["torch.Tensor"]], "torch.Tensor"]


def restore_libgomp_default() -> None:
    """Drop the spin count `import pipeline` set before torch loads: the seed ran libgomp's default."""
    if os.environ.get("GOMP_SPINCOUNT") == PACKAGE_SPINCOUNT and "OMP_WAIT_POLICY" not in os.environ:
        del os.environ["GOMP_SPINCOUNT"]


# --- frames and clips ---------------------------------------------------------------------------------


def decode_all(video: Path, threads: int) -> list[np.ndarray]:
    """Every frame of the video's first video stream as a full-resolution (H, W, 3) uint8 RGB array."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame threads, as the seed's ffmpeg reader had them
        stream.codec_context.thread_count = threads
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]


def squash(frames: list[np.ndarray], size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: each frame resized to a size x size square, aspect ratio ignored."""
    import cv2

    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def centred_clips(n: int, num_frames: int, sampling_rate: int, stride: int) -> list[list[int]]:
    """Frame indices of each clip: centred on frames 0, stride, 2*stride, ... < n; may fall outside [0, n)."""
    if num_frames % 2:
        raise ValueError(f"a centred clip needs an even number of frames, got {num_frames}")
    return [
        [centre + (j - num_frames // 2) * sampling_rate for j in range(num_frames)]
        for centre in range(0, n, stride)
    ]


def normalised_clip(
    squares: np.ndarray, indices: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(1, 3, T, H, W) float32 clip: (x / 255 - mean) / std, frames outside the video exactly 0."""
    import torch

    n = len(squares)
    inside = [0 <= j < n for j in indices]
    frames = torch.from_numpy(squares[[min(max(j, 0), n - 1) for j in indices]]).float()
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    clip = (frames / 255.0 - mean_t) / std_t
    clip[~torch.tensor(inside)] = 0.0
    return clip.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def pyslowfast_pathways(clip: torch.Tensor, alpha: int | None) -> list[torch.Tensor]:
    """[slow, fast] as PySlowFast packs them (slow: T // alpha frames at linspace(0, T-1) truncated in
    float32), or [clip] for a single-pathway model (alpha None)."""
    import torch

    if alpha is None:
        return [clip]
    num_frames = clip.shape[2]
    index = torch.linspace(0, num_frames - 1, num_frames // alpha).long()
    return [torch.index_select(clip, 2, index), clip]


# --- models -------------------------------------------------------------------------------------------


def pyslowfast_unavailable(spec: ModelSpec) -> str | None:
    """Why PySlowFast 1.0 cannot build this model here (not installed, or no equivalent); None if it can."""
    if spec.arch not in PYSLOWFAST_ARCH:
        return f"{spec.name}: slowfast==1.0 has no {spec.arch!r} architecture"
    extra = set(spec.builder_kwargs) - PYSLOWFAST_OPTIONS
    if extra:
        return f"{spec.name}: slowfast==1.0's config cannot express {sorted(extra)}"
    if not isinstance(spec.num_classes, int):
        return f"{spec.name}: slowfast==1.0 has no multi-head classifier"
    try:
        builder = import_pyslowfast()
    except Exception as error:  # noqa: BLE001 - any import-time failure means "not usable here"
        return f"slowfast==1.0 is not importable: {type(error).__name__}: {error}"
    if spec.builder_kwargs.get("depth", 50) not in builder._MODEL_STAGE_DEPTH:
        return f"{spec.name}: slowfast==1.0 has no depth {spec.builder_kwargs['depth']}"
    return None


def import_pyslowfast() -> Any:
    """slowfast==1.0's model builder module; a stand-in `detectron2.layers` first if detectron2 is absent."""
    if "detectron2" not in sys.modules and importlib.util.find_spec("detectron2") is None:
        from torch import nn  # only when the stand-in is needed; torch loads late (see main)

        class ROIAlign(nn.Module):
            """Stand-in: slowfast==1.0 imports detectron2's ROIAlign for detection heads, never built here."""

        layers = types.ModuleType("detectron2.layers")
        layers.ROIAlign = ROIAlign  # type: ignore[attr-defined]
        package = types.ModuleType("detectron2")
        package.layers = layers  # type: ignore[attr-defined]
        sys.modules.update({"detectron2": package, "detectron2.layers": layers})
    import slowfast.models.video_model_builder as builder

    return builder


def pyslowfast_model(spec: ModelSpec, num_frames: int, size: int) -> tuple[nn.Module, FeaturesFn]:
    """PySlowFast 1.0's network for our spec (random init, eval) and features_fn(pathways) -> (1, dim),
    read from the input of head.projection (their eval forward ends in a softmax)."""
    reason = pyslowfast_unavailable(spec)
    if reason:
        raise ValueError(f"--model-impl pyslowfast: {reason} (use --model-impl ours)")
    builder = import_pyslowfast()
    from slowfast.config.defaults import get_cfg

    kw = spec.builder_kwargs
    pathways = 2 if spec.arch == "slowfast" else 1
    cfg = get_cfg()
    cfg.NUM_GPUS = 0  # their build_model calls .cuda(): the classes are built directly instead
    cfg.MODEL.ARCH = PYSLOWFAST_ARCH[spec.arch]
    cfg.MODEL.NUM_CLASSES = spec.num_classes
    cfg.DATA.NUM_FRAMES = num_frames
    cfg.DATA.CROP_SIZE = size  # their head's average pool has a fixed kernel from it
    cfg.DATA.INPUT_CHANNEL_NUM = [3] * pathways
    cfg.RESNET.DEPTH = kw.get("depth", 50)
    cfg.RESNET.WIDTH_PER_GROUP = kw.get("width_per_group", 64)
    cfg.RESNET.NUM_GROUPS = 1
    blocks = builder._MODEL_STAGE_DEPTH[cfg.RESNET.DEPTH]  # the reference's own blocks per stage
    cfg.RESNET.NUM_BLOCK_TEMP_KERNEL = [
        list(stage) for stage in (kw.get("num_block_temp_kernel") or [[n] * pathways for n in blocks])
    ]
    cfg.RESNET.SPATIAL_STRIDES = [[1] * pathways] + [[2] * pathways] * 3
    cfg.RESNET.SPATIAL_DILATIONS = [[1] * pathways] * 4
    location = kw.get("nonlocal_location") or [[[]] * pathways] * 4
    cfg.NONLOCAL.LOCATION = [[list(p) for p in stage] for stage in location]
    cfg.NONLOCAL.GROUP = [[1] * pathways] * 4
    cfg.NONLOCAL.INSTANTIATION = kw.get("nonlocal_instantiation", "softmax")
    if spec.arch == "slowfast":
        cfg.SLOWFAST.ALPHA = spec.alpha
        cfg.SLOWFAST.BETA_INV = kw.get("beta_inv", 8)
        cfg.SLOWFAST.FUSION_KERNEL_SZ = kw.get("fusion_kernel", 5)
        cfg.SLOWFAST.FUSION_CONV_CHANNEL_RATIO = kw.get("fusion_conv_channel_ratio", 2)
        model = builder.SlowFastModel(cfg)
    else:
        model = builder.ResNetModel(cfg)
    model.eval()
    seen: list[torch.Tensor] = []
    model.head.projection.register_forward_hook(lambda module, args, output: seen.append(args[0]))

    def features_fn(inputs: list[torch.Tensor]) -> torch.Tensor:
        seen.clear()
        model(inputs)
        return seen[0].reshape(seen[0].shape[0], -1)

    return model, features_fn


def load_model(
    impl: str, name: str, checkpoint: Path, num_frames: int, size: int
) -> tuple[FeaturesFn, ModelSpec]:
    """features_fn(pathways) -> (1, dim) of the model with the .pyth's weights, plain fp32 NCDHW."""
    import torch  # torch loads only after restore_libgomp_default() (run as a script)

    from pipeline.models.registry import build_model, get_spec  # imports torch: late, as above

    spec = get_spec(name)
    if impl == "pyslowfast":
        model, features_fn = pyslowfast_model(spec, num_frames, size)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model_state"])
        return features_fn, spec
    if impl != "ours":
        raise ValueError(f"model impl must be one of {MODEL_IMPLS}, got {impl!r}")
    from pipeline.weights import load_checkpoint  # imports torch: after restore_libgomp_default()

    ours = build_model(name)
    load_checkpoint(checkpoint, ours, require_head=False)
    ours.eval()
    return ours.forward_features, ours.spec


# --- the whole run ------------------------------------------------------------------------------------


def extract_features(
    video: Path,
    checkpoint: Path,
    *,
    model: str = "slowfast_r50",
    num_frames: int,
    sampling_rate: int,
    stride: int,
    size: int | None = None,
    model_impl: str = "pyslowfast",
) -> np.ndarray:
    """(rows, dim) float32 features of one video, one row per `stride` frames, the seed's way."""
    import torch  # torch loads only after restore_libgomp_default() (run as a script)

    from pipeline.models.registry import get_spec  # imports torch: late, as above

    size = size or get_spec(model).crop_size
    features_fn, spec = load_model(model_impl, model, checkpoint, num_frames, size)
    started = time.perf_counter()
    frames = decode_all(video, torch.get_num_threads())
    log.info("decoded %d frames of %s in %.1f s", len(frames), video.name, time.perf_counter() - started)
    squares = squash(frames, size)
    del frames
    if spec.channel_order == "bgr":
        squares = np.ascontiguousarray(squares[..., ::-1])
    alpha = spec.alpha if spec.arch == "slowfast" else None
    rows = []
    with torch.no_grad():
        for indices in centred_clips(len(squares), num_frames, sampling_rate, stride):
            clip = normalised_clip(squares, indices, spec.mean, spec.std)
            rows.append(features_fn(pyslowfast_pathways(clip, alpha))[0].numpy())
    if not rows:
        raise ValueError(f"{video}: no frames decoded")
    return np.stack(rows).astype(np.float32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench.seed_baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True, help="PySlowFast .pyth ({'model_state': ...})")
    p.add_argument("--out", type=Path, required=True, help="the .npy to write (rows, dim)")
    p.add_argument("--model", default="slowfast_r50", help="registered model name (its architecture)")
    p.add_argument("--num-frames", type=int, required=True, help="T")
    p.add_argument("--sampling-rate", type=int, required=True, help="tau")
    p.add_argument("--stride", type=int, required=True, help="frames between clip centres")
    p.add_argument("--size", type=int, default=0, help="square side (0: the model's crop size)")
    p.add_argument("--model-impl", default="pyslowfast", choices=MODEL_IMPLS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch  # torch loads only after restore_libgomp_default() (run as a script)

    from pipeline.hardware import default_threads  # imports torch: late, as above

    torch.set_num_threads(default_threads())  # the usable CPUs (unless OMP_NUM_THREADS says otherwise)
    features = extract_features(
        args.video,
        args.checkpoint,
        model=args.model,
        num_frames=args.num_frames,
        sampling_rate=args.sampling_rate,
        stride=args.stride,
        size=args.size or None,
        model_impl=args.model_impl,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, features)
    log.info("wrote %s %s", args.out, features.shape)
    return 0


if __name__ == "__main__":
    restore_libgomp_default()
    sys.exit(main())
