"""Structured configs for every Hydra group, registered in the ConfigStore, plus start-up validation.

A typo or a wrong type fails when Hydra composes the config (OmegaConf names the key); impossible
combinations of otherwise valid values fail in `validate`, also naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.errors import PipelineError


class ConfigError(PipelineError, ValueError):
    """An impossible configuration; the message starts with the offending key."""


class ChannelOrder(str, Enum):
    rgb = "rgb"
    bgr = "bgr"


class Window(str, Enum):
    sliding = "sliding"
    centered = "centered"


class Pad(str, Enum):
    zero = "zero"
    edge = "edge"
    drop = "drop"
    shift = "shift"  # move the last clip back to end on the last frame (Ego4D's rule), no padding


class ResizeMode(str, Enum):
    square = "square"  # squash the whole frame to size [w, h]
    short_side = "short_side"  # scale the short side, then crops of `crop`
    fixed = "fixed"  # squash to size [w, h], then crops of `crop` (TSP: 171x128, centre 112)


class Interpolation(str, Enum):
    """How frames are resized (pipeline.transforms.RESIZERS); uint8 ones travel as uint8, float ones as
    float32 (the recipe's own values, never rounded)."""

    auto = "auto"  # the mode's recipe: square -> opencv; short_side, fixed -> float_bilinear
    opencv = "opencv"  # cv2.resize INTER_LINEAR on uint8 frames (the old extractor, EPIC)
    float_bilinear = "float_bilinear"  # F.interpolate(bilinear, align_corners=False) on float frames
    float_bilinear_antialias = "float_bilinear_antialias"  # the same with antialias=True
    pil_bilinear = "pil_bilinear"  # PIL Image.resize(BILINEAR) on uint8 frames
    pil_lanczos = "pil_lanczos"  # PIL Image.resize(LANCZOS), old PIL's ANTIALIAS


class CropRounding(str, Enum):
    ceil = "ceil"  # PySlowFast's uniform_crop
    half_even = "half_even"  # torchvision's CenterCropVideo (Python round), Ego4D's features


class Stream(str, Enum):
    rgb = "rgb"  # the decoded (or stored) RGB frames
    flow = "flow"  # optical flow of consecutive frames, 2 channels (x, y): pipeline.io.flow


class FlowAlgorithm(str, Enum):
    tvl1 = "tvl1"  # OpenCV contrib's CPU Dual TV-L1 (cv2.optflow)


class ResizeBackend(str, Enum):
    torch = "torch"
    ffmpeg = "ffmpeg"


class CropReduce(str, Enum):
    stack = "stack"
    mean = "mean"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class DecodeBackend(str, Enum):
    process = "process"
    thread = "thread"


class Launcher(str, Enum):
    inprocess = "inprocess"
    local = "local"
    slurm = "slurm"


class FeatureDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class OutputStore(str, Enum):
    files = "files"  # a feature file, a sidecar (and logits files) per video under features/
    packed = "packed"  # each shard appends its videos to a few large part files (pipeline.outputs.store)


class Verify(str, Enum):
    stat = "stat"  # an unchanged size, mtime and inode is taken as unchanged (changed files are hashed)
    full = "full"  # every kept output is hashed against its manifest record


class Hdf5Layout(str, Enum):
    copy = "copy"
    external = "external"


class Hdf5Compression(str, Enum):
    gzip = "gzip"
    lzf = "lzf"


@dataclass
class ModelConfig:
    """A model of the registry with its own defaults; `checkpoint` is a path, `zoo` or `random`."""

    name: str = MISSING
    arch: str = MISSING
    checkpoint: str = "zoo"
    num_frames: int = MISSING
    sampling_rate: int = MISSING
    alpha: int | None = None
    crop_size: int = 256
    short_side: int = 256
    channel_order: ChannelOrder = ChannelOrder.rgb
    mean: list[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    std: list[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    feature_layer: str | None = None
    feature_dim: int = MISSING
    zoo_url: str | None = None
    # architecture options over the registry's (e.g. {depth: 2}: a reduced ViT for tests and benchmarks);
    # the checkpoint must be of that architecture
    arch_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResizeConfig:
    """`square` squashes to size [w, h]; `short_side` scales the short side then crops `crop` squares;
    `fixed` squashes to size [w, h] then crops `crop` squares; `interpolation` says how."""

    mode: ResizeMode = ResizeMode.square
    size: list[int] = field(default_factory=lambda: ["${model.crop_size}", "${model.crop_size}"])  # type: ignore[list-item]
    short_side: int = "${model.short_side}"  # type: ignore[assignment]
    crop: int = "${model.crop_size}"  # type: ignore[assignment]
    backend: ResizeBackend = ResizeBackend.torch
    crop_rounding: CropRounding = CropRounding.ceil  # how the centre crop offset (size - crop) / 2 rounds
    interpolation: Interpolation = Interpolation.auto


@dataclass
class StoredFramesConfig:
    """The frames as a frame-extraction tool wrote them to disk before the recipe read them back
    (pipeline.io.flow.StoredFrames): dense_flow resized to 340x256 and stored JPEG, writing no image for
    frame 0. null / false: the decoded frames as they are."""

    # [w, h]: cv2.resize INTER_LINEAR first, aspect not kept (the flow is computed at this size)
    size: list[int] | None = None
    jpeg_quality: int | None = None  # 1..100: a JPEG round trip of every RGB frame / flow image
    skip_first: bool = False  # the RGB stream starts at frame 1 (flow fields always do)


@dataclass
class TVL1Config:
    """cv2.optflow.DualTVL1OpticalFlow_create's arguments (pipeline.io.flow.TVL1Params); the defaults are
    dense_flow's CUDA call (300 iterations, no median filter), not OpenCV's CPU defaults."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 300
    outer_iterations: int = 1
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 1


@dataclass
class FlowConfig:
    """Optical flow of the flow stream (data.stream=flow): algorithm, the bound of its 0..255 images
    (components clipped to +-bound), the solver's parameters."""

    algorithm: FlowAlgorithm = FlowAlgorithm.tvl1
    bound: float = 20.0
    tvl1: TVL1Config = field(default_factory=TVL1Config)


@dataclass
class FramesConfig:
    """Folders of frames: file name pattern (Python format) and their frame rate."""

    pattern: str = "frame_{:010d}.jpg"
    fps: float = 30.0


@dataclass
class DataConfig:
    """Where the videos are and how clips are cut from them."""

    name: str = "custom"
    root: str = MISSING
    video_list: str | None = None
    video_ext: str | None = None
    fps: float | None = None
    num_frames: int = "${model.num_frames}"  # type: ignore[assignment]
    sampling_rate: int = "${model.sampling_rate}"  # type: ignore[assignment]
    stride: int = "${data.num_frames}"  # type: ignore[assignment]
    window: Window = Window.sliding
    pad: Pad = Pad.zero
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    crops: int = 1
    crop_reduce: CropReduce = CropReduce.stack
    frames: FramesConfig = field(default_factory=FramesConfig)
    decode_timeout_s: float | None = 600.0
    stream: Stream = Stream.rgb
    stored_frames: StoredFramesConfig = field(default_factory=StoredFramesConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    # the clip's normalisation ((x/255 - mean) / std per channel); null: the model's own (model.mean /
    # model.std, its training normalisation). A recipe that fed the model otherwise says so here, e.g.
    # VideoMAE V2's TAD features: x/255 only (mean [0, 0, 0], std [1, 1, 1]).
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class HardwareConfig:
    """Where and how the model runs, and how shards are launched (pipeline.launch).

    The job settings from `gpus` on are the Slurm launcher's, except `gpus` (local launcher only) and
    `timeout_min`, `setup`, `log_dir`, `signal_delay_s` (both launchers); the inprocess run ignores them.
    """

    name: str = "cpu"
    launcher: Launcher = Launcher.inprocess
    device: Device = Device.cpu
    threads: int | None = None
    batch_size: int = 4
    precision: Precision = Precision.fp32
    channels_last: bool | None = None
    compile: bool = False
    reuse_memory: bool = True  # CPU: keep freed activation memory for the next batch (pipeline.memory)
    decode_workers: int = 1  # 0: one per usable CPU (the affinity mask, or Slurm's cpus_per_task)
    decode_backend: DecodeBackend = DecodeBackend.process
    queue_size: int = 16
    num_shards: int = 1
    shard_index: int | None = None
    wait: bool = True  # Slurm: false submits the array + a consolidation job and returns
    # job settings (see the docstring for which launcher reads which)
    gpus: list[int] | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 1440
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float | None = None
    array_parallelism: int = 64
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    log_dir: str | None = None
    max_num_timeout: int = 3
    signal_delay_s: int = 120


@dataclass
class OutputConfig:
    """What is written and how reruns treat existing work."""

    dtype: FeatureDtype = FeatureDtype.float32
    logits: bool = False
    store: OutputStore = OutputStore.files
    verify: Verify = Verify.stat
    overwrite: bool = False
    retry_failed: bool = True
    hdf5: bool = True
    hdf5_layout: Hdf5Layout = Hdf5Layout.copy
    hdf5_compression: Hdf5Compression | None = None


@dataclass
class ExtractConfig:
    """The whole run: one model, one data set, one hardware setting."""

    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    hardware: HardwareConfig = MISSING
    output: OutputConfig = field(default_factory=OutputConfig)
    output_dir: str | None = None
    seed: int = 0
    dry_run: bool = False


def register_configs() -> None:
    """Register the schemas so that conf/*.yaml are validated against them."""
    cs = ConfigStore.instance()
    cs.store(name="extract_schema", node=ExtractConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="hardware", name="hardware_schema", node=HardwareConfig)


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"{key}: {message}")


def validate(cfg: DictConfig | ExtractConfig) -> None:
    """Fail with `ConfigError('<key>: <why>')` on impossible values; resolves interpolations."""
    try:
        c = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    except Exception as error:  # missing values and bad interpolations name their key
        raise ConfigError(str(error).splitlines()[0]) from error
    assert isinstance(c, ExtractConfig)
    m, d, h = c.model, c.data, c.hardware
    if m.checkpoint not in ("zoo", "random") and not Path(m.checkpoint).expanduser().is_file():
        _fail("model.checkpoint", f"no such file: {m.checkpoint} (use a path, 'zoo' or 'random')")
    for key, value in (
        ("data.num_frames", d.num_frames),
        ("data.sampling_rate", d.sampling_rate),
        ("data.stride", d.stride),
        ("data.crops", d.crops),
        ("hardware.batch_size", h.batch_size),
        ("hardware.queue_size", h.queue_size),
    ):
        if value < 1:
            _fail(key, f"must be >= 1 (got {value})")
    if h.decode_workers < 0:
        _fail(
            "hardware.decode_workers", f"must be >= 1, or 0 for one per usable CPU (got {h.decode_workers})"
        )
    if h.num_shards < (0 if h.launcher is Launcher.local else 1):
        _fail(
            "hardware.num_shards",
            f"must be >= 1 (0 = one per GPU with the local launcher; got {h.num_shards})",
        )
    if m.alpha is not None and d.num_frames % m.alpha:
        _fail("data.num_frames", f"{d.num_frames} is not divisible by model.alpha={m.alpha}")
    if d.pad is Pad.shift and d.window is not Window.sliding:
        _fail("data.pad", "'shift' moves the last clip back and needs data.window=sliding")
    if d.window is Window.centered and d.num_frames % 2:
        _fail("data.num_frames", f"centered windows need an even number of frames (got {d.num_frames})")
    if d.fps is not None and d.fps <= 0:
        _fail("data.fps", f"must be > 0 or null for the native rate (got {d.fps})")
    if d.frames.fps <= 0:
        _fail("data.frames.fps", f"must be > 0 (got {d.frames.fps})")
    if d.decode_timeout_s is not None and d.decode_timeout_s <= 0:
        _fail("data.decode_timeout_s", f"must be > 0 or null (got {d.decode_timeout_s})")
    if d.crops not in (1, 3):
        _fail("data.crops", f"must be 1 or 3 (got {d.crops})")
    if d.crops == 3 and d.resize.mode is ResizeMode.square:
        _fail("data.crops", "3 crops need data.resize.mode=short_side or fixed (square is the whole frame)")
    if d.resize.backend is ResizeBackend.ffmpeg and d.resize.interpolation is not Interpolation.auto:
        _fail(
            "data.resize.interpolation",
            f"{d.resize.interpolation.value} resizes after decoding; data.resize.backend=ffmpeg resizes uint8 "
            "frames in the decoder (swscale): use data.resize.backend=torch or interpolation=auto",
        )
    if len(d.resize.size) != 2 or min(d.resize.size) < 1:
        _fail("data.resize.size", f"must be [width, height] >= 1 (got {list(d.resize.size)})")
    if d.resize.mode is not ResizeMode.square and d.resize.crop < 1:
        _fail("data.resize.crop", f"must be >= 1 (got {d.resize.crop})")
    if d.resize.mode is ResizeMode.short_side and d.resize.crop > d.resize.short_side:
        _fail(
            "data.resize.crop", f"{d.resize.crop} is larger than data.resize.short_side={d.resize.short_side}"
        )
    if d.resize.mode is ResizeMode.fixed and d.resize.crop > min(d.resize.size):
        _fail("data.resize.crop", f"{d.resize.crop} is larger than data.resize.size={list(d.resize.size)}")
    validate_streams(c)
    for key, values, model_values in (("data.mean", d.mean, m.mean), ("data.std", d.std, m.std)):
        if values is not None and len(values) != len(model_values):
            channels = len(model_values)
            _fail(
                key, f"must hold {channels} values, one per channel like model.{key[5:]} (got {list(values)})"
            )
    if d.std is not None and min(d.std) <= 0:
        _fail("data.std", f"must be > 0 per channel (got {list(d.std)})")
    if not Path(d.root).expanduser().is_dir():
        _fail("data.root", f"no such directory: {d.root}")
    if h.shard_index is not None and not 0 <= h.shard_index < h.num_shards:
        _fail("hardware.shard_index", f"must be in [0, {h.num_shards}) (got {h.shard_index})")
    if h.threads is not None and h.threads < 1:
        _fail("hardware.threads", f"must be >= 1 or null (got {h.threads})")
    if h.device is Device.cpu and h.precision is Precision.fp16:
        _fail("hardware.precision", "fp16 autocast is for GPUs; use fp32 (or bf16) on CPU")


def validate_streams(c: ExtractConfig) -> None:
    """The stream settings: stored frames, the flow's algorithm and parameters, and what a flow stream
    cannot be combined with."""
    d = c.data
    stored = d.stored_frames
    if stored.size is not None and (len(stored.size) != 2 or min(stored.size) < 1):
        _fail("data.stored_frames.size", f"must be [width, height] >= 1 or null (got {list(stored.size)})")
    if stored.jpeg_quality is not None and not 1 <= stored.jpeg_quality <= 100:
        _fail("data.stored_frames.jpeg_quality", f"must be in 1..100 or null (got {stored.jpeg_quality})")
    if d.resize.backend is ResizeBackend.ffmpeg and (d.stream is Stream.flow or stored.size is not None):
        key = "data.stream" if d.stream is Stream.flow else "data.stored_frames.size"
        _fail(
            key,
            "data.resize.backend=ffmpeg resizes in the decoder, before the stored frames and the flow are "
            "made: use data.resize.backend=torch",
        )
    if d.stream is not Stream.flow:
        return
    if not d.flow.bound > 0:
        _fail("data.flow.bound", f"must be > 0 (got {d.flow.bound})")
    t = d.flow.tvl1
    for name in ("tau", "lambda_", "theta", "epsilon"):
        if not getattr(t, name) > 0:
            _fail(f"data.flow.tvl1.{name}", f"must be > 0 (got {getattr(t, name)})")
    for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
        if getattr(t, name) < 1:
            _fail(f"data.flow.tvl1.{name}", f"must be >= 1 (got {getattr(t, name)})")
    if not 0 < t.scale_step < 1:
        _fail("data.flow.tvl1.scale_step", f"must be in (0, 1) (got {t.scale_step})")
    if t.gamma < 0:
        _fail("data.flow.tvl1.gamma", f"must be >= 0 (got {t.gamma})")
    if t.median_filtering not in (1, 3, 5):
        _fail(
            "data.flow.tvl1.median_filtering",
            f"must be 1 (none), 3 or 5, the kernels of OpenCV's float median (got {t.median_filtering})",
        )
    if c.model.channel_order is ChannelOrder.bgr:
        _fail("model.channel_order", "bgr would swap the flow's x and y channels; flow frames are (x, y)")


def video_list_path(data: DataConfig) -> Path:
    """The list file: `data.video_list`, or `<root>/video_list.csv`."""
    return (
        Path(data.video_list).expanduser()
        if data.video_list
        else Path(data.root).expanduser() / "video_list.csv"
    )


def clip_normalisation(cfg: ExtractConfig) -> tuple[list[float], list[float]]:
    """(mean, std) the clips are normalised with: `data.mean` / `data.std`, each the model's when null."""
    d, m = cfg.data, cfg.model
    mean = d.mean if d.mean is not None else m.mean
    std = d.std if d.std is not None else m.std
    return [float(v) for v in mean], [float(v) for v in std]
