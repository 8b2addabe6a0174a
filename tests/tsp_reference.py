"""TSP (HumamAlwassel/TSP) as a test reference: its models on torchvision's `VideoResNet`, checkpoints as its
training script saves them, and its feature extraction algorithm.

Sources (read-only): TSP's checkout at ../shared/tsp from the repo root ($TSP_SRC elsewhere), and
torchvision 0.5.0's `torchvision/models/video/resnet.py` (the version TSP's environment.yml pins; its video
ResNet is the same in 0.24), one file extracted from the wheel by `scripts/setup_env.sh test` into
.cache/torchvision-0.5.0/ ($TSP_TORCHVISION_RESNET elsewhere). torchvision does not import beside our
torch, so both are loaded from their files with small stand-ins for their package imports:
`..utils.load_state_dict_from_url` (never called: random weights), the `torchvision.models.video` package
TSP's backbone.py imports from, `pandas` (the few DataFrame calls of eval_video_dataset.py) and
`torchvision.io.read_video` (frames of an in-memory video). A missing source skips the test, and fails it
under CI=true (`reference.skip_or_fail`).

The extraction algorithm (`tsp_extract`), as TSP's extract_features/ runs it with its defaults
(extract_features/opts.py:53-58: --clip-len 16, --frame-rate 15, --stride 16), for frames already at 15 fps:

- Frame rate (eval_video_dataset.py:134-139, 153-162): the video's frames are resampled from its fps to
  `frame_rate` by index: step = fps / frame_rate; an integer step takes every step-th frame
  (`np.arange(video_frames)[::step]`: ceil(frames / step) frames, one more than the int(frames * rate / fps)
  it computes for a non-integer step), otherwise floor(i * step) for i < int(frames * rate / fps). Videos are
  first standardised to 30 fps (data/standardize_videos_to_constant_30fps_mp4.sh:30:
  `ffmpeg -y -i <in> -filter:v fps=fps=30 <out>.mp4`), so 15 fps is every 2nd frame.
- Clips (eval_video_dataset.py:140): clip k starts at resampled frame k * stride, for every start with a
  full clip (start + clip_length <= frames): the frames after the last full clip are dropped, nothing is
  padded. (A video with fewer than clip_length frames has no clip, and line 147 `is_last_clip[-1] = 1`
  then raises IndexError.) Each clip is read back by time: frames with pts in [start, start + 16 / 15 s]
  of the 30 fps video, every 2nd, the first 16 (lines 61-67): the 16 consecutive resampled frames.
- Transform (extract_features.py:68-76, common/transforms.py): uint8 (T, H, W, C) -> (C, T, H, W) float
  / 255 (line 43); `F.interpolate(vid, size=(128, 171), mode="bilinear", align_corners=False)` on that 4-D
  tensor, i.e. each of the C channel planes is a batch entry and the T frames are its channels: every frame
  is resized to 128 x 171 (H x W) whatever its aspect (lines 29-33); (x - mean) / std per channel with
  mean (0.43216, 0.394666, 0.37645), std (0.22803, 0.22145, 0.216989) (lines 47-51); centre crop 112 x 112 at
  offsets int(round((128 - 112) / 2)) = 8, int(round((171 - 112) / 2)) = round(29.5) = 30 (lines 13-14).
- Features (extract_features.py:47-55, 105-124; models/model.py:29-39, 50-67): the backbone with its `fc`
  emptied: layer4's global average, 512-d; rows stacked in clip order into one (N, 512) float32 array per
  video (eval_video_dataset.py:98-113), pickled as <video name up to its first '.'>.pkl;
  merge_pkl_files_into_one_h5_feature_file.py:14-23 writes one HDF5 dataset per video at the file's root,
  named by the pkl name, gzip level 9, chunked, no attributes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.reference import skip_or_fail

REPO_ROOT = Path(__file__).resolve().parent.parent
TSP_ENV = "TSP_SRC"
DEFAULT_TSP = REPO_ROOT.parent / "shared" / "tsp"
TORCHVISION_ENV = "TSP_TORCHVISION_RESNET"
DEFAULT_TORCHVISION = (
    REPO_ROOT / ".cache" / "torchvision-0.5.0" / "torchvision" / "models" / "video" / "resnet.py"
)

CLIP_LENGTH = 16
FRAME_RATE = 15
STRIDE = 16
RESIZE = (128, 171)  # (H, W)
CROP = (112, 112)
MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)


# --------------------------------------------------------------------------- sources


def tsp_source() -> Path:
    """TSP's checkout: $TSP_SRC, else ../shared/tsp from the repo root; skip (fail in CI) when absent."""
    configured = os.environ.get(TSP_ENV)
    source = Path(configured).expanduser() if configured else DEFAULT_TSP
    if not (source / "models" / "backbone.py").is_file():
        skip_or_fail(f"TSP source not found at {source} (set ${TSP_ENV})")
    return source


def torchvision_resnet_file() -> Path:
    """torchvision 0.5.0's models/video/resnet.py; skip (fail in CI) when `setup_env.sh test` has not put it
    in .cache/ (or $TSP_TORCHVISION_RESNET does not name it)."""
    configured = os.environ.get(TORCHVISION_ENV)
    path = Path(configured).expanduser() if configured else DEFAULT_TORCHVISION
    if not path.is_file():
        skip_or_fail(
            f"torchvision's video resnet.py not found at {path} (run scripts/setup_env.sh test, "
            f"or set ${TORCHVISION_ENV})"
        )
    return path


def _package(name: str, **attributes: Any) -> ModuleType:
    module = ModuleType(name)
    module.__path__ = []  # a package: submodules and relative imports resolve under it
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def _exec_file(name: str, path: Path) -> ModuleType:
    """Execute the source file at path as module `name` (its parent packages must be in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def _modules(stand_ins: Mapping[str, ModuleType]) -> Iterator[None]:
    """sys.modules with the stand-ins for a while; what was there before comes back afterwards."""
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _no_download(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("the TSP reference builds random weights; nothing is downloaded")


_CACHE: dict[str, Any] = {}


def torchvision_video_resnet() -> ModuleType:
    """torchvision 0.5.0's video resnet module, loaded from its file as `_tsp_ref_tv.models.video.resnet`."""
    if "tv" not in _CACHE:
        path = torchvision_resnet_file()
        sys.modules.setdefault("_tsp_ref_tv", _package("_tsp_ref_tv"))
        sys.modules.setdefault("_tsp_ref_tv.models", _package("_tsp_ref_tv.models"))
        sys.modules.setdefault("_tsp_ref_tv.models.video", _package("_tsp_ref_tv.models.video"))
        sys.modules["_tsp_ref_tv.models.utils"] = _package(
            "_tsp_ref_tv.models.utils", load_state_dict_from_url=_no_download
        )
        _CACHE["tv"] = _exec_file("_tsp_ref_tv.models.video.resnet", path)
    return _CACHE["tv"]


def tsp_common() -> SimpleNamespace:
    """TSP's common/transforms.py and common/scheduler.py (they import torch alone)."""
    if "common" not in _CACHE:
        source = tsp_source()
        for package in ("_tsp_ref", "_tsp_ref.common"):
            sys.modules.setdefault(package, _package(package))
        _CACHE["common"] = SimpleNamespace(
            transforms=_exec_file("_tsp_ref.common.transforms", source / "common" / "transforms.py"),
            scheduler=_exec_file("_tsp_ref.common.scheduler", source / "common" / "scheduler.py"),
        )
    return _CACHE["common"]


def tsp_modules() -> SimpleNamespace:
    """TSP's models/backbone.py and models/model.py, loaded with torchvision 0.5.0's video ResNet behind
    their `torchvision.models.video` imports."""
    if "tsp" not in _CACHE:
        source = tsp_source()
        resnet = torchvision_video_resnet()
        video = _package("torchvision.models.video", r2plus1d_18=resnet.r2plus1d_18, r3d_18=resnet.r3d_18)
        video.resnet = resnet  # type: ignore[attr-defined]
        stand_ins = {
            "torchvision": _package("torchvision"),
            "torchvision.models": _package("torchvision.models"),
            "torchvision.models.video": video,
            "torchvision.models.video.resnet": resnet,
        }
        for package in ("_tsp_ref", "_tsp_ref.models"):
            sys.modules.setdefault(package, _package(package))
        with _modules(stand_ins):
            backbone = _exec_file("_tsp_ref.models.backbone", source / "models" / "backbone.py")
            model = _exec_file("_tsp_ref.models.model", source / "models" / "model.py")
        _CACHE["tsp"] = SimpleNamespace(backbone=backbone, model=model, resnet=resnet)
    return _CACHE["tsp"]


def tsp_model(backbone: str, num_classes: Sequence[int], concat_gvf: bool = False) -> nn.Module:
    """TSP's `Model` (num_heads = len(num_classes)) on a randomly initialised backbone, in eval mode.

    `Model._build_feature_backbone` always asks for pretrained weights; its builder names are pointed at
    TSP's own builders with pretrained=False for the call (the only change: no download).
    """
    tsp = tsp_modules()
    saved = {name: getattr(tsp.model, name) for name in ("r2plus1d_34", "r2plus1d_18", "r3d_18")}

    def random_init(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return lambda pretrained, progress, **kwargs: builder(pretrained=False, progress=progress, **kwargs)

    for name, builder in saved.items():
        setattr(tsp.model, name, random_init(builder))
    try:
        model = tsp.model.Model(
            backbone=backbone,
            num_classes=list(num_classes),
            num_heads=len(num_classes),
            concat_gvf=concat_gvf,
        )
    finally:
        for name, builder in saved.items():
            setattr(tsp.model, name, builder)
    return model.eval()


def save_training_checkpoint(model: nn.Module, path: Path, *, epoch: int = 4, legacy: bool = False) -> None:
    """`model` saved as TSP's train.py saves each epoch: {'model', 'optimizer', 'lr_scheduler', 'epoch',
    'args'} with its SGD parameter groups (stem / backbone / fc), its WarmupMultiStepLR and its argparse
    Namespace; `legacy`: the pre-1.6 (non-zip) container torch 1.4 wrote."""
    features = model.features
    heads = [m for name, m in model.named_children() if name.startswith("fc")]
    backbone = [
        p for layer in ("layer1", "layer2", "layer3", "layer4") for p in getattr(features, layer).parameters()
    ]
    optimizer = torch.optim.SGD(
        [
            {"params": features.stem.parameters(), "lr": 0, "name": "stem"},
            {"params": backbone, "lr": 0.0001, "name": "backbone"},
            {"params": [p for head in heads for p in head.parameters()], "lr": 0.002, "name": "fc"},
        ],
        momentum=0.9,
        weight_decay=0.005,
    )
    scheduler = tsp_common().scheduler.WarmupMultiStepLR(
        optimizer, milestones=[4, 6], gamma=0.01, warmup_iters=2
    )
    args = argparse.Namespace(
        backbone=model.backbone,
        clip_len=CLIP_LENGTH,
        frame_rate=FRAME_RATE,
        label_columns=["action-label", "temporal-region-label"][: len(heads)],
        loss_alphas=[1.0, 1.0],
        lr_milestones=[4, 6],
        global_video_features=None,
        distributed=False,
        world_size=1,
    )
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "args": args,
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)


# --------------------------------------------------------------------------- the extraction algorithm


def frame_indices(video_frames: int, fps: float, frame_rate: int = FRAME_RATE) -> np.ndarray:
    """Indices (into the video's own frames) of the frames resampled to `frame_rate`."""
    step = float(fps) / frame_rate
    if step.is_integer():
        return np.arange(video_frames)[:: int(step)]
    count = int(video_frames * (float(frame_rate) / fps))
    return np.floor(np.arange(count, dtype=np.float32) * np.float32(step)).astype(np.int64)


def clip_starts(num_frames: int, clip_length: int = CLIP_LENGTH, stride: int = STRIDE) -> list[int]:
    """First frame (of the resampled frames) of each clip: every `stride`, while a full clip fits."""
    return list(range(0, num_frames - clip_length + 1, stride))


def transform_clip(frames: Tensor) -> Tensor:
    """uint8 (T, H, W, 3) -> TSP's normalised (3, T, 112, 112) clip."""
    vid = frames.permute(3, 0, 1, 2).to(torch.float32) / 255
    vid = F.interpolate(vid, size=RESIZE, mode="bilinear", align_corners=False)
    vid = (vid - torch.tensor(MEAN).view(3, 1, 1, 1)) / torch.tensor(STD).view(3, 1, 1, 1)
    top = int(round((RESIZE[0] - CROP[0]) / 2.0))
    left = int(round((RESIZE[1] - CROP[1]) / 2.0))
    return vid[..., top : top + CROP[0], left : left + CROP[1]]


def tsp_extract(
    frames: Tensor,
    model: Callable[[Tensor], Tensor],
    *,
    clip_length: int = CLIP_LENGTH,
    stride: int = STRIDE,
    batch_size: int = 4,
) -> np.ndarray:
    """Feature rows (clips, dim) float32 of uint8 frames (N, H, W, 3) already at TSP's frame rate;
    `model` maps (B, 3, T, 112, 112) clips to (B, dim) features."""
    starts = clip_starts(frames.shape[0], clip_length, stride)
    rows = []
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            batch = torch.stack(
                [transform_clip(frames[s : s + clip_length]) for s in starts[i : i + batch_size]]
            )
            rows.append(model(batch).float().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- TSP's own dataset code


class _Frame:
    """The few pandas.DataFrame calls eval_video_dataset.py makes: iterrows, iloc[i], len."""

    def __init__(self, columns: Mapping[str, list[Any]]) -> None:
        self.columns = {k: list(v) for k, v in columns.items()}
        self.iloc = self

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[index] for k, v in self.columns.items()}

    def iterrows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for i in range(len(self)):
            yield i, self[i]


def tsp_eval_dataset(video: Tensor, fps: float, name: str = "video.mp4") -> Any:
    """TSP's EvalVideoDataset (extract_features/eval_video_dataset.py) over one in-memory video (uint8
    (N, H, W, 3) at `fps`) with its default clip length, frame rate and stride and its transforms.

    `read_video` returns the frames whose time i / fps lies in [start_pts, end_pts] (both ends included,
    as torchvision's pyav reader keeps frames with start <= pts <= end).
    """
    source = tsp_source()
    transforms = tsp_common().transforms

    def read_video(
        filename: str, start_pts: float, end_pts: float, pts_unit: str
    ) -> tuple[Tensor, None, None]:
        assert filename == name and pts_unit == "sec"
        times = torch.arange(video.shape[0], dtype=torch.float64) / fps
        return video[(times >= start_pts) & (times <= end_pts)], None, None

    sys.modules.setdefault("_tsp_ref.extract_features", _package("_tsp_ref.extract_features"))
    stand_ins = {
        "pandas": _package("pandas", DataFrame=_Frame),
        "torchvision": _package("torchvision"),
        "torchvision.io": _package("torchvision.io", read_video=read_video),
    }
    with _modules(stand_ins):
        module = _exec_file(
            "_tsp_ref.extract_features.eval_video_dataset",
            source / "extract_features" / "eval_video_dataset.py",
        )
    T = transforms
    steps = [
        T.ToFloatTensorInZeroOne(),
        T.Resize(RESIZE),
        T.Normalize(mean=list(MEAN), std=list(STD)),
        T.CenterCrop(CROP),
    ]

    def transform(vid: Tensor) -> Tensor:
        for step in steps:  # torchvision.transforms.Compose
            vid = step(vid)
        return vid

    dataset = module.EvalVideoDataset.__new__(module.EvalVideoDataset)
    metadata = _Frame({"filename": [name], "fps": [fps], "video-frames": [video.shape[0]]})
    dataset.clip_metadata_df = module.EvalVideoDataset._generate_clips_metadata(
        metadata, CLIP_LENGTH, FRAME_RATE, STRIDE
    )
    dataset.clip_length, dataset.frame_rate, dataset.stride = CLIP_LENGTH, FRAME_RATE, STRIDE
    dataset.transforms = transform
    dataset.saved_features = {}
    return dataset
