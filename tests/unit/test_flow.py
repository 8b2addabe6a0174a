"""Optical flow and stored frames as frame sources (pipeline.io.flow), 2-channel clips through the transform,
the normalisation and the engine, and the start-up refusals of a flow model or a flow stream.

Flow is kept small: frames of real footage (the Big Buck Bunny clip) at 64x48, a few pairs. The reference
for the flow is OpenCV's TV-L1 called directly with the same parameters on the frames dense_flow's way
(BGR frame -> BGR2GRAY), quantised by tests/i3d_reference.py's restatement of dense_flow's mapping.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.assemble import as_object, build_engine, extraction_settings, frame_transform
from pipeline.config import ConfigError, TVL1Config
from pipeline.decode import SourceOpener
from pipeline.engine import Engine, VideoJob
from pipeline.inference import TorchClipModel
from pipeline.io import (
    FlowSettings,
    FlowSource,
    FrameSource,
    LoadImage,
    SourceInfo,
    StoredFrames,
    StoredFrameSource,
    TVL1Params,
    stream_source,
)
from pipeline.io.flow import flow_image, grayscale, jpeg_round_trip
from pipeline.models.registry import build_model
from pipeline.sampling import ClipStream, WindowSpec
from pipeline.transforms import RESIZERS, FrameTransform, normalize_clips
from pipeline.weights import WeightsInfo
from tests.helpers import REAL_CLIP, check_model_input, run_extract
from tests.i3d_reference import dense_flow_image

DENSE_FLOW = TVL1Params()  # dense_flow's CUDA defaults, as OpenCV's CPU solver takes them
CHEAP = TVL1Params(nscales=2, warps=2, inner_iterations=20)  # where the test needs pairs, not fidelity
SIZE = (64, 48)


def real_frames(n: int = 6, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """The first n frames of the real clip, RGB, resized to `size` (texture and camera motion)."""
    with av.open(str(REAL_CLIP)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in itertools.islice(container.decode(video=0), n)]
    return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]


class ListSource(FrameSource):
    """Frames from a list, at `fps` (through FrameSource's resampling, like a real source)."""

    def __init__(self, frames: list[np.ndarray], fps: float = 10.0, resample: float | None = None) -> None:
        self.frames = frames
        self.rate = fps
        h, w = frames[0].shape[:2]
        info = SourceInfo(Path("list"), "video", w, h, fps, len(frames) / fps, len(frames), "list")
        super().__init__(info, resample)

    def _decode(self) -> Iterator[tuple[LoadImage, float]]:
        for k, frame in enumerate(self.frames):
            yield (lambda frame=frame: frame), k / self.rate

    def close(self) -> None:
        pass


def opencv_flow(frames: list[np.ndarray], params: TVL1Params, size: tuple[int, int] | None = None) -> list:
    """dense_flow's steps with OpenCV called directly: BGR frame, cv::resize, BGR2GRAY, TV-L1 per pair."""
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
    grays = []
    for rgb in frames:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if size is not None:
            bgr = cv2.resize(bgr, size)
        grays.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    return [solver.calc(a, b, None) for a, b in itertools.pairwise(grays)]


def pil_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """cv2.imencode of a grey image at `quality`, read back by PIL (as the feature script reads it)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.asarray(Image.open(io.BytesIO(data.tobytes())))


# --- the flow itself ------------------------------------------------------------------------------


def test_flow_equals_opencv_tvl1_run_directly_after_the_same_quantisation() -> None:
    frames = real_frames(4)
    with FlowSource(ListSource(frames), FlowSettings(tvl1=DENSE_FLOW), StoredFrames()) as source:
        ours = [frame.image for frame in source]
    fields = opencv_flow(frames, DENSE_FLOW)
    assert len(ours) == len(fields) == 3
    assert max(np.abs(f).max() for f in fields) > 0.5  # real motion: a wrong pairing or order shows
    for got, field in zip(ours, fields, strict=True):
        assert got.shape == (48, 64, 2) and got.dtype == np.uint8
        assert np.array_equal(got[:, :, 0], dense_flow_image(field[:, :, 0], 20))
        assert np.array_equal(got[:, :, 1], dense_flow_image(field[:, :, 1], 20))


def test_flow_at_the_stored_size_through_jpeg_equals_opencv_resize_then_flow_then_jpeg() -> None:
    """dense_flow's order: resize the colour frame, grayscale, flow, map, JPEG (read back with PIL)."""
    frames = real_frames(3, size=(80, 60))
    stored = StoredFrames(size=(64, 48), jpeg_quality=95)
    settings = FlowSettings(bound=5.0, tvl1=DENSE_FLOW)
    with FlowSource(ListSource(frames), settings, stored) as source:
        ours = [frame.image for frame in source]
        assert (source.info.width, source.info.height) == (64, 48)
    fields = opencv_flow(frames, DENSE_FLOW, size=(64, 48))
    for got, field in zip(ours, fields, strict=True):
        for c in (0, 1):
            assert np.array_equal(got[:, :, c], pil_jpeg(dense_flow_image(field[:, :, c], 5.0), 95))


def test_channel_0_is_x_and_a_shift_to_the_right_is_positive() -> None:
    """A frame moved 2 px right, then 0: x ~ +2 px -> round(255 * 22 / 40) = 140, y ~ 0 -> 128."""
    base = real_frames(1, size=(96, 72))[0]
    moved = np.ascontiguousarray(np.roll(base, 2, axis=1))
    with FlowSource(ListSource([base, moved]), FlowSettings(tvl1=DENSE_FLOW), StoredFrames()) as source:
        (frame,) = list(source)
    inner = frame.image[16:-16, 16:-16].astype(float)  # away from the wrapped border
    assert abs(np.median(inner[:, :, 0]) - 140) <= 1
    assert abs(np.median(inner[:, :, 1]) - 128) <= 1


def test_identical_frames_give_zero_flow_as_opencv_does() -> None:
    """A frame repeated by fps resampling skips the solver; OpenCV gives exactly zero there too."""
    frame = real_frames(1)[0]
    (field,) = opencv_flow([frame, frame], DENSE_FLOW)
    assert not field.any()
    # 10 fps resampled to 20: every frame twice -> every other field is a repeat
    frames = real_frames(3)
    with FlowSource(ListSource(frames, resample=20.0), FlowSettings(tvl1=CHEAP), StoredFrames()) as source:
        images = [f.image for f in source]
    assert len(images) == 4  # 5 resampled frames (0, .05, .1, .15, .2 s)
    assert (images[0] == 128).all() and (images[2] == 128).all()  # repeats: zero flow -> 128
    assert not (images[1] == 128).all()


def test_flow_image_is_dense_flows_mapping() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(0, 15, 10_000).astype(np.float32),
            np.float32([-20, 20, -20.0001, 20.0001, 0, -40, 40, 1e9, -1e9]),
            # values whose scaled form is near a half: rounding ties go to even in cvRound and np.rint
            ((np.arange(256) + 0.5) * 40 / 255 - 20).astype(np.float32),
        ]
    )
    for bound in (20.0, 15.0):
        assert np.array_equal(flow_image(values, bound), dense_flow_image(values, bound))
    assert flow_image(np.float32([20, -20, 0, 21, -21]), 20).tolist() == [255, 0, 128, 255, 0]


def test_jpeg_round_trip_is_opencvs_encoder_read_by_pil() -> None:
    gray = grayscale(real_frames(1)[0])
    assert np.array_equal(jpeg_round_trip(gray, 95), pil_jpeg(gray, 95))
    # dense_flow calls imencode(".jpg") without parameters: OpenCV's default quality is 95
    assert np.array_equal(
        cv2.imencode(".jpg", gray)[1], cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    )
    rgb = real_frames(1)[0]
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok and np.array_equal(jpeg_round_trip(rgb, 90), np.asarray(Image.open(io.BytesIO(data.tobytes()))))
    # lossy, and the channels in their place: encoding the RGB array as if it were BGR errs far more
    ok, swapped = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])
    swapped_error = np.abs(np.asarray(Image.open(io.BytesIO(swapped.tobytes()))).astype(int) - rgb).mean()
    assert 0 < np.abs(jpeg_round_trip(rgb, 90).astype(int) - rgb).mean() < swapped_error / 1.5


def test_n_frames_give_n_minus_1_fields_stamped_with_the_later_frame() -> None:
    frames = real_frames(5)
    with FlowSource(ListSource(frames), FlowSettings(tvl1=CHEAP), StoredFrames(size=(32, 24))) as source:
        got = list(source)
        assert source.info.frame_count == 4 and (source.info.width, source.info.height) == (32, 24)
        assert source.frames_decoded == 5
    assert [f.index for f in got] == [0, 1, 2, 3]
    assert [f.time for f in got] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert all(f.image.shape == (24, 32, 2) for f in got)


def test_stored_rgb_frames_skip_frame_0_resize_then_jpeg() -> None:
    frames = real_frames(4, size=(80, 60))
    stored = StoredFrames(size=(64, 48), jpeg_quality=95, skip_first=True)
    with StoredFrameSource(ListSource(frames), stored) as source:
        got = list(source)
        assert source.info.frame_count == 3
    assert [f.time for f in got] == pytest.approx([0.1, 0.2, 0.3])
    for frame, rgb in zip(got, frames[1:], strict=True):
        bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (64, 48))
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert np.array_equal(frame.image, np.asarray(Image.open(io.BytesIO(data.tobytes()))))
    plain = ListSource(frames)
    assert stream_source(plain, "rgb", StoredFrames()) is plain  # nothing stored: the source itself


def rows_of(source: FrameSource, spec: WindowSpec) -> list:
    stream = ClipStream(spec, 0.1)
    with source:
        rows = [clip for frame in source for clip in stream.push(frame.image, frame.time)]
    return rows + stream.finish()


def test_rgb_rows_with_skip_first_line_up_with_the_flow_rows() -> None:
    """21 frames, 16-frame windows every 4, tail dropped: both streams (20 images / 20 fields) give
    (20 - 16) // 4 + 1 = 2 rows covering frames 4i+1 .. 4i+16, with the same timestamps."""
    frames = real_frames(16, size=(32, 24))
    frames += frames[:5][::-1]  # 21 frames
    spec = WindowSpec(16, 1, 4, "sliding", "drop")
    rgb = rows_of(StoredFrameSource(ListSource(frames), StoredFrames(skip_first=True)), spec)
    flow = rows_of(FlowSource(ListSource(frames), FlowSettings(tvl1=CHEAP), StoredFrames()), spec)
    assert len(rgb) == len(flow) == 2
    for a, b in zip(rgb, flow, strict=True):
        assert np.array_equal(a.timestamps, b.timestamps)
    assert rgb[1].timestamps[0] == pytest.approx(0.5) and rgb[1].timestamps[1] == pytest.approx(2.1)
    unskipped = rows_of(ListSource(frames), spec)
    assert unskipped[0].timestamps[0] == 0.0  # without skip_first the RGB rows start one frame earlier


# --- 2-channel clips --------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", sorted(RESIZERS))
def test_two_channel_frames_resize_per_plane_like_the_one_channel_call(interpolation: str) -> None:
    """Each flow plane resized as the 8-bit grey image the recipes stored (PIL would read 2 channels as LA)."""
    frame = np.stack([grayscale(f) for f in real_frames(2, size=(80, 60))], axis=-1)
    transform = FrameTransform(mode="square", size=(40, 30), interpolation=interpolation, channels=2)
    out = transform(frame)
    assert out.shape == (1, 30, 40, 2)
    for c in (0, 1):
        plane = np.repeat(frame[:, :, c : c + 1], 3, axis=2)  # the 3-channel call on a grey frame
        assert np.array_equal(out[0, :, :, c], RESIZERS[interpolation].resize(plane, 40, 30)[:, :, 0])
    cropped = FrameTransform(mode="fixed", size=(80, 60), crop=48, interpolation=interpolation, channels=2)
    assert np.array_equal(cropped(frame)[0], frame[6:54, 16:64].astype(cropped.dtype))
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        transform(real_frames(1)[0])
    with pytest.raises(ValueError, match="x, y"):
        FrameTransform(mode="square", size=(40, 30), channels=2, channel_order="bgr")


def test_normalize_clips_takes_one_mean_and_std_per_channel() -> None:
    clips = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 4, 8, 8, 2), dtype=np.uint8))
    valid = torch.ones(2, 4, dtype=torch.bool)
    valid[1, 3] = False
    out = normalize_clips(clips, valid, [0.5, 0.25], [0.5, 0.2])
    expected = (
        clips.permute(0, 4, 1, 2, 3).double() / 255 - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1, 1).double()
    )
    expected /= torch.tensor([0.5, 0.2]).view(1, 2, 1, 1, 1).double()
    expected[1, :, 3] = 0
    assert out.shape == (2, 2, 4, 8, 8)
    assert torch.allclose(out.double(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="C = 3"):
        normalize_clips(clips, valid, [0.5] * 3, [0.5] * 3)


def test_the_engine_runs_a_flow_model_on_flow_computed_in_the_decode_workers(tmp_path: Path) -> None:
    """Process workers compute the flow; the rows equal the model run here on our own flow frames."""
    frames = real_frames(11)
    video = tmp_path / "v.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        stream.options = {"crf": "0"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    torch.manual_seed(0)
    model = TorchClipModel(
        build_model("i3d_inception_flow_tiny"), device=torch.device("cpu"), mean=[0.5, 0.5], std=[0.5, 0.5]
    )
    flow = FlowSettings(tvl1=CHEAP)
    opener = SourceOpener(stream="flow", flow=flow)
    transform = FrameTransform(mode="square", size=(64, 64), interpolation="opencv", channels=2)
    spec = WindowSpec(8, 1, 2, "sliding", "drop")
    engine = Engine(model, opener, transform, spec, fps=None, batch_size=2, decode_workers=1)
    (result,) = list(engine.run([VideoJob("v", video, "v.mp4")]))
    assert result.error is None and result.features is not None
    assert result.frames == 10  # 11 frames, 10 fields
    assert result.features.shape == (2, 128)  # (10 - 8) // 2 + 1 rows
    with opener(VideoJob("v", video, "v.mp4")) as source:
        images = [transform(frame.image)[0] for frame in source]
    clips = np.stack([np.stack(images[i : i + 8]) for i in (0, 2)])
    direct, _ = model(clips, np.ones((2, 8), dtype=bool))
    assert np.abs(result.features - direct).max() <= 1e-6 * np.abs(direct).max()
    assert result.timestamps is not None
    assert result.timestamps[:, 0] == pytest.approx([0.1, 0.3])  # row 0 starts at field 1's frame


# --- settings --------------------------------------------------------------------------------------


def test_settings_record_the_stream_only_when_it_is_not_the_decoded_rgb_frames() -> None:
    """Resume compares the settings: RGB runs without stored frames record what they always did."""
    random = WeightsInfo(None, None, True)
    plain = extraction_settings(as_object(compose("i3d_inception_tiny")), random)
    assert not {"stream", "flow", "stored_frames"} & set(plain)
    rgb = extraction_settings(as_object(compose("i3d_inception_tiny", data="thumos14_i3d")), random)
    assert rgb["stored_frames"] == {"size": [340, 256], "jpeg_quality": 95, "skip_first": True}
    assert "stream" not in rgb and "flow" not in rgb
    cfg = as_object(compose("i3d_inception_flow_tiny", "data.flow.tvl1.warps=3", data="thumos14_i3d_flow"))
    flow = extraction_settings(cfg, random)
    assert flow["stream"] == "flow" and flow["stored_frames"] == {"size": [340, 256], "jpeg_quality": 95}
    assert flow["flow"]["algorithm"] == "tvl1" and flow["flow"]["bound"] == 20.0
    assert flow["flow"]["tvl1"] == {**dataclasses.asdict(TVL1Params()), "warps": 3}
    assert frame_transform(cfg).channels == 2
    opener = build_engine(cfg, random).spec.open_video
    assert isinstance(opener, SourceOpener) and opener.stream == "flow"
    assert opener.flow.tvl1 == TVL1Params(warps=3) and opener.stored == StoredFrames((340, 256), 95, True)


# --- refusals ---------------------------------------------------------------------------------------


def compose(*overrides: str, data: str = "custom"):
    from pipeline.api import compose_config

    return compose_config(overrides[0], [f"data.root={Path.cwd()}", *overrides[1:]], data=data)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("i3d_inception_flow_tiny",), "data.stream: i3d_inception_flow_tiny is an optical-flow model"),
        (("i3d_inception_tiny", "data.stream=flow"), "data.stream: flow frames have 2 channels"),
        (("slowfast_tiny", "data.stream=flow"), "data.stream: flow frames have 2 channels"),
        (
            ("i3d_inception_flow_tiny", "data.stream=flow", "model.mean=[0.5,0.5,0.5]"),
            "model.mean: i3d_inception_flow_tiny takes 2 input channels",
        ),
        (("i3d_inception_flow_tiny", "data.stream=flow", "model.channel_order=bgr"), "model.channel_order"),
        (("i3d_inception_flow_tiny", "data.stream=flow", "data.flow.bound=0"), "data.flow.bound"),
        (
            ("i3d_inception_flow_tiny", "data.stream=flow", "data.flow.tvl1.median_filtering=4"),
            "data.flow.tvl1.median_filtering",
        ),
        (
            ("i3d_inception_flow_tiny", "data.stream=flow", "data.flow.tvl1.scale_step=1.0"),
            "data.flow.tvl1.scale_step",
        ),
        (
            ("i3d_inception_flow_tiny", "data.stream=flow", "data.resize.backend=ffmpeg"),
            "data.stream: data.resize.backend=ffmpeg",
        ),
        (("i3d_inception_tiny", "data.stored_frames.jpeg_quality=0"), "data.stored_frames.jpeg_quality"),
        (("i3d_inception_tiny", "data.stored_frames.size=[340]"), "data.stored_frames.size"),
    ],
)
def test_impossible_streams_are_refused_naming_the_key(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_model_input(compose(*overrides))


def test_the_presets_streams_take_their_models_only() -> None:
    check_model_input(compose("i3d_inception_flow_tiny", data="thumos14_i3d_flow"))
    check_model_input(compose("i3d_inception_tiny", data="thumos14_i3d"))
    with pytest.raises(ConfigError, match="data.stream"):
        check_model_input(compose("i3d_inception_tiny", data="thumos14_i3d_flow"))
    with pytest.raises(ConfigError, match="data.stream"):
        check_model_input(compose("i3d_inception_flow_tiny", data="thumos14_i3d"))


def test_the_cli_refuses_a_flow_model_on_rgb_frames_in_one_line_before_any_video(video_root: Path) -> None:
    out = video_root.parent / "refused"
    done = run_extract(
        video_root.parent,
        "model=i3d_inception_flow_tiny",
        "model.checkpoint=random",
        "data=custom",
        f"data.root={video_root}",
        f"output_dir={out}",
    )
    text = done.stdout + done.stderr
    assert done.returncode == 2, text[-3000:]
    (error,) = [line for line in text.splitlines() if "[ERROR]" in line]
    assert "ConfigError: data.stream: i3d_inception_flow_tiny is an optical-flow model" in error
    assert "Traceback" not in text
    assert not out.exists()  # nothing planned, nothing decoded


def test_the_config_schema_holds_the_solver_defaults() -> None:
    """data.flow.tvl1 (config.TVL1Config) and the solver's parameters (io.flow.TVL1Params) have the same
    fields and defaults: a default changed in one place only would make presets differ from the library."""
    assert dataclasses.asdict(TVL1Config()) == dataclasses.asdict(TVL1Params())
