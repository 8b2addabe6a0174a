"""The THUMOS14 two-stream I3D recipe: the presets' values, and our pipeline against tests/i3d_reference.py's
restatement of the released extraction (dense_flow's frames and flow images, Finspire13's script) with
piergiaj/pytorch-i3d's InceptionI3d on random weights.

- RGB on REAL footage (Big Buck Bunny, 1280x720; 16 frames played forward then back: 31 frames, 30 stored
  images, (30 - 16) // 4 + 1 = 4 rows): dense_flow's frames made test-side with OpenCV and PIL (BGR frame,
  cv2.resize to 340x256, cv2.imencode at its default quality, PIL decode, frame 0 not written), then the
  script's algorithm: 16-image chunks every 4, x * 2 / 255 - 1, center_crop or resize (PIL Lanczos).
  Rows within 1e-4 relative L2, row counts equal; a row one frame off (the first frame kept) is far away.
- Flow end to end on a tiny video (64x48, 22 frames: 21 fields, 2 rows) at the recipe's 340x256: the
  reference gets flow images made test-side (OpenCV's TV-L1 called directly, dense_flow's mapping, JPEG),
  with a cheap TV-L1 setting (the solver's fidelity is tests/unit/test_flow.py's business).

The references are ../shared/pytorch_i3d (pytorch_i3d.py); without them these tests skip, and fail under
CI=true. Each model call is a full-width I3D at 16 x 224 x 224 (~1.5 s on one core).
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from torch import nn

from pipeline.api import CONF_PACKAGE
from pipeline.assemble import as_object, build_engine
from pipeline.config import register_configs, validate
from pipeline.engine import VideoJob
from pipeline.inference import check_model_config
from pipeline.io import TVL1Params
from pipeline.weights import weights_info
from tests.helpers import REAL_CLIP
from tests.i3d_reference import (
    CENTER,
    CROP,
    chunk_starts,
    dense_flow_image,
    extract,
    pytorch_i3d,
    to_unit_range,
)

RTOL = 1e-4
CHEAP = TVL1Params(nscales=2, warps=1, inner_iterations=10)


def compose_app(*overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# --- the presets ----------------------------------------------------------------------------------


def test_the_rgb_preset_is_the_recipe(tmp_path: Path) -> None:
    cfg = as_object(compose_app("data=thumos14_i3d", f"data.root={tmp_path}"))
    validate(cfg)
    check_model_config(cfg.model, cfg.data)
    d = cfg.data
    assert cfg.model.name == "i3d_inception_rgb"  # selected by the preset's defaults list
    assert (d.fps, d.num_frames, d.sampling_rate, d.stride, d.window.value, d.pad.value) == (
        None,
        16,
        1,
        4,
        "sliding",
        "drop",
    )
    assert (d.resize.mode.value, list(d.resize.size), d.resize.interpolation.value) == (
        "square",
        [224, 224],
        "pil_lanczos",
    )
    assert (d.stream.value, list(d.stored_frames.size or []), d.stored_frames.jpeg_quality) == (
        "rgb",
        [340, 256],
        95,
    )
    assert d.stored_frames.skip_first and d.crops == 1
    assert cfg.model.mean == cfg.model.std == [0.5, 0.5, 0.5]  # x * 2 / 255 - 1


def test_the_flow_preset_is_the_recipe(tmp_path: Path) -> None:
    cfg = as_object(compose_app("data=thumos14_i3d_flow", f"data.root={tmp_path}"))
    validate(cfg)
    check_model_config(cfg.model, cfg.data)
    d = cfg.data
    assert cfg.model.name == "i3d_inception_flow" and cfg.model.mean == cfg.model.std == [0.5, 0.5]
    assert (d.fps, d.num_frames, d.sampling_rate, d.stride, d.pad.value) == (None, 16, 1, 4, "drop")
    assert (d.stream.value, list(d.stored_frames.size or []), d.stored_frames.jpeg_quality) == (
        "flow",
        [340, 256],
        95,
    )
    assert (d.resize.mode.value, list(d.resize.size), d.resize.interpolation.value) == (
        "square",
        [224, 224],
        "pil_lanczos",
    )
    assert (d.flow.algorithm.value, d.flow.bound) == ("tvl1", 20)
    t = d.flow.tvl1
    # dense_flow's cuda::OpticalFlowDual_TVL1::create() defaults as OpenCV's CPU solver takes them
    assert (t.tau, t.lambda_, t.theta, t.nscales, t.warps, t.epsilon) == (0.25, 0.15, 0.3, 5, 5, 0.01)
    assert (t.inner_iterations, t.outer_iterations, t.scale_step, t.gamma, t.median_filtering) == (
        300,
        1,
        0.8,
        0.0,
        1,
    )


# --- the reference's model -------------------------------------------------------------------------


def randomized_reference(channels: int, seed: int) -> nn.Module:
    """pytorch-i3d's InceptionI3d with random weights that keep the input's signal (He-normal convs, batch
    norms near identity with random statistics), in eval mode. PyTorch's default init shrinks the signal
    at every layer: its features hardly depend on the input (a row one frame off moved them by ~6e-7), so
    a 1e-4 comparison could not tell a right pipeline from a wrong one."""
    torch.manual_seed(seed)
    model = pytorch_i3d().InceptionI3d(400, in_channels=channels)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.8, 1.2)
                module.bias.normal_(0, 0.05)
                module.running_mean.normal_(0, 0.05)
                module.running_var.uniform_(0.8, 1.2)
    return model.eval()


def features_of(model: nn.Module):
    """The script's row: extract_features(x)[:, :, 0, 0, 0] (extract_features.py:184-192)."""
    return lambda clips: model.extract_features(clips)[:, :, 0, 0, 0]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """H.264 at near-lossless quality (both sides decode this same file)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def dense_flow_rgb(frames: list[np.ndarray]) -> list[np.ndarray]:
    """dense_flow's img_%05d.jpg as the script reads them: frames 1..n-1 of the BGR video, cv::resize to
    340x256, imencode(".jpg") with OpenCV's defaults, PIL decode."""
    images = []
    for rgb in frames[1:]:
        bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (340, 256))
        ok, data = cv2.imencode(".jpg", bgr)
        assert ok
        images.append(np.array(Image.open(io.BytesIO(data.tobytes()))))
    return images


def run_ours(tmp_path: Path, video: Path, checkpoint: Path, *overrides: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and timestamps of one video through the engine (decode workers included)."""
    cfg = as_object(
        compose_app(
            f"data.root={video.parent}",
            f"model.checkpoint={checkpoint}",
            f"output_dir={tmp_path}/o",
            *overrides,
        )
    )
    validate(cfg)
    check_model_config(cfg.model, cfg.data)
    engine = build_engine(cfg, weights_info(cfg.model))
    (result,) = list(engine.run([VideoJob(video.stem, video, video.name)]))
    assert result.error is None and result.features is not None and result.timestamps is not None
    return result.features, result.timestamps


def relative_errors(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per row ||a - b|| / ||b||."""
    return np.linalg.norm(ours.astype(np.float64) - theirs, axis=1) / np.linalg.norm(theirs, axis=1)


# --- RGB on real footage ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    """(a 31-frame real clip, pytorch-i3d's RGB state dict file, that model)."""
    root = tmp_path_factory.mktemp("thumos_rgb")
    frames = decoded(REAL_CLIP)
    video = write_video(root / "video_test_0000001.mp4", frames + frames[-2::-1])
    theirs = randomized_reference(3, seed=11)
    checkpoint = root / "rgb_imagenet.pt"
    torch.save(theirs.state_dict(), checkpoint)
    return video, checkpoint, theirs


SAMPLE_MODES = {
    # the script's center_crop (rows 16:240, cols 58:282 of the 340x256 image), explicit data settings
    "center_crop": (
        "data.resize.mode=fixed",
        "data.resize.size=[340,256]",
        "data.resize.crop=224",
        "data.resize.interpolation=opencv",
    ),
    "resize": (),  # the preset's: the whole image to 224x224, PIL Lanczos
}


@pytest.mark.slow
@pytest.mark.parametrize("sample_mode", sorted(SAMPLE_MODES))
def test_rgb_rows_equal_the_recipe_on_real_footage(
    rgb_case: tuple[Path, Path, nn.Module], tmp_path: Path, sample_mode: str
) -> None:
    video, checkpoint, theirs = rgb_case
    overrides = (
        "data=thumos14_i3d",
        "model=i3d_inception_rgb",
        "data.num_frames=16",
        "data.stride=4",
        "data.pad=drop",
        "data.stored_frames.size=[340,256]",
        "data.stored_frames.skip_first=true",
        *SAMPLE_MODES[sample_mode],
    )
    ours, stamps = run_ours(tmp_path, video, checkpoint, *overrides)
    frames = decoded(video)
    images = dense_flow_rgb(frames)
    assert len(frames) == 31 and len(images) == 30
    (reference,) = extract(images, features_of(theirs), sample_mode=sample_mode, frequency=4)
    assert ours.shape == reference.shape == (len(chunk_starts(30, 4)), 1024) == (4, 1024)
    errors = relative_errors(ours, reference)
    print(f"rgb {sample_mode}: worst row relative L2 {errors.max():.2e}")
    assert errors.max() < RTOL, errors
    # row i covers video frames 4i+1 .. 4i+16 (25 fps): the timestamps say so
    assert stamps[:, 0] == pytest.approx([(4 * i + 1) / 25 for i in range(4)], abs=1e-6)
    assert stamps[:, 1] == pytest.approx([(4 * i + 17) / 25 for i in range(4)], abs=1e-6)
    if sample_mode == "center_crop":
        # resolving power: the first row with frame 0 kept (one frame off) is far from ours
        top, left = CENTER
        kept = [
            np.array(
                Image.open(io.BytesIO(cv2.imencode(".jpg", cv2.resize(f[:, :, ::-1].copy(), (340, 256)))[1]))
            )
            for f in frames[:16]
        ]
        chunk = np.stack([to_unit_range(k)[top : top + CROP, left : left + CROP] for k in kept])
        with torch.no_grad():
            shifted = features_of(theirs)(torch.from_numpy(chunk).permute(3, 0, 1, 2)[None].float())[
                0
            ].numpy()
        off = relative_errors(shifted[None], reference[:1])[0]
        print(f"rgb: row 0 one frame off (frame 0 kept) {off:.2e}")
        assert off > 30 * RTOL


# --- flow end to end on a tiny video --------------------------------------------------------------


def dense_flow_flow(
    frames: list[np.ndarray], params: TVL1Params, jpeg: bool = True
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """dense_flow's x_%05d.jpg / y_%05d.jpg as the script reads them: OpenCV's TV-L1 called directly on
    cv::resize'd (340x256) BGR2GRAY frames, mapped with bound 20, imencode(".jpg"), PIL decode (`jpeg`
    False: the mapped images as they were before JPEG)."""
    solver = cv2.optflow.DualTVL1OpticalFlow_create(
        tau=params.tau,
        lambda_=params.lambda_,
        theta=params.theta,
        nscales=params.nscales,
        warps=params.warps,
        epsilon=params.epsilon,
        innnerIterations=params.inner_iterations,
        outerIterations=params.outer_iterations,
        scaleStep=params.scale_step,
        gamma=params.gamma,
        medianFiltering=params.median_filtering,
        useInitialFlow=False,
    )
    grays = [
        cv2.cvtColor(cv2.resize(np.ascontiguousarray(f[:, :, ::-1]), (340, 256)), cv2.COLOR_BGR2GRAY)
        for f in frames
    ]
    xs, ys = [], []
    for previous, current in zip(grays, grays[1:], strict=False):
        field = solver.calc(previous, current, None)
        for out, c in ((xs, 0), (ys, 1)):
            image = dense_flow_image(field[:, :, c], 20)
            if jpeg:
                ok, data = cv2.imencode(".jpg", image)
                assert ok
                image = np.array(Image.open(io.BytesIO(data.tobytes())))
            out.append(image)
    return xs, ys


@pytest.mark.slow
def test_flow_rows_equal_the_recipe_fed_the_same_flow_images(tmp_path: Path) -> None:
    frames = decoded(REAL_CLIP)
    small = [cv2.resize(f, (64, 48), interpolation=cv2.INTER_AREA) for f in frames]
    video = write_video(tmp_path / "video_test_0000002.mp4", small + small[-2:-8:-1], fps=30)  # 22 frames
    theirs = randomized_reference(2, seed=12)
    checkpoint = tmp_path / "flow_imagenet.pt"
    torch.save(theirs.state_dict(), checkpoint)
    cheap = [
        f"data.flow.tvl1.{name}={getattr(CHEAP, name)}" for name in ("nscales", "warps", "inner_iterations")
    ]
    ours, stamps = run_ours(
        tmp_path, video, checkpoint, "data=thumos14_i3d_flow", "model=i3d_inception_flow", *cheap
    )
    source = decoded(video)
    xs, ys = dense_flow_flow(source, CHEAP)
    assert len(source) == 22 and len(xs) == 21
    (reference,) = extract(xs, features_of(theirs), sample_mode="resize", frequency=4, flow_y=ys)
    assert ours.shape == reference.shape == (2, 1024)
    errors = relative_errors(ours, reference)
    print(f"flow: worst row relative L2 {errors.max():.2e}")
    assert errors.max() < RTOL, errors
    assert stamps[:, 0] == pytest.approx([1 / 30, 5 / 30], abs=1e-6)  # field 1 = frame 0 -> 1, at frame 1
    # resolving power: the same flow without the JPEG round trip gives a first row far from ours
    raw_x, raw_y = dense_flow_flow(source[:18], CHEAP, jpeg=False)
    (no_jpeg,) = extract(raw_x, features_of(theirs), sample_mode="resize", frequency=4, flow_y=raw_y)
    off = relative_errors(no_jpeg, reference[:1])[0]
    print(f"flow: row 0 without the JPEG round trip {off:.2e}")
    assert off > 10 * RTOL
