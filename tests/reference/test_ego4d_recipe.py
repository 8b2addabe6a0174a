"""data=ego4d: the Ego4D SlowFast features' recipe (facebookresearch/Ego4d ego4d/features/): preset values,
its model by default, its centre crop, its spatial transform, and a run's boundary rows and fps note."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from pipeline.api import CONF_PACKAGE
from pipeline.assemble import as_object
from pipeline.config import DataConfig, register_configs, validate
from pipeline.run import recipe_fps_note
from pipeline.sampling import WindowSpec, clip_windows
from pipeline.synth import write_video
from pipeline.transforms import FrameTransform, crop_offsets, normalize_clips
from tests.helpers import REAL_CLIP, run_config


def compose_app(*overrides: str):
    """The config `python -m pipeline.extract <overrides>` would run (no model chosen unless given)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_preset_holds_the_recipe_and_picks_its_model(tmp_path: Path) -> None:
    cfg = compose_app("data=ego4d", f"data.root={tmp_path}")
    validate(cfg)
    c = as_object(cfg)
    assert c.model.name == "slowfast_r101_pytorchvideo" and c.model.feature_layer is None
    assert (
        c.model.zoo_url
        == "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R101.pyth"
    )
    d = c.data
    assert (d.fps, d.num_frames, d.sampling_rate, d.stride) == (30, 32, 1, 16)
    assert (d.window.value, d.pad.value, d.crops) == ("sliding", "shift", 1)
    r = d.resize
    assert (r.mode.value, r.short_side, r.crop, r.crop_rounding.value) == (
        "short_side",
        256,
        256,
        "half_even",
    )
    assert (list(c.model.mean), list(c.model.std), c.model.channel_order.value) == (
        [0.45] * 3,
        [0.225] * 3,
        "rgb",
    )
    # the command line still chooses another model
    assert (
        compose_app("data=ego4d", "model=slowfast_tiny", f"data.root={tmp_path}").model.name
        == "slowfast_tiny"
    )


def test_centre_crop_rounds_like_torchvision_center_crop_video() -> None:
    """torchvision's _functional_video.center_crop: i = int(round((h - th) / 2.0)), Python's round."""
    for width in range(256, 300):
        ((x, y),) = crop_offsets(width, 256, 256, 1, "half_even")
        assert (x, y) == (int(round((width - 256) / 2.0)), 0)
        assert crop_offsets(width, 256, 256, 1, "ceil") == [(math.ceil((width - 256) / 2), 0)]
    # 1440x1080 -> 341x256: offset 42.5 -> 42 (half to even); PySlowFast's ceil gives 43
    assert crop_offsets(341, 256, 256, 1, "half_even") == [(42, 0)]
    assert crop_offsets(341, 256, 256, 1, "ceil") == [(43, 0)]
    assert crop_offsets(455, 256, 256, 1, "half_even") == crop_offsets(455, 256, 256, 1, "ceil") == [(100, 0)]
    with pytest.raises(ValueError, match="crop rounding"):
        crop_offsets(341, 256, 256, 1, "floor")


def ego4d_spatial(frame: np.ndarray) -> torch.Tensor:
    """Ego4D's transform of one frame, written out: x/255, normalise, short side 256 (float bilinear,
    long side floor-scaled), centre crop 256 with round(); (3, 256, 256)."""
    x = torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0
    x = (x - 0.45) / 0.225
    h, w = x.shape[1:]
    size = (256, int(math.floor(w / h * 256))) if w >= h else (int(math.floor(h / w * 256)), 256)
    x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    i, j = int(round((size[0] - 256) / 2.0)), int(round((size[1] - 256) / 2.0))
    return x[:, i : i + 256, j : j + 256]


def _textured_frame(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(8)
    coarse = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    fine = rng.integers(-40, 41, size=(height, width, 3))
    return np.clip(np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:height, :width] + fine, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("source", ["textured", "real"])
def test_spatial_transform_gives_ego4ds_float_inputs(source: str) -> None:
    """The model's input equals Ego4D's float transform within 1e-6 (the clip is carried as float32)."""
    if source == "real":  # real footage at 1280x720: resized to 455x256
        with av.open(str(REAL_CLIP)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    else:
        frame = _textured_frame(480, 360)  # 4:3 like 1440x1080: resized to 341x256, crop offset 42.5
    transform = FrameTransform(mode="short_side", short_side=256, crop=256, crop_rounding="half_even")
    ours = normalize_clips(
        torch.from_numpy(transform(frame))[None], torch.ones(1, 1, dtype=torch.bool), [0.45] * 3, [0.225] * 3
    )[0, :, 0]
    expected = ego4d_spatial(frame)
    assert (ours - expected).abs().max() <= 1e-6
    if source == "real":
        return
    shifted = FrameTransform(mode="short_side", short_side=256, crop=256, crop_rounding="ceil")
    off = normalize_clips(
        torch.from_numpy(shifted(frame))[None], torch.ones(1, 1, dtype=torch.bool), [0.45] * 3, [0.225] * 3
    )[0, :, 0]
    assert (off - expected).abs().max() > 10 / 255 / 0.225  # one pixel off is far from Ego4D's crop


@pytest.mark.parametrize(
    ("native", "noted"), [(30.0, False), (30.0005, False), (29.97, True), (25.0, True), (None, False)]
)
def test_fps_note(native: float | None, noted: bool) -> None:
    note = recipe_fps_note(DataConfig(name="ego4d", root=".", fps=30), native, "clip.mp4")
    assert (note is not None) == noted
    if noted:
        assert note.startswith(
            f"data=ego4d: the recipe runs at 30 fps; clip.mp4 is {native:g} fps, resampled"
        )
    assert recipe_fps_note(DataConfig(name="custom", root=".", fps=30), 25.0, "clip.mp4") is None
    assert recipe_fps_note(DataConfig(name="ego4d", root=".", fps=None), 25.0, "clip.mp4") is None


def ego4d_rows(n: int) -> int:
    """ego4d/features/extract_features.py `_num_fvs` for window 32, stride 16."""
    return 1 if n < 32 else (n - 32) // 16 + 1 + (1 if (n - 32) % 16 else 0)


def test_run_boundary_rows_timestamps_and_one_fps_note(tmp_path: Path, caplog) -> None:
    root = tmp_path / "videos"
    write_video(root / "grid.mp4", fps=30, seconds=96 / 30)  # 96 frames: a multiple of the stride
    write_video(root / "off.mp4", fps=30, seconds=100 / 30)  # 100 frames: the last row moves back 12
    write_video(root / "short.mp4", fps=30, seconds=20 / 30)  # under one window
    write_video(root / "pal_a.mp4", fps=25, seconds=2.0)  # 50 frames at 25 fps: 59 at 30 fps (last at 1.96 s)
    write_video(root / "pal_b.mp4", fps=25, seconds=2.0)
    (root / "video_list.csv").write_text("grid\noff\nshort\npal_a\npal_b\n")
    out = tmp_path / "out"
    cfg = compose_app(
        "data=ego4d",
        "model=slowfast_tiny",
        "model.checkpoint=random",
        f"data.root={root}",
        f"output_dir={out}",
        "data.resize.short_side=64",
        "data.resize.crop=64",
        "output.hdf5=false",
    )
    validate(cfg)
    caplog.set_level(logging.INFO, logger="pipeline.run")
    summary = run_config(cfg)
    assert (summary.ok, summary.failed) == (5, 0)
    spec = WindowSpec(32, 1, 16, "sliding", "shift")
    for name, n in (("grid", 96), ("off", 100), ("short", 20), ("pal_a", 59)):
        features = np.load(out / "features" / f"{name}_32.npy")
        sidecar = json.loads((out / "features" / f"{name}_32.json").read_text())
        assert features.shape[0] == ego4d_rows(n) == sidecar["rows"], name
        assert sidecar["frames"] == n and sidecar["fps"] == 30
        stamps = np.asarray(sidecar["timestamps"])
        frames_seen = np.round(stamps[:, :2] * 30).astype(int)  # [first frame, one past the last]
        windows = clip_windows(n, spec)
        assert frames_seen.tolist() == [[int(w[0]), int(w[-1]) + 1] for w in windows], name
        assert frames_seen[-1, 1] == n  # the last row ends at the video's end
    off = np.round(np.asarray(json.loads((out / "features" / "off_32.json").read_text())["timestamps"]) * 30)
    assert off[:, 0].tolist() == [0, 16, 32, 48, 64, 68]
    notes = [r.getMessage() for r in caplog.records if "the recipe runs at 30 fps" in r.getMessage()]
    assert len(notes) == 1 and "is 25 fps, resampled to 30 fps" in notes[0]
