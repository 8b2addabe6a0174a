"""From a typed config to the parts of an extraction: window spec, frame transform, the settings that
change the numbers, the output dir, and the engine (model + decoder + batching) wired together.

Shared by the run (`pipeline.run`) and the notebook API (`pipeline.api`); it decides nothing about
which videos run or where results go beyond the output dir's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import naming
from pipeline.config import (
    ConfigError,
    CropRounding,
    DataConfig,
    ExtractConfig,
    HardwareConfig,
    Interpolation,
    ResizeMode,
    Stream,
    Window,
    clip_normalisation,
)
from pipeline.decode import SourceOpener
from pipeline.engine import Engine
from pipeline.errors import describe_error
from pipeline.hardware import (
    check_precision,
    decoder_threads,
    default_threads,
    keep_freed_memory,
    usable_cpus,
)
from pipeline.inference import TorchClipModel, device_or_fail, load_model
from pipeline.io import FLOW_CHANNELS, FlowSettings, StoredFrames, TVL1Params
from pipeline.sampling import WindowSpec
from pipeline.transforms import FrameTransform
from pipeline.weights import WeightsInfo

# --- configuration (pure) -----------------------------------------------------------------------


def as_object(cfg: DictConfig | ExtractConfig) -> ExtractConfig:
    """The typed, resolved config; a missing or ill-typed value is a ConfigError naming its key."""
    if isinstance(cfg, ExtractConfig):
        return cfg
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = describe_error(error, with_class=False)
        raise ConfigError(f"{key}: {message}" if key else message) from error


def window_spec(data: DataConfig) -> WindowSpec:
    """Clip window settings of a data config."""
    return WindowSpec(
        num_frames=data.num_frames,
        sampling_rate=data.sampling_rate,
        stride=data.stride,
        window=data.window.value,
        pad=data.pad.value,
    )


def frame_transform(cfg: ExtractConfig) -> FrameTransform:
    """The per-frame spatial transform (resize, crops, channel order) of a run."""
    r = cfg.data.resize
    return FrameTransform(
        mode=r.mode.value,
        size=(r.size[0], r.size[1]),
        short_side=r.short_side,
        crop=r.crop,
        num_crops=cfg.data.crops,
        channel_order=cfg.model.channel_order.value,
        backend=r.backend.value,
        crop_rounding=r.crop_rounding.value,
        interpolation=r.interpolation.value,
        channels=FLOW_CHANNELS if cfg.data.stream is Stream.flow else 3,
    )


def stored_frames(data: DataConfig) -> StoredFrames:
    """The frames as a frame-extraction tool stored them (`data.stored_frames`)."""
    s = data.stored_frames
    size = (s.size[0], s.size[1]) if s.size is not None else None
    return StoredFrames(size=size, jpeg_quality=s.jpeg_quality, skip_first=s.skip_first)


def flow_settings(data: DataConfig) -> FlowSettings:
    """The flow stream's algorithm and parameters (`data.flow`)."""
    params = TVL1Params(**dataclasses.asdict(data.flow.tvl1))  # the same fields, one per solver argument
    return FlowSettings(algorithm=data.flow.algorithm.value, bound=float(data.flow.bound), tvl1=params)


def stream_settings(data: DataConfig) -> dict[str, Any]:
    """The settings of the stream that change the numbers (empty for decoded RGB frames, the default)."""
    found: dict[str, Any] = {}
    if data.stream is Stream.flow:
        found["stream"] = data.stream.value
        flow = flow_settings(data)
        found["flow"] = {
            "algorithm": flow.algorithm,
            "bound": flow.bound,
            "tvl1": dataclasses.asdict(flow.tvl1),
        }
    stored = stored_frames(data)
    if stored.active:
        found["stored_frames"] = {
            "size": list(stored.size) if stored.size else None,
            "jpeg_quality": stored.jpeg_quality,
            # flow fields start at frame 1 whatever this says: recorded for the RGB stream only
            **({"skip_first": stored.skip_first} if data.stream is Stream.rgb else {}),
        }
    return found


def extraction_settings(cfg: ExtractConfig, weights: WeightsInfo) -> dict[str, Any]:
    """Every setting that changes the numbers in a feature file; resume compares these.

    `precision` is one (bf16/fp16 autocast moves features by ~1e-3); `channels_last`, `compile`,
    `batch_size` and `threads` are not: they only reorder fp32 sums (measured within 3e-7 of each other).
    """
    d, m = cfg.data, cfg.model
    resize: dict[str, Any] = {"mode": d.resize.mode.value, "backend": d.resize.backend.value}
    # how frames are resized (and so what the model sees): OpenCV's uint8 vs float bilinear differ
    resize["interpolation"] = frame_transform(cfg).recorded_interpolation
    if d.resize.mode is not ResizeMode.short_side:
        resize["size"] = list(d.resize.size)
    if d.resize.mode is ResizeMode.short_side:
        resize.update(short_side=d.resize.short_side)
    if d.resize.mode is not ResizeMode.square:
        resize.update(crop=d.resize.crop)
        if d.resize.crop_rounding is not CropRounding.ceil:  # absent by default: older outputs still match
            resize["crop_rounding"] = d.resize.crop_rounding.value
    # the normalisation the clips get: data.mean / data.std when set, else the model's (as always recorded)
    mean, std = clip_normalisation(cfg)
    settings = {
        "model": m.name,
        "feature_layer": m.feature_layer,
        "checkpoint_sha256": weights.sha256,
        "random_weights": weights.random,
        "seed": cfg.seed if weights.random else None,
        "fps": d.fps,
        "num_frames": d.num_frames,
        "sampling_rate": d.sampling_rate,
        "stride": d.stride,
        "window": d.window.value,
        "pad": d.pad.value,
        "resize": resize,
        "crops": d.crops,
        "crop_reduce": d.crop_reduce.value if d.crops > 1 else None,
        "dtype": cfg.output.dtype.value,
        "channel_order": m.channel_order.value,
        "mean": mean,
        "std": std,
        "frames_fps": d.frames.fps,
        "precision": cfg.hardware.precision.value,
        **stream_settings(d),  # absent for decoded RGB frames: older outputs still match
    }
    if m.arch_options:  # absent by default: older outputs still match
        settings["arch_options"] = dict(sorted(m.arch_options.items()))
    return settings


def output_dir_of(cfg: ExtractConfig, base: Path | None = None) -> Path:
    """The stable output dir: `output_dir`, or outputs/<data>/<model>_<T>x<tau>_s<stride>[_extras]."""
    if cfg.output_dir:
        return Path(cfg.output_dir).expanduser().resolve()
    d, m = cfg.data, cfg.model
    defaults = DataConfig()
    extra = {
        "fps": d.fps,
        "centered": d.window is Window.centered,
        "pad": d.pad.value if d.pad.value != defaults.pad.value else None,
        "short": d.resize.mode is ResizeMode.short_side,
        "fixed": d.resize.mode is ResizeMode.fixed,
        "interp": d.resize.interpolation.value if d.resize.interpolation is not Interpolation.auto else None,
        "crops": d.crops if d.crops != 1 else None,
        "layer": m.feature_layer,
        "fp16": cfg.output.dtype.value == "float16",
        "norm": normalisation_name(cfg),
        "arch": "".join(f"{k}{v}" for k, v in sorted(m.arch_options.items())) or None,
        **precision_name_extra(cfg.hardware.precision.value),
    }
    name = naming.run_dir_name(d.name, m.name, d.num_frames, d.sampling_rate, d.stride, extra)
    return ((base or Path.cwd()) / naming.OUTPUTS_ROOT / name).resolve()


def normalisation_name(cfg: ExtractConfig) -> str | None:
    """The output dir name's token for a normalisation other than the model's: `_norm255` for x/255 only
    (mean 0, std 1: VideoMAE V2's TAD features), `_norm<digest>` for any other; nothing for the model's."""
    mean, std = clip_normalisation(cfg)
    if (mean, std) == (list(cfg.model.mean), list(cfg.model.std)):
        return None
    if all(v == 0 for v in mean) and all(v == 1 for v in std):
        return "255"
    return hashlib.sha1(json.dumps([mean, std]).encode()).hexdigest()[:8]


def precision_name_extra(precision: str) -> dict[str, bool]:
    """The output dir name's token for a non-default precision: `_bf16`, or `_fp16amp` for fp16 autocast
    (`_fp16` already means output.dtype=float16); nothing for fp32."""
    return {{"bf16": "bf16", "fp16": "fp16amp"}[precision]: True} if precision != "fp32" else {}


def resolved_config(cfg: DictConfig | ExtractConfig) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved (stored in every output)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)  # type: ignore[return-value]


# --- model + engine -----------------------------------------------------------------------------


def setup_torch(hw: HardwareConfig) -> None:
    """Thread count from hardware.threads (default: the CPUs this process may use)."""
    torch.set_num_threads(hw.threads or default_threads())


def build_engine(cfg: ExtractConfig, weights: WeightsInfo) -> Engine:
    """Load the model with the planned weights and wire decoder, transform, windows and batching together."""
    device = device_or_fail(cfg.hardware.device.value)
    check_precision(device, cfg.hardware.precision.value)  # before the model: bf16 on CPU needs native bf16
    model = load_model(cfg.model, weights, need_head=cfg.output.logits, seed=cfg.seed)
    hw, data = cfg.hardware, cfg.data
    mean, std = clip_normalisation(cfg)  # data.mean / data.std, else the model's
    clip_model = TorchClipModel(
        model,
        device=device,
        mean=mean,
        std=std,
        precision=hw.precision.value,
        channels_last=hw.channels_last,
        logits=cfg.output.logits,
        compile=hw.compile,
        batch_size=hw.batch_size,  # partial batches padded to batch_size x crops rows on GPUs
        crops=data.crops,
    )
    if device.type == "cpu" and hw.reuse_memory:
        keep_freed_memory()  # once the model is ready: its weights keep their own mappings
    transform = frame_transform(cfg)
    open_video = SourceOpener(
        fps=data.fps,
        frames_pattern=data.frames.pattern,
        frames_fps=data.frames.fps,
        resize=transform.decoder_resize,
        threads=decoder_threads(usable_cpus(), hw.decode_workers),  # workers x threads ~ this job's CPUs
        stream=data.stream.value,
        stored=stored_frames(data),
        flow=flow_settings(data),
    )
    engine = Engine(
        clip_model,
        open_video,
        transform,
        window_spec(data),
        fps=data.fps,
        batch_size=hw.batch_size,
        queue_size=hw.queue_size,
        decode_workers=hw.decode_workers,
        crop_reduce=data.crop_reduce.value,
        decode_backend=hw.decode_backend.value,
        decode_timeout=data.decode_timeout_s,
    )
    return engine
