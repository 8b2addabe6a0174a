"""Our R(2+1)D-34 / R(2+1)D-18 / R3D-18 against TSP's own models (models/backbone.py, model.py on torchvision
0.5.0's VideoResNet), through checkpoints saved as TSP's train.py saves them; and the test-side reference
of TSP's extraction algorithm against TSP's EvalVideoDataset and transforms (see tests/tsp_reference.py)."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.models import build_model, get_spec, list_models
from pipeline.weights import load_checkpoint
from tests.reference import randomize_, relative_error
from tests.tsp_reference import (
    clip_starts,
    frame_indices,
    save_training_checkpoint,
    transform_clip,
    tsp_common,
    tsp_eval_dataset,
    tsp_extract,
    tsp_model,
    tsp_modules,
    tsp_source,
)

RTOL = 1e-4

# (TSP backbone, our model, heads' classes, GVF, torch 1.4's legacy container, clip (T, size))
CASES = [
    ("r2plus1d_34", "r2plus1d_34_tsp_activitynet", [200, 2], True, False, (16, 112)),
    ("r2plus1d_34", "r2plus1d_34_tsp_activitynet_no_gvf", [200, 2], False, True, (8, 64)),
    ("r2plus1d_18", "r2plus1d_18_tac_activitynet", [200], False, True, (16, 112)),
    ("r3d_18", "r3d_18_tsp_activitynet", [200, 2], True, False, (16, 112)),
]


def test_registry_holds_the_release_table() -> None:
    """Every checkpoint link of TSP's extract_features/README.md, and MODEL_URLS of extract_features.py, is
    one registered model's zoo_url, named as TSP names it with '-' -> '_' and '_on' dropped."""
    folder = tsp_source() / "extract_features"
    readme = (folder / "README.md").read_text()
    table = dict(re.findall(r"\| `([\w-]+)`\s*\|[^|]*\| \[checkpoint\]\((\S+)\) \|", readme))
    script = dict(
        re.findall(r"'([\w-]+)'\s*:\s*'(https://\S+\.pth)'", (folder / "extract_features.py").read_text())
    )
    assert len(table) == 13 and script == table
    ours = {get_spec(n).zoo_url: n for n in list_models() if get_spec(n).arch in ("r2plus1d", "r3d")}
    assert set(ours) - {None} == set(table.values())
    for tsp_name, url in table.items():
        assert ours[url] == tsp_name.replace("-", "_").replace("_on_", "_"), url


def _randomize_heads(model: nn.Module, seed: int) -> None:
    """Give TSP's fc heads (normal 0.01 weights, zero bias at init) values of the features' scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_children():
            if name.startswith("fc"):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.05)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize(("backbone", "name", "classes", "gvf", "legacy", "clip"), CASES)
def test_features_and_logits_equal_tsp(
    tmp_path: Path,
    backbone: str,
    name: str,
    classes: list[int],
    gvf: bool,
    legacy: bool,
    clip: tuple[int, int],
) -> None:
    ref = tsp_model(backbone, classes, concat_gvf=gvf)
    randomize_(ref, seed=3)
    _randomize_heads(ref, seed=4)
    path = tmp_path / "epoch_4.pth"
    save_training_checkpoint(ref, path, legacy=legacy)
    ours = build_model(name)
    report = load_checkpoint(path, ours, require_head=True)
    assert report.format == "tsp" and not report.missing_head
    assert {"optimizer", "lr_scheduler", "epoch", "args"} <= set(report.ignored)

    frames, size = clip
    x = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(5))
    gvf_input = torch.randn(1, 512, generator=torch.Generator().manual_seed(6)) if gvf else None
    with torch.no_grad():
        want_logits, want = ref(x, gvf=gvf_input, return_features=True)
        got = ours(x)
        got_logits = ours.logits(got)
    error = relative_error(got, want)
    print(f"{name} ({frames}x{size}x{size}): features relative L2 {error:.2e}")
    assert got.shape == want.shape == (1, 512)
    assert error < RTOL, error
    if len(classes) == 1:
        assert isinstance(got_logits, torch.Tensor)
        assert relative_error(got_logits, want_logits[0]) < RTOL
        return
    assert isinstance(got_logits, dict)
    assert relative_error(got_logits["action"], want_logits[0]) < RTOL
    if gvf:  # their region head reads [features, the video's GVF]: no clip-level logits
        assert set(got_logits) == {"action"}
        assert torch.equal(ours.head.projection_region.weight, ref.fc2.weight)
        assert ours.head.projection_region.weight.shape == (2, 1024)
    else:
        assert relative_error(got_logits["region"], want_logits[1]) < RTOL


@pytest.mark.parametrize(
    ("backbone", "name"),
    [
        ("r2plus1d_34", "r2plus1d_34_tac_kinetics"),
        ("r2plus1d_18", "r2plus1d_18_tac_kinetics"),
        ("r3d_18", "r3d_18_tac_kinetics"),
    ],
)
def test_batch_norms_and_convs_are_built_as_tsp_builds_them(backbone: str, name: str) -> None:
    """Same conv geometry (kernel, stride, padding, channels) and batch norm eps / momentum, per module."""
    ref = tsp_model(backbone, [400]).features
    ours = build_model(name)
    theirs = dict(ref.named_modules())
    checked = 0
    for module_name, module in ours.named_modules():
        if isinstance(module, nn.BatchNorm3d):
            other = theirs[module_name]
            assert (module.eps, module.momentum, module.num_features) == (
                other.eps,
                other.momentum,
                other.num_features,
            )
            checked += 1
        elif isinstance(module, nn.Conv3d):
            other = theirs[module_name]
            geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding")
            assert [getattr(module, a) for a in geometry] == [getattr(other, a) for a in geometry], (
                module_name
            )
            checked += 1
    assert checked == sum(isinstance(m, nn.BatchNorm3d | nn.Conv3d) for m in ref.modules())


def test_tsp_34_recomputes_the_mid_width_per_conv_where_torchvision_keeps_the_blocks() -> None:
    """TSP's Conv2Plus1D ignores the block's mid width: layer2.0.conv2 (128 -> 128) is 288 wide in TSP's
    R(2+1)D-34 but 230 (from the block's 64 -> 128) in torchvision's R(2+1)D-18."""
    tsp = tsp_modules()
    r34 = tsp.backbone.r2plus1d_34(pretrained=False)
    r18 = tsp.backbone.r2plus1d_18(pretrained=False)
    assert r34.layer2[0].conv2[0][0].out_channels == 288
    assert r18.layer2[0].conv2[0][0].out_channels == 230
    assert build_model("r2plus1d_34_tsp_activitynet").layer2[0].conv2[0][0].out_channels == 288
    assert build_model("r2plus1d_18_tsp_activitynet").layer2[0].conv2[0][0].out_channels == 230


# --------------------------------------------------------------------------- the extraction algorithm


@pytest.mark.parametrize(
    ("video_frames", "fps"), [(75, 30), (76, 30), (64, 30), (100, 25), (90, 29.97), (40, 15)]
)
def test_frame_indices_and_clip_starts_are_tsps(video_frames: int, fps: float) -> None:
    dataset = tsp_eval_dataset(torch.zeros(video_frames, 2, 2, 3, dtype=torch.uint8), fps)
    starts = dataset.clip_metadata_df.columns["clip-t-start"]
    indices = frame_indices(video_frames, fps)
    assert len(indices) == (
        math.ceil(video_frames * 15 / fps) if (fps / 15).is_integer() else int(video_frames * 15 / fps)
    )
    assert np.allclose(starts, indices[clip_starts(len(indices))] / fps, rtol=0, atol=1e-12)
    assert dataset.clip_metadata_df.columns["is-last-clip"] == [0] * (len(starts) - 1) + [1]


def test_a_video_shorter_than_a_clip_has_no_clip_and_breaks_tsp() -> None:
    """31 frames at 30 fps are 16 at 15 fps: one clip. 30 frames are 15: no clip, and TSP's
    `is_last_clip[-1] = 1` fails on the empty list."""
    one = tsp_eval_dataset(torch.zeros(31, 2, 2, 3, dtype=torch.uint8), 30)
    assert len(one) == 1 and clip_starts(len(frame_indices(31, 30))) == [0]
    assert clip_starts(len(frame_indices(30, 30))) == []
    with pytest.raises(IndexError):
        tsp_eval_dataset(torch.zeros(30, 2, 2, 3, dtype=torch.uint8), 30)


def test_tsp_extract_gives_tsps_rows(tmp_path: Path) -> None:
    """TSP's dataset over a 30 fps video (reading clips by time, every 2nd frame) and our reference fed the
    15 fps frames (every 2nd) give the same rows with the same model."""
    generator = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (79, 36, 64, 3), dtype=torch.uint8, generator=generator)  # 40 at 15 fps
    model = build_model("r2plus1d_tiny")
    randomize_(model, seed=1)

    def features(clips: torch.Tensor) -> torch.Tensor:
        return model(clips)

    dataset = tsp_eval_dataset(video, 30, name="video.name.mp4")
    dataset.output_dir = str(tmp_path)
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            assert sample["clip"].shape == (3, 16, 112, 112)
            batch = {"filename": [sample["filename"]], "is-last-clip": [sample["is-last-clip"]]}
            dataset.save_features(features(sample["clip"][None]), batch)
    with open(tmp_path / "video.pkl", "rb") as f:  # named by the file name up to its first '.'
        want = pickle.load(f)
    got = tsp_extract(video[::2], features)
    assert want.shape == got.shape == (2, 32)  # clips at 0 and 16 of 40 frames; 32..39 dropped
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_transform_is_tsps() -> None:
    frames = torch.randint(
        0, 256, (16, 90, 160, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    T = tsp_common().transforms
    want = frames
    for step in (
        T.ToFloatTensorInZeroOne(),
        T.Resize((128, 171)),
        T.Normalize(mean=[0.43216, 0.394666, 0.37645], std=[0.22803, 0.22145, 0.216989]),
        T.CenterCrop((112, 112)),
    ):
        want = step(want)
    got = transform_clip(frames)
    assert got.shape == (3, 16, 112, 112)
    assert torch.equal(got, want)
