"""Our Inception-I3D equals piergiaj/pytorch-i3d's InceptionI3d, and tests/i3d_reference.py equals
Finspire13's feature-extraction script.

The references are ../shared/pytorch_i3d/pytorch_i3d.py and feature_extraction/extract_features.py beside
the checkout ($PYTORCH_I3D_SRC elsewhere); without them these tests skip, and fail under CI=true.
Model checks: the same random weights (random batch-norm statistics too) loaded from a pytorch-i3d
state dict file, the same input, features and logits within 1e-4 relative L2, RGB and flow, at full width.
"""

from __future__ import annotations

import io
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.models import build_model
from pipeline.models.i3d_inception import same_padding
from pipeline.weights import load_checkpoint
from tests.i3d_reference import (
    CHUNK_SIZE,
    chunk_starts,
    dense_flow_image,
    extract,
    import_file,
    pytorch_i3d,
    pytorch_i3d_source,
)
from tests.reference import skip_or_fail

RTOL = 1e-4


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def randomized_reference(channels: int, seed: int) -> nn.Module:
    """pytorch-i3d's InceptionI3d with random weights and random batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = pytorch_i3d().InceptionI3d(400, in_channels=channels)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.logits.conv3d.bias.normal_(0, 1)
    return model.eval()


@pytest.fixture(
    scope="module", params=[("i3d_inception_rgb", 3), ("i3d_inception_flow", 2)], ids=["rgb", "flow"]
)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(ours loaded from the reference's saved state dict, the reference, input channels)."""
    name, channels = request.param
    theirs = randomized_reference(channels, seed=channels)
    path = tmp_path_factory.mktemp("i3d") / f"{name}.pt"
    torch.save(theirs.state_dict(), path)
    ours = build_model(name)
    load_checkpoint(path, ours, require_head=True)
    yield ours, theirs, channels


def test_native_input_equals_extract_features_and_forward(pair: tuple) -> None:
    """16 x 224 x 224: one pooled position, the vector the feature-extraction script keeps."""
    ours, theirs, channels = pair
    clips = torch.randn(1, channels, 16, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        pooled = theirs.extract_features(clips)
        their_logits = theirs(clips)
        features = ours(clips)
        logits = ours.logits(features)
    assert pooled.shape == (1, 1024, 1, 1, 1) and their_logits.shape == (1, 400, 1)
    assert relative_error(features, pooled[:, :, 0, 0, 0]) < RTOL
    assert relative_error(logits, their_logits[:, :, 0]) < RTOL


def test_odd_sizes_average_the_pooled_positions(pair: tuple) -> None:
    """11 x 230 x 246 (asymmetric "same" pads): Mixed_5c 2 x 8 x 8, 1 x 2 x 2 pooled positions."""
    ours, theirs, channels = pair
    clips = torch.randn(1, channels, 11, 230, 246, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        pooled = theirs.extract_features(clips)
        their_logits = theirs(clips)  # (1, 400, 1, 2, 2): spatial squeeze leaves size-2 dims alone
        features = ours(clips)
        logits = ours.logits(features)
    assert pooled.shape == (1, 1024, 1, 2, 2) and their_logits.shape == (1, 400, 1, 2, 2)
    assert relative_error(features, pooled.mean(dim=(2, 3, 4))) < RTOL
    assert relative_error(logits, their_logits.mean(dim=(2, 3, 4))) < RTOL


def test_same_padding_equals_the_reference_s() -> None:
    reference = pytorch_i3d()
    for kernel, stride in (
        ((7, 7, 7), (2, 2, 2)),
        ((1, 3, 3), (1, 2, 2)),
        ((3, 3, 3), (2, 2, 2)),
        ((2, 2, 2), (2, 2, 2)),
    ):
        pool = reference.MaxPool3dSamePadding(kernel_size=kernel, stride=stride, padding=0)
        for size in range(1, 20):
            x = torch.zeros(1, 1, size, size + 1, size + 2)
            pads = same_padding(tuple(x.shape[2:]), kernel, stride)
            expected = []
            for dim in (2, 1, 0):
                total = pool.compute_pad(dim, x.shape[2 + dim])
                expected += [total // 2, total - total // 2]
            assert pads == tuple(expected), (kernel, stride, size)


# --------------------------------------------------------------------------- the feature-extraction script


def probe_features(clips: torch.Tensor) -> torch.Tensor:
    """A cheap model stand-in that sees where and when values are: 2 x 2 x 2 mean pools per channel and a
    sparse grid of squared values."""
    return torch.cat(
        [F.adaptive_avg_pool3d(clips, 2).flatten(1), clips[:, :, ::5, ::37, ::41].flatten(1) ** 2], 1
    )


class ProbeI3d(nn.Module):
    """Stands in for pytorch_i3d.InceptionI3d inside the script: extract_features -> (B, D, 1, 1, 1)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels

    def load_state_dict(self, state: object, strict: bool = True, assign: bool = False) -> object:  # type: ignore[override]
        return None

    def cuda(self, device: object = None) -> ProbeI3d:  # type: ignore[override]
        return self

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.shape[1:] == (self.in_channels, CHUNK_SIZE, 224, 224)
        return probe_features(x)[:, :, None, None, None]


@pytest.fixture(scope="module")
def script() -> Iterator[types.ModuleType]:
    """Finspire13's extract_features.py, imported with stand-ins: no torchvision, CUDA or debugger needed."""
    path = pytorch_i3d_source() / "feature_extraction" / "extract_features.py"
    if not path.is_file():
        skip_or_fail(f"Finspire13's feature-extraction script not found at {path}")
    saved = {name: sys.modules.get(name) for name in ("torchvision", "pytorch_i3d")}
    sys.modules["torchvision"] = types.ModuleType("torchvision")
    fake = types.ModuleType("pytorch_i3d")
    fake.InceptionI3d = ProbeI3d  # type: ignore[attr-defined]
    sys.modules["pytorch_i3d"] = fake
    try:
        module = import_file("finspire13_extract_features", path)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    yield module
    sys.modules.pop("finspire13_extract_features", None)


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def synthetic_video(root: Path, count: int, seed: int) -> dict[str, list[np.ndarray]]:
    """dense_flow's zip output for `count` image pairs (340 x 256), and the decoded images in name order."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:340]
    video = root / "video_test_0000001"
    video.mkdir(parents=True)
    decoded: dict[str, list[np.ndarray]] = {"img": [], "x": [], "y": []}
    archives = {
        kind: zipfile.ZipFile(video / f"{name}.zip", "w")
        for kind, name in (("img", "img"), ("x", "flow_x"), ("y", "flow_y"))
    }
    for k in range(count):
        rgb = np.stack([(x * 0.7 + y * 0.3 + 9 * k + 60 * c) % 256 for c in range(3)], -1)
        rgb = (rgb + rng.integers(0, 40, rgb.shape)).clip(0, 255).astype(np.uint8)
        flow_x = dense_flow_image(rng.normal(0, 8, (256, 340)) + (x - 170) / 15 + k)
        flow_y = dense_flow_image(rng.normal(0, 8, (256, 340)) - (y - 128) / 10)
        for kind, image in (("img", rgb), ("x", flow_x), ("y", flow_y)):
            data = jpeg(image)
            archives[kind].writestr(f"{kind}_{k + 1:05d}.jpg", data)
            decoded[kind].append(np.array(Image.open(io.BytesIO(data))))
    for archive in archives.values():
        archive.close()
    return decoded


@pytest.mark.filterwarnings("ignore:volatile was removed")
@pytest.mark.parametrize("sample_mode", ["center_crop", "resize", "oversample"])
@pytest.mark.parametrize("mode", ["rgb", "flow"])
def test_reference_algorithm_equals_the_script(
    script: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, sample_mode: str
) -> None:
    count, frequency = 25, 4  # starts 0, 4, 8: (25 - 16) // 4 + 1 = 3 rows; images 24 and 25 are dropped
    decoded = synthetic_video(tmp_path / "in", count, seed=len(mode) + len(sample_mode))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self, raising=False)
    monkeypatch.setattr(Image, "ANTIALIAS", Image.Resampling.LANCZOS, raising=False)  # gone in Pillow 10
    monkeypatch.setattr(script.pdb, "set_trace", lambda *args, **kwargs: None)  # oversample stops there
    weights = tmp_path / "weights.pt"  # the script loads a state dict into the stand-in, which ignores it
    torch.save({}, weights)
    with torch.no_grad():
        script.run(
            mode=mode,
            load_model=str(weights),
            sample_mode=sample_mode,
            frequency=frequency,
            input_dir=str(tmp_path / "in"),
            output_dir=str(out),
            batch_size=2,  # 3 chunks in 2 batches: rows keep their order across batches
            usezip=True,
        )
    saved = np.load(out / f"video_test_0000001-{mode}.npz")
    theirs = saved["feature"]
    if mode == "rgb":
        ours = extract(decoded["img"], probe_features, sample_mode=sample_mode, frequency=frequency)
    else:
        ours = extract(
            decoded["x"], probe_features, sample_mode=sample_mode, frequency=frequency, flow_y=decoded["y"]
        )
    crops = 10 if sample_mode == "oversample" else 1
    assert int(saved["frame_cnt"]) == count and len(chunk_starts(count, frequency)) == 3
    dim = probe_features(torch.zeros(1, 3 if mode == "rgb" else 2, CHUNK_SIZE, 224, 224)).shape[1]
    assert theirs.shape == ours.shape == (crops, 3, dim)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_stored_flow_scaled_to_unit_range_is_flow_over_the_bound() -> None:
    """dense_flow's 0..255 image, then the script's x * 2 / 255 - 1: flow / 20 clipped to [-1, 1], to within
    one grey level (2 / 255), as DeepMind's "truncated to [-20, 20], then rescaled between -1 and 1"."""
    flow = np.linspace(-30, 30, 6001)
    image = dense_flow_image(flow)
    assert image.dtype == np.uint8 and image[0] == 0 and image[-1] == 255
    scaled = image.astype(float) * 2 / 255 - 1
    expected = np.clip(flow / 20, -1, 1)
    assert np.abs(scaled - expected).max() <= 1 / 255 + 1e-12
    assert dense_flow_image(np.array([0.0]))[0] == 128  # zero motion: 127.5 rounds to the even 128


def test_chunk_rows() -> None:
    assert chunk_starts(17, 4) == [0]
    assert chunk_starts(25, 4) == [0, 4, 8]
    assert chunk_starts(48, 16) == [0, 16, 32]
    assert len(chunk_starts(5088, 4)) == (5088 - 16) // 4 + 1 == 1269
    with pytest.raises(ValueError, match="more than 16"):
        chunk_starts(16, 4)
