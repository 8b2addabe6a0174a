"""Tests for pipeline.transforms: resize vs OpenCV, sizes and crops vs PySlowFast's own functions,
channel order, the ffmpeg backend's skipped resize, and normalize_clips' zero padding."""

from __future__ import annotations

import enum
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.transforms import (
    FrameTransform,
    crop_offsets,
    normalize_clips,
    resize_bilinear,
    short_side_size,
)


def slowfast_transform():
    """PySlowFast's datasets/transform.py, loaded alone (the package __init__ pulls in optional deps)."""
    spec = importlib.util.find_spec("slowfast")
    if spec is None or not spec.submodule_search_locations:
        from reference import skip_or_fail

        skip_or_fail("slowfast (the reference PySlowFast) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "transform.py"
    module_spec = importlib.util.spec_from_file_location("slowfast_reference_transform", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def sharp_image(height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[::2, :, 0] = 255
    image[:, ::3, 1] = 255
    image[height // 3 : height // 2, width // 4 :, 2] = 200
    return image


SIZES = [  # (h, w) -> (W, H): down, up, odd, mixed, 1080p -> short side 256
    ((48, 64), (32, 24)),
    ((48, 64), (171, 128)),
    ((37, 53), (19, 29)),
    ((5, 7), (3, 11)),
    ((100, 100), (7, 7)),
    ((240, 320), (341, 256)),
    ((1080, 1920), (455, 256)),
]


@pytest.mark.parametrize("kind", ["random", "sharp"])
@pytest.mark.parametrize("src, dst", SIZES)
def test_resize_matches_opencv(src, dst, kind):
    cv2 = pytest.importorskip("cv2")
    h, w = src
    image = (
        np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
        if kind == "random"
        else sharp_image(h, w)
    )
    ours = resize_bilinear(image, *dst)
    theirs = cv2.resize(image, dst, interpolation=cv2.INTER_LINEAR)
    assert ours.shape == theirs.shape == (dst[1], dst[0], 3)
    assert ours.dtype == np.uint8 and ours.flags.c_contiguous
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_resize_does_not_depend_on_thread_count_or_layout():
    """Decode workers resize with one torch thread, the thread backend with several: same pixels."""
    image = np.random.default_rng(7).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = resize_bilinear(image, 113, 64)
        torch.set_num_threads(4)
        four = resize_bilinear(image, 113, 64)
        strided = resize_bilinear(
            np.repeat(image, 2, axis=0)[::2], 113, 64
        )  # a non-contiguous view, same pixels
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, four) and np.array_equal(one, strided)


def test_resize_same_size_and_constant():
    image = np.full((9, 13, 3), 201, np.uint8)
    assert resize_bilinear(image, 13, 9) is image
    assert (resize_bilinear(image, 30, 20) == 201).all()
    with pytest.raises(ValueError, match="uint8"):
        resize_bilinear(image.astype(np.float32), 5, 5)


@pytest.mark.parametrize(
    "w, h",
    [
        (320, 240),
        (240, 320),
        (1920, 1080),
        (256, 256),
        (256, 341),
        (341, 256),
        (100, 300),
        (455, 256),
        (257, 999),
        (640, 360),
    ],
)
@pytest.mark.parametrize("short", [224, 256, 320])
def test_short_side_size_matches_pyslowfast(w, h, short):
    reference = slowfast_transform()
    images = torch.zeros(1, 3, h, w)
    scaled, _ = reference.random_short_side_scale_jitter(images, short, short)
    assert short_side_size(w, h, short) == (scaled.shape[3], scaled.shape[2])


@pytest.mark.parametrize("w, h", [(455, 256), (256, 455), (256, 256), (341, 257), (257, 341)])
@pytest.mark.parametrize("crop", [224, 256])
def test_crop_offsets_match_pyslowfast_uniform_crop(w, h, crop):
    reference = slowfast_transform()
    images = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    offsets = crop_offsets(w, h, crop, 3)
    for spatial_idx, (x, y) in enumerate(offsets):
        theirs, _ = reference.uniform_crop(images, crop, spatial_idx)
        assert torch.equal(images[:, :, y : y + crop, x : x + crop], theirs)
    assert crop_offsets(w, h, crop, 1) == [offsets[1]]


def test_crop_offsets_literal():
    assert crop_offsets(455, 256, 256, 3) == [(0, 0), (100, 0), (199, 0)]
    assert crop_offsets(256, 455, 224, 3) == [(16, 0), (16, 116), (16, 231)]
    assert crop_offsets(341, 256, 224, 1) == [(59, 16)]  # ceil((341-224)/2) = 59
    with pytest.raises(ValueError, match="does not fit"):
        crop_offsets(200, 100, 128, 1)
    with pytest.raises(ValueError, match="num_crops"):
        crop_offsets(300, 300, 128, 2)


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_square_mode_squashes_whole_frame():
    image = frame(48, 64)
    t = FrameTransform(mode="square", size=(32, 40))
    out = t(image)
    assert out.shape == (1, 40, 32, 3) == t.output_shape
    assert np.array_equal(out[0], resize_bilinear(image, 32, 40))
    assert t.decoder_resize is None
    with pytest.raises(ValueError, match="num_crops"):
        FrameTransform(mode="square", size=(32, 32), num_crops=3)


def test_short_side_three_crops():
    image = frame(120, 200)
    t = FrameTransform(mode="short_side", short_side=64, crop=48, num_crops=3)
    out = t(image)
    assert out.shape == (3, 48, 48, 3) == t.output_shape and out.flags.c_contiguous
    resized = resize_bilinear(image, *short_side_size(200, 120, 64))
    assert resized.shape == (64, 106, 3)
    for crop, (x, y) in zip(out, [(0, 8), (29, 8), (58, 8)], strict=True):
        assert np.array_equal(crop, resized[y : y + 48, x : x + 48])


def test_bgr_is_reversed_rgb():
    image = frame(50, 70)
    for kwargs in (
        {"mode": "square", "size": (30, 20)},
        {"mode": "short_side", "short_side": 40, "crop": 32, "num_crops": 3},
    ):
        rgb = FrameTransform(channel_order="rgb", **kwargs)(image)
        bgr = FrameTransform(channel_order="bgr", **kwargs)(image)
        assert np.array_equal(bgr, rgb[..., ::-1]) and bgr.flags.c_contiguous
        assert not np.array_equal(bgr, rgb)


def test_ffmpeg_backend_skips_resize_of_decoder_sized_frames():
    t = FrameTransform(mode="short_side", short_side=64, crop=64, backend="ffmpeg", source_size=(1920, 1080))
    assert t.decoder_resize == (113, 64)
    decoded = frame(64, 113)  # what the decoder hands over
    out = t(decoded)
    assert np.array_equal(out[0], decoded[:, 25:89])  # only cropped, no resampling
    square = FrameTransform(mode="square", size=(56, 56), backend="ffmpeg")
    assert square.decoder_resize == (56, 56)
    sized = frame(56, 56)
    assert np.array_equal(square(sized)[0], sized)
    # the torch backend never asks the decoder to resize, and resizes itself
    torch_t = FrameTransform(mode="short_side", short_side=64, crop=64, source_size=(1920, 1080))
    assert torch_t.decoder_resize is None
    assert np.array_equal(torch_t(frame(1080, 1920))[0], t(resize_bilinear(frame(1080, 1920), 113, 64))[0])
    # without a source size, short_side mode hands the decoder a function of the source size
    per_video = FrameTransform(mode="short_side", short_side=64, crop=64, backend="ffmpeg").decoder_resize
    assert callable(per_video)
    assert per_video(1920, 1080) == (113, 64) and per_video(480, 640) == (64, 85)


def test_transform_accepts_str_enums_and_validates():
    class Mode(str, enum.Enum):
        short_side = "short_side"

    class Order(str, enum.Enum):
        bgr = "bgr"

    t = FrameTransform(mode=Mode.short_side, channel_order=Order.bgr, short_side=32, crop=32)
    assert (t.mode, t.channel_order) == ("short_side", "bgr")
    with pytest.raises(ValueError, match="mode"):
        FrameTransform(mode="letterbox")
    with pytest.raises(ValueError, match="crop"):
        FrameTransform(mode="short_side", short_side=224, crop=256)
    with pytest.raises(ValueError, match="size"):
        FrameTransform(mode="square", size=None)


def test_normalize_clips_values_and_zero_padding():
    rng = np.random.default_rng(3)
    clips = rng.integers(0, 256, (2, 4, 5, 6, 3), dtype=np.uint8)
    valid = np.array([[True, True, False, False], [True, True, True, True]])
    mean, std = [0.45, 0.40, 0.35], [0.225, 0.25, 0.3]
    out = normalize_clips(torch.from_numpy(clips), torch.from_numpy(valid), mean, std)
    assert out.shape == (2, 3, 4, 5, 6) and out.dtype == torch.float32 and out.is_contiguous()
    expected = (clips.astype(np.float64) / 255 - np.array(mean)) / np.array(std)  # (B, T, H, W, 3)
    expected = expected.transpose(0, 4, 1, 2, 3)
    expected[0, :, 2:] = 0
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    padded = out[0, :, 2:]
    assert (padded == 0).all() and not torch.signbit(padded).any()  # exactly +0.0
    assert (out[0, :, :2] != 0).any()
    with pytest.raises(ValueError, match="valid"):
        normalize_clips(torch.from_numpy(clips), torch.ones(2, 3, dtype=torch.bool), mean, std)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_normalize_clips_on_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    clips = torch.full((1, 2, 3, 3, 3), 255, dtype=torch.uint8, device=device)
    valid = torch.tensor([[True, False]])  # on the CPU: moved to the clips' device
    out = normalize_clips(clips, valid, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert out.device.type == device
    assert torch.equal(out[0, :, 0].cpu(), torch.ones(3, 3, 3))
    assert torch.equal(out[0, :, 1].cpu(), torch.zeros(3, 3, 3))
