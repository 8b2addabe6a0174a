"""Tests for pipeline.transforms: every resizer against the library call its recipe used (on real
footage), sizes and crops vs PySlowFast's own functions, float recipes carried as floats (the values the
recipe computes, never rounded), channel order, the ffmpeg backend's skipped resize, and normalize_clips'
zero padding."""

from __future__ import annotations

import enum
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.transforms import (
    RESIZERS,
    FrameTransform,
    crop_offsets,
    normalize_clips,
    resize_float_bilinear,
    resize_opencv,
    short_side_size,
)
from tests.helpers import REAL_CLIP


def slowfast_transform():
    """PySlowFast's datasets/transform.py, loaded alone (the package __init__ pulls in optional deps)."""
    spec = importlib.util.find_spec("slowfast")
    if spec is None or not spec.submodule_search_locations:
        from tests.reference import skip_or_fail

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
    ours = resize_opencv(image, *dst)
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
        one = resize_opencv(image, 113, 64)
        torch.set_num_threads(4)
        four = resize_opencv(image, 113, 64)
        strided = resize_opencv(
            np.repeat(image, 2, axis=0)[::2], 113, 64
        )  # a non-contiguous view, same pixels
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, four) and np.array_equal(one, strided)


def test_resize_same_size_and_constant():
    image = np.full((9, 13, 3), 201, np.uint8)
    assert resize_opencv(image, 13, 9) is image
    assert (resize_opencv(image, 30, 20) == 201).all()
    with pytest.raises(ValueError, match="uint8"):
        resize_opencv(image.astype(np.float32), 5, 5)


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
    assert np.array_equal(out[0], resize_opencv(image, 32, 40))
    assert t.decoder_resize is None
    with pytest.raises(ValueError, match="num_crops"):
        FrameTransform(mode="square", size=(32, 32), num_crops=3)


def test_short_side_three_crops():
    image = frame(120, 200)
    t = FrameTransform(mode="short_side", short_side=64, crop=48, num_crops=3)
    out = t(image)
    assert out.shape == (3, 48, 48, 3) == t.output_shape and out.flags.c_contiguous
    resized = resize_float_bilinear(image, *short_side_size(200, 120, 64))
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
    resized = resize_float_bilinear(frame(1080, 1920), 113, 64)
    assert torch_t.dtype == np.float32 and t.dtype == np.uint8  # the decoder's frames are uint8
    assert np.array_equal(torch_t(frame(1080, 1920))[0], resized[:, 25:89])
    with pytest.raises(ValueError, match="the ffmpeg backend resizes uint8 frames"):
        FrameTransform(mode="square", size=(56, 56), backend="ffmpeg", interpolation="float_bilinear")
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
    last = normalize_clips(torch.from_numpy(clips), torch.from_numpy(valid), mean, std, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(last, out)  # same bits


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


# --- both recipes on real footage ------------------------------------------------------------------

FLOAT32_SLACK = 0.01  # grey levels: PySlowFast's float32 interpolation vs the exact value (0.005 seen)


def real_frames() -> list[np.ndarray]:
    """The 16 decoded RGB frames (1280x720) of the shipped Big Buck Bunny clip."""
    import av

    with av.open(str(REAL_CLIP)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_real_clip_is_textured():
    frames = real_frames()
    assert len(frames) == 16 and frames[0].shape == (720, 1280, 3)
    gray = frames[0].astype(np.float64).mean(axis=2)
    laplacian = gray[1:-1, 1:-1] * 4 - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    assert laplacian.std() > 5  # fine texture everywhere, not a smooth synthetic pattern
    chroma = frames[0].astype(np.int16)[..., 1] - frames[0].astype(np.int16)[..., 0]
    assert chroma.std() > 10


@pytest.mark.parametrize("size", [(256, 256), (224, 224), (171, 128), (640, 360), (1411, 793)])
def test_square_mode_is_opencv_inter_linear_bit_exact_on_real_frames(size):
    """The seed-style squash (data=epic) is OpenCV's uint8 INTER_LINEAR, bit for bit, both channel orders."""
    cv2 = pytest.importorskip("cv2")
    frames = real_frames()
    rgb = FrameTransform(mode="square", size=size)
    bgr = FrameTransform(mode="square", size=size, channel_order="bgr")
    for image in frames[::5]:
        theirs = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(rgb(image)[0], theirs)
        assert np.array_equal(bgr(image)[0], theirs[..., ::-1])
    assert rgb.interpolation == "opencv" and rgb.dtype == np.uint8
    assert rgb.recorded_interpolation == "opencv_linear_uint8"  # the name outputs made before carry


def pyslowfast_test_crops(
    frames: list[np.ndarray], short_side: int, crop: int, spatial_idx: int, mean: float, std: float
) -> torch.Tensor:
    """PySlowFast's test-time spatial recipe, written out independently (datasets/kinetics.py and
    utils.py: uint8 T H W C -> float / 255 -> (x - mean) / std -> C T H W -> `F.interpolate` of the
    (C, T, H, W) tensor as a batch of C images with T channels, bilinear, align_corners=False ->
    `uniform_crop`). Returns (C, T, crop, crop) float32."""
    clip = torch.from_numpy(np.stack(frames)).float() / 255.0
    clip = ((clip - mean) / std).permute(3, 0, 1, 2)
    height, width = clip.shape[2:]
    if width < height:
        new_w, new_h = short_side, int(math.floor(height / width * short_side))
    else:
        new_w, new_h = int(math.floor(width / height * short_side)), short_side
    clip = F.interpolate(clip, size=(new_h, new_w), mode="bilinear", align_corners=False)
    y = int(math.ceil((new_h - crop) / 2))
    x = int(math.ceil((new_w - crop) / 2))
    if new_h > new_w:
        y = {0: 0, 1: y, 2: new_h - crop}[spatial_idx]
    else:
        x = {0: 0, 1: x, 2: new_w - crop}[spatial_idx]
    return clip[:, :, y : y + crop, x : x + crop]


INPUT_TOLERANCE = 1e-6  # model inputs (after normalisation) from a float recipe's own pipeline


@pytest.mark.parametrize("short_side, crop", [(256, 256), (256, 224), (182, 160), (356, 356)])
def test_short_side_mode_gives_pyslowfasts_float_inputs_on_real_frames(short_side, crop):
    """The three crops, normalised as the model sees them, equal PySlowFast's float inputs within 1e-6 (the
    clip is carried as float32: nothing is rounded to a grey level on the way)."""
    frames = real_frames()[:8]
    mean, std = 0.45, 0.225
    t = FrameTransform(mode="short_side", short_side=short_side, crop=crop, num_crops=3)
    assert t.interpolation == "float_bilinear" and t.dtype == np.float32
    ours = np.stack([t(image) for image in frames], axis=1)  # (crops, T, h, w, 3) float32
    for spatial_idx in range(3):
        clip = torch.from_numpy(ours[spatial_idx])[None]
        model_input = normalize_clips(
            clip, torch.ones(1, len(frames), dtype=torch.bool), [mean] * 3, [std] * 3
        )
        theirs = pyslowfast_test_crops(frames, short_side, crop, spatial_idx, mean, std)
        assert (model_input[0] - theirs).abs().max() <= INPUT_TOLERANCE


def test_short_side_mode_against_pyslowfast_own_functions_on_a_real_frame():
    """The same through PyPI slowfast's own `random_short_side_scale_jitter` and `uniform_crop`."""
    reference = slowfast_transform()
    image = real_frames()[3]
    images = torch.from_numpy(image).float().permute(2, 0, 1)[:, None]  # (C, T=1, H, W), 0..255
    scaled, _ = reference.random_short_side_scale_jitter(images, 256, 256)
    cropped, _ = reference.uniform_crop(scaled, 224, 1)
    theirs = cropped[:, 0].permute(1, 2, 0).numpy()
    ours = FrameTransform(mode="short_side", short_side=256, crop=224)(image)[0]
    assert np.abs(ours - theirs).max() <= 255 * INPUT_TOLERANCE  # grey levels


def test_resize_float_bilinear_validates():
    image = frame(9, 13)
    same = resize_float_bilinear(image, 13, 9)
    assert same.dtype == np.float32 and np.array_equal(same, image)
    constant = resize_float_bilinear(np.full((7, 5, 3), 201, np.uint8), 30, 20)
    assert np.abs(constant - 201).max() <= 255 * INPUT_TOLERANCE  # weights sum to one, up to rounding
    with pytest.raises(ValueError, match="uint8"):
        resize_float_bilinear(image.astype(np.float32), 5, 5)
    with pytest.raises(ValueError, match=">= 1"):
        resize_float_bilinear(image, 0, 5)


@pytest.mark.parametrize("src, dst", SIZES)
def test_resize_float_bilinear_is_torchs_float_interpolate(src, dst):
    """Against torch's own float32 `F.interpolate` (what the recipes call): the same taps and weights, so
    equal within float32 rounding (a few ulps of 255), down- and upscaling, odd sizes, on a real frame."""
    h, w = src
    image = np.ascontiguousarray(real_frames()[7][:h, :w])
    ours = resize_float_bilinear(image, *dst)
    assert ours.shape == (dst[1], dst[0], 3) and ours.dtype == np.float32 and ours.flags.c_contiguous
    theirs = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
        size=(dst[1], dst[0]),
        mode="bilinear",
        align_corners=False,
    )[0].permute(1, 2, 0)
    assert np.abs(ours - theirs.numpy()).max() <= 255 * INPUT_TOLERANCE


def pil_resize(image: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, getattr(Image.Resampling, resample)))


@pytest.mark.parametrize("size", [(224, 224), (340, 256), (171, 128)])
def test_every_resizer_is_the_library_call_its_recipe_used_on_real_frames(size):
    """Each entry of RESIZERS against the call it reproduces, on real footage: OpenCV and PIL bit for bit
    (uint8, as those libraries give them), torch's antialiased float resize bit for bit (the same call),
    torch's plain float bilinear within float32 rounding."""
    cv2 = pytest.importorskip("cv2")
    w, h = size
    frame_ = real_frames()[5]
    tensor = torch.from_numpy(frame_).permute(2, 0, 1)[None].float()
    expected = {
        "opencv": cv2.resize(frame_, size, interpolation=cv2.INTER_LINEAR),
        "pil_bilinear": pil_resize(frame_, size, "BILINEAR"),
        "pil_lanczos": pil_resize(frame_, size, "LANCZOS"),
        "float_bilinear_antialias": F.interpolate(
            tensor, size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )[0]
        .permute(1, 2, 0)
        .numpy(),
        "float_bilinear": F.interpolate(tensor, size=(h, w), mode="bilinear", align_corners=False)[0]
        .permute(1, 2, 0)
        .numpy(),
    }
    assert set(expected) == set(RESIZERS)
    for name, theirs in expected.items():
        resizer = RESIZERS[name]
        ours = resizer.resize(frame_, w, h)
        assert ours.dtype == resizer.dtype == theirs.dtype, name
        if name == "float_bilinear":
            assert np.abs(ours - theirs).max() <= 255 * INPUT_TOLERANCE
        else:
            assert np.array_equal(ours, theirs), name
        transform = FrameTransform(mode="square", size=size, interpolation=name)
        assert transform.dtype == resizer.dtype and np.array_equal(transform(frame_)[0], ours)


def test_fixed_mode_squashes_then_crops_like_tsp():
    """TSP's transform: squash to 128x171 (float bilinear), centre crop 112 (offsets 8 and 30)."""
    image = real_frames()[2]
    t = FrameTransform(mode="fixed", size=(171, 128), crop=112)
    assert t.interpolation == "float_bilinear" and t.output_shape == (1, 112, 112, 3)
    out = t(image)
    assert out.shape == (1, 112, 112, 3) and out.dtype == np.float32
    assert np.array_equal(out[0], resize_float_bilinear(image, 171, 128)[8:120, 30:142])
    assert t.output_nbytes == 112 * 112 * 3 * 4
    three = FrameTransform(mode="fixed", size=(171, 128), crop=112, num_crops=3)
    assert [c.shape for c in three(image)] == [(112, 112, 3)] * 3
    with pytest.raises(ValueError, match="crop 130 must be in 1..128"):
        FrameTransform(mode="fixed", size=(171, 128), crop=130)


def test_normalize_clips_takes_float_clips_without_touching_them():
    clips = torch.full((1, 2, 3, 3, 3), 127.5)
    kept = clips.clone()
    out = normalize_clips(clips, torch.tensor([[True, False]]), [0.5] * 3, [0.5] * 3)
    assert torch.equal(clips, kept)  # never normalised in place
    assert torch.allclose(out[0, :, 0], torch.zeros(3, 3, 3), atol=1e-7) and torch.equal(
        out[0, :, 1], torch.zeros(3, 3, 3)
    )
    with pytest.raises(ValueError, match="uint8 or float32"):
        normalize_clips(clips.double(), torch.ones(1, 2, dtype=torch.bool), [0.5] * 3, [0.5] * 3)
