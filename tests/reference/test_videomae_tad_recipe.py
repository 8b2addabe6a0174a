"""data=thumos14_videomaev2 / data=fineaction_videomaev2: VideoMAE V2's TAD feature recipe
(extract_tad_feature.py of OpenGVLab/VideoMAEv2, restated in tests/videomae_reference.py): the presets'
values, the model's input against the script's on real footage, whole runs against the script's algorithm
with their own ViT on the same weights, and what "every frame" means for an MP4 with an edit list (decord,
which the script reads with, against FFmpeg / PyAV, which we decode with)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from pipeline.api import CONF_PACKAGE
from pipeline.assemble import as_object, build_engine, extraction_settings, window_spec
from pipeline.config import clip_normalisation, register_configs, validate
from pipeline.decode.protocol import VideoJob
from pipeline.inference import check_model_config
from pipeline.sampling import clip_windows
from pipeline.weights import weights_info
from tests.helpers import REAL_CLIP, run_extract
from tests.reference import relative_error, skip_or_fail
from tests.videomae_reference import (
    TAD_SIZE,
    TAD_WINDOW,
    builder_arguments,
    import_finetune_reference,
    tad_clip,
    tad_features,
    tad_windows,
    videomaev2_source,
)

PRESETS = {"thumos14_videomaev2": "THUMOS14", "fineaction_videomaev2": "FINEACTION"}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# A reduced stand-in for their ViT-g: ViT-S at full width (384-d, 6 heads), 2 blocks, at the native
# 16 x 224 x 224 input, as `model=videomaev2_s_k710_distill +model.arch_options.depth=2` builds it.
STAND_IN = ("videomaev2_s_k710_distill", "vit_small_patch16_224", 2)
LONG_FRAMES = 37  # not a whole number of strides: 37 - 16 = 21 leaves a trailing partial window at 4 and 16


def compose_app(*overrides: str) -> Any:
    """The config `python -m pipeline.extract <overrides>` would run."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def decoded_frames(video: Path) -> list[np.ndarray]:
    """Every frame FFmpeg presents, RGB uint8, as PyAV decodes it."""
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def encode(path: Path, frames: list[np.ndarray], fps: int = 25, **options: str) -> Path:
    """H.264 (yuv420p) of RGB frames at `fps`, written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", **options}
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 frames of real footage (1280x720, 25 fps): the 16 Big Buck Bunny frames forth, back and forth
    again, re-encoded with PyAV."""
    real = decoded_frames(REAL_CLIP)
    frames = real + real[-2::-1] + real[1:7]
    assert len(frames) == LONG_FRAMES
    return encode(tmp_path_factory.mktemp("long") / "long.mp4", frames)


# --------------------------------------------------------------------------- the presets


@pytest.mark.parametrize(("preset", "data_set"), sorted(PRESETS.items()))
def test_preset_holds_the_recipe(preset: str, data_set: str, tmp_path: Path) -> None:
    cfg = compose_app(f"data={preset}", f"data.root={tmp_path}")
    validate(cfg)
    c = as_object(cfg)
    check_model_config(c.model, c.data)  # the ViT's fixed 16 x 224 x 224 input
    assert c.model.name == "videomaev2_g_k710" and c.model.feature_dim == 1408
    d = c.data
    assert (d.name, d.fps, d.num_frames, d.sampling_rate) == (preset, None, 16, 1)
    assert (d.stride, d.window.value, d.pad.value, d.crops) == (
        {"THUMOS14": 4, "FINEACTION": 16}[data_set],
        "sliding",
        "drop",
        1,
    )
    r = d.resize
    assert (r.mode.value, list(r.size), r.interpolation.value, r.backend.value) == (
        "square",
        [TAD_SIZE, TAD_SIZE],
        "float_bilinear",
        "torch",
    )
    assert (d.mean, d.std) == ([0.0] * 3, [1.0] * 3)
    assert clip_normalisation(c) == ([0.0] * 3, [1.0] * 3)
    assert (list(c.model.mean), list(c.model.std)) == IMAGENET  # the model keeps its own
    # our windows are their start frames, for every length (a trailing partial window dropped)
    spec = window_spec(d)
    for n in range(0, 90):
        assert [int(w[0]) for w in clip_windows(n, spec)] == list(tad_windows(n, data_set)), n
        assert all(np.array_equal(w, np.arange(w[0], w[0] + TAD_WINDOW)) for w in clip_windows(n, spec))
    # the user's way back to the model's training normalisation
    own = as_object(compose_app(f"data={preset}", f"data.root={tmp_path}", "data.mean=null", "data.std=null"))
    assert clip_normalisation(own) == IMAGENET


def test_the_cited_source_lines_say_what_the_presets_take_from_them() -> None:
    """The presets' comments cite extract_tad_feature.py by line; the lines hold what they say."""
    source = videomaev2_source()
    script = (source / "extract_tad_feature.py").read_text().splitlines()
    line = {n: script[n - 1].strip() for n in (17, 92, 95, 113, 150, 156, 160)}
    assert line[17] == "return vid.permute(3, 0, 1, 2).to(torch.float32) / 255"
    assert line[92] == "return range(0, num_frames - 15, 4)"
    assert line[95] == "return range(0, num_frames - 15, 16)"
    assert line[113] == "Resize((224, 224))])"
    assert line[150] == "data = vr.get_batch(np.arange(start_idx, start_idx + 16)).asnumpy()"
    assert line[156] == "feature = model.forward_features(input_data)"
    assert line[160] == "np.save(url, np.vstack(feature_list))"
    assert "mode=interpolation" in script[33] and "align_corners=False)" in script[34]
    loader = (source / "dataset" / "loader.py").read_text().splitlines()
    assert loader[25].strip() == "vr = VideoReader(video_path, num_threads=1, ctx=cpu(0))"
    transforms = (source / "dataset" / "video_transforms.py").read_text().splitlines()
    assert (
        transforms[787].strip() == "mean=(0.485, 0.456, 0.406),"
        and transforms[788].strip() == "std=(0.229, 0.224, 0.225),"
    )
    for preset in PRESETS:
        text = (Path(__file__).resolve().parents[2] / "conf" / "data" / f"{preset}.yaml").read_text()
        assert "extract_tad_feature.py" in text and "29eab1e" in text


# --------------------------------------------------------------------------- the model's input


def model_inputs(cfg: Any, video: Path) -> tuple[list[torch.Tensor], np.ndarray]:
    """The clips our run hands the model for `video` (captured at the patch embedding) and its rows."""
    validate(cfg)
    c = as_object(cfg)
    check_model_config(c.model, c.data)
    engine = build_engine(c, weights_info(c.model))
    seen: list[torch.Tensor] = []
    network = engine.model.model
    handle = network.patch_embed.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone())
    )
    try:
        (result,) = list(engine.run([VideoJob(key=video.stem, path=video, rel=video.name)]))
    finally:
        handle.remove()
    assert result.error is None and result.features is not None
    inputs = [clip[None] for batch in seen for clip in batch]
    return inputs, result.features


def test_model_input_is_the_scripts_on_real_footage(tmp_path: Path) -> None:
    """The clip our run gives the ViT equals the script's (float / 255, F.interpolate to 224 x 224, no
    normalisation) within 1e-6 on the real 1280x720 clip; with data.mean=null data.std=null it equals
    the same clip normalised with ImageNet's mean / std (the model's own), which is far from it."""
    video = tmp_path / "bbb.mp4"
    shutil.copy(REAL_CLIP, video)
    common = ("model.checkpoint=random", "+model.arch_options.depth=1", f"data.root={tmp_path}")
    (ours,), _ = model_inputs(compose_app("data=thumos14_videomaev2", f"model={STAND_IN[0]}", *common), video)
    theirs = tad_clip(decoded_frames(video), 0)
    assert ours.shape == theirs.shape == (1, 3, TAD_WINDOW, TAD_SIZE, TAD_SIZE)
    difference = float((ours - theirs).abs().max())
    print(f"\nmodel input vs the script's, real 1280x720 clip: max abs difference {difference:.1e}")
    assert difference <= 1e-6
    cfg = compose_app(
        "data=thumos14_videomaev2", f"model={STAND_IN[0]}", "data.mean=null", "data.std=null", *common
    )
    (normalised,), _ = model_inputs(cfg, video)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in IMAGENET)
    assert float((normalised - (theirs - mean) / std).abs().max()) <= 1e-5  # values up to ~2.6 now
    assert float((normalised - theirs).abs().max()) > 1.0


# --------------------------------------------------------------------------- whole runs against the script


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values for every parameter (their init leaves the q / v biases and the head at zero)."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for _, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if id(p) in norms else 0.02 * noise)
    return model


@pytest.fixture(scope="module")
def their_vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """Their VisionTransformer built as the script builds its ViT-g (img_size 224, 710 classes, 16 frames,
    tubelet 2, mean pooling), at ViT-S width and 2 blocks, random weights, saved as their .pth ('model')."""
    ref = import_finetune_reference()
    _, builder, depth = STAND_IN
    kwargs = {
        **builder_arguments(builder),
        "img_size": 224,
        "num_classes": 710,
        "all_frames": 16,
        "tubelet_size": 2,
        "drop_path_rate": 0.3,
        "use_mean_pooling": True,
        "depth": depth,
    }
    model = randomized(ref.VisionTransformer(**kwargs)).eval()
    path = tmp_path_factory.mktemp("weights") / "vit_s_2blocks_k710.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


@pytest.mark.parametrize(("preset", "data_set"), sorted(PRESETS.items()))
def test_runs_equal_the_script_on_real_footage(
    preset: str, data_set: str, tmp_path: Path, long_clip: Path, their_vit: tuple[nn.Module, Path]
) -> None:
    """`python -m pipeline.extract data=<preset>` on the real clip (16 frames) and the 37-frame one: the
    script's row count and start frames, each row within 1e-4 (relative L2) of their ViT's
    forward_features on the script's clips of the frames PyAV decodes (same weights, their .pth)."""
    model, checkpoint = their_vit
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(REAL_CLIP, root / "bbb.mp4")
    shutil.copy(long_clip, root / "long.mp4")
    (root / "video_list.csv").write_text("bbb.mp4\nlong.mp4\n")
    out = tmp_path / "out"
    done = run_extract(
        tmp_path,
        f"data={preset}",
        f"data.root={root}",
        f"model={STAND_IN[0]}",
        f"+model.arch_options.depth={STAND_IN[2]}",
        f"model.checkpoint={checkpoint}",
        f"output_dir={out}",
        "output.hdf5=false",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    worst = 0.0
    for name, frames_in_video in (("bbb", 16), ("long", LONG_FRAMES)):
        frames = decoded_frames(root / f"{name}.mp4")
        assert len(frames) == frames_in_video
        ours = np.load(out / "features" / f"{name}_16.npy")
        theirs = tad_features(frames, model.forward_features, data_set)
        starts = list(tad_windows(len(frames), data_set))
        assert ours.shape == theirs.shape == (len(starts), 384)
        errors = [
            relative_error(torch.from_numpy(a), torch.from_numpy(b))
            for a, b in zip(ours, theirs, strict=True)
        ]
        worst = max(worst, *errors)
        side = json.loads((out / "features" / f"{name}_16.json").read_text())
        assert (side["rows"], side["frames"], side["fps"]) == (len(starts), frames_in_video, 25.0)
        stamps = np.asarray(side["timestamps"])
        assert np.allclose(stamps[:, 0], np.asarray(starts) / 25) and np.allclose(
            stamps[:, 1], (np.asarray(starts) + 16) / 25
        )
    assert worst < 1e-4, worst
    # what the test resolves: the same clips rounded to uint8 grey levels (a uint8 resize's output)
    rounded = tad_features(frames, lambda x: model.forward_features(torch.round(x * 255) / 255), data_set)
    rounding = relative_error(torch.from_numpy(rounded), torch.from_numpy(theirs))
    assert rounding > 10 * worst, (rounding, worst)
    settings = json.loads((out / "features" / "long_16.json").read_text())["settings"]
    assert (settings["mean"], settings["std"], settings["arch_options"]) == (
        [0.0] * 3,
        [1.0] * 3,
        {"depth": 2},
    )
    print(
        f"\n{preset}: worst row relative L2 {worst:.2e}; the script's clips rounded to uint8: {rounding:.2e}"
    )


# --------------------------------------------------------------------------- "every frame": decord vs FFmpeg


def mp4_boxes(data: bytes, start: int, end: int) -> Iterator[tuple[str, int, int]]:
    """(type, payload start, end) of the ISO-BMFF boxes in data[start:end], descending into containers."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[at + 8 : at + 16])[0], 16
        size = size or end - at
        name = kind.decode("latin-1")
        yield name, at + header, at + size
        if name in ("moov", "trak", "edts"):
            yield from mp4_boxes(data, at + header, at + size)
        at += size


def edit_list(path: Path) -> list[tuple[int, int]]:
    """(segment duration, media time) of each entry of the (first) track's edit list."""
    data = path.read_bytes()
    for name, start, _ in mp4_boxes(data, 0, len(data)):
        if name == "elst":
            version, count = data[start], struct.unpack(">I", data[start + 4 : start + 8])[0]
            entry = ">Qq" if version == 1 else ">Ii"
            step = struct.calcsize(entry) + 4  # + media rate
            return [
                struct.unpack(entry, data[start + 8 + i * step : start + 4 + (i + 1) * step])
                for i in range(count)
            ]
    return []


def cut_with_edit_list(source: Path, target: Path, cut_frames: int) -> None:
    """`ffmpeg -ss <cut> -c copy` done with PyAV: every packet from the keyframe before the cut (here the
    first), remuxed with timestamps moved back by the cut, so that the ones before it are negative; the
    MP4 muxer then writes an edit list that starts presentation at the cut."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        shift = round(cut_frames / float(stream.average_rate) / stream.time_base)
        for packet in inp.demux(stream):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = copy
            out.mux(packet)


def same_frame(frame: np.ndarray, frames: list[np.ndarray]) -> int | None:
    """The index of the frame in `frames` that `frame` equals, None if none."""
    return next((i for i, f in enumerate(frames) if np.array_equal(frame, f)), None)


def test_every_frame_of_an_mp4_with_an_edit_list(tmp_path: Path) -> None:
    """What each decoder returns for an MP4 cut without re-encoding, and what our run does with it.

    FFmpeg (PyAV, our decoder) presents the frames after the cut; decord 0.6.0 (the script's) counts every
    packet, the 10 before the cut too, reads the presented frames first and then repeats the last one in
    their place, and a window it seeks back to is found by the stream's own index: the script's windows
    on such a file are 37 frames' worth, some of them from the wrong place. We take the presented frames.
    """
    decord = _import_decord()
    real = decoded_frames(REAL_CLIP)
    small = [np.ascontiguousarray(f[::4, ::4]) for f in real + real[-2::-1] + real[1:7]]  # 320x180
    full = encode(tmp_path / "full.mp4", small, crf="18")  # one keyframe (x264 puts one every 250 frames)
    whole = decoded_frames(full)
    cut = 10
    cut_with_edit_list(full, tmp_path / "videos" / "cut.mp4", cut)
    video = tmp_path / "videos" / "cut.mp4"
    # the muxer wrote an edit list that skips the cut's 10 frames (512 ticks of 1/12800 s each)
    (before,), (after,) = edit_list(full), edit_list(video)
    assert after[1] - before[1] == cut * 512
    # FFmpeg / PyAV: the 27 frames after the cut, timed from 0
    presented = decoded_frames(video)
    assert len(presented) == LONG_FRAMES - cut
    assert all(np.array_equal(a, b) for a, b in zip(presented, whole[cut:], strict=True))
    with av.open(str(video)) as container:
        assert float(next(container.decode(video=0)).time) == 0.0
    # decord, as the script opens it: 37 frames from -0.4 s
    reader = decord.VideoReader(str(video), num_threads=1, ctx=decord.cpu(0))
    assert len(reader) == LONG_FRAMES
    assert np.allclose(reader.get_frame_timestamp(0), [-0.4, -0.36])
    # ... reading from the start gives the presented frames, then the last one again in the cut's place
    everything = reader.get_batch(np.arange(len(reader))).asnumpy()
    found = [same_frame(f, whole) for f in everything]
    assert found == list(range(cut, LONG_FRAMES)) + [LONG_FRAMES - 1] * cut
    # ... and the script's windows (one reader, windows in order) are 6 where the video presents 3
    reader = decord.VideoReader(str(video), num_threads=1, ctx=decord.cpu(0))
    starts = list(tad_windows(len(reader), "THUMOS14"))
    firsts = [same_frame(reader.get_batch(np.arange(s, s + 16)).asnumpy()[0], whole) for s in starts]
    assert starts == [0, 4, 8, 12, 16, 20] and firsts[:3] == [cut, cut + 4, cut + 8]
    assert (
        firsts[3] is not None and firsts[3] < firsts[2]
    )  # a window seeks back in time: not the presented order
    # our run: the presented frames, 3 rows from 0 s on
    root = video.parent
    (root / "video_list.csv").write_text("cut.mp4\n")
    cfg = compose_app(
        "data=thumos14_videomaev2",
        f"model={STAND_IN[0]}",
        "+model.arch_options.depth=1",
        "model.checkpoint=random",
        f"data.root={root}",
        f"output_dir={tmp_path / 'out'}",
    )
    inputs, rows = model_inputs(cfg, video)
    assert len(rows) == len(inputs) == len(tad_windows(len(presented), "THUMOS14")) == 3
    for clip, start in zip(inputs, tad_windows(len(presented), "THUMOS14"), strict=True):
        assert float((clip - tad_clip(presented, start)).abs().max()) <= 1e-6


def _import_decord() -> Any:
    """decord==0.6.0 (test-only: the script's decoder); skip (fail under CI) without it."""
    try:
        import decord
    except ImportError as error:
        skip_or_fail(f"decord not importable ({error}); pip install decord==0.6.0")
    return decord


def test_decord_cannot_open_av1_which_we_decode(tmp_path: Path) -> None:
    """decord 0.6.0's FFmpeg has no AV1 decoder: the script cannot read such a file; PyAV can."""
    decord = _import_decord()
    if "libsvtav1" not in av.codecs_available:
        pytest.skip("no AV1 encoder in this PyAV build")
    path = tmp_path / "av1.mp4"
    frames = [np.full((64, 64, 3), 12 * i, np.uint8) for i in range(18)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    assert len(decoded_frames(path)) == 18
    with pytest.raises(decord.DECORDError, match="cannot find video stream"):
        decord.VideoReader(str(path), num_threads=1, ctx=decord.cpu(0))


def test_settings_record_the_normalisation(tmp_path: Path) -> None:
    """Resume compares extraction_settings: the preset records /255 only, the default the model's."""
    weights = weights_info(
        as_object(
            compose_app("data=thumos14_videomaev2", f"data.root={tmp_path}", "model.checkpoint=random")
        ).model
    )
    recipe = extraction_settings(
        as_object(compose_app("data=thumos14_videomaev2", f"data.root={tmp_path}")), weights
    )
    own = extraction_settings(
        as_object(
            compose_app(
                "data=thumos14_videomaev2", f"data.root={tmp_path}", "data.mean=null", "data.std=null"
            )
        ),
        weights,
    )
    assert (recipe["mean"], recipe["std"]) == ([0.0] * 3, [1.0] * 3)
    assert (own["mean"], own["std"]) == IMAGENET
    assert {k for k in recipe if recipe[k] != own[k]} == {"mean", "std"}
