"""data=activitynet_tsp / data=thumos14_tsp: TSP's feature recipe (HumamAlwassel/TSP extract_features/).

- The presets' values against TSP's own sources (opts.py, extract_features.py, README.md).
- The model's input against TSP's own transforms (common/transforms.py) on real footage.
- A whole run (`python -m pipeline.extract data=activitynet_tsp`, a random R(2+1)D-34 saved as TSP's
  train.py saves it) on real footage against the restatement of TSP's extraction in tests/tsp_reference.py.
- The last-clip rule (trailing frames dropped) and a video shorter than one clip (a failed record).
- What TSP's 30 fps standardisation (`ffmpeg -filter:v fps=fps=30`, then every 2nd frame) picks against
  our `data.fps=15`, measured with libavfilter's fps filter (the code the ffmpeg CLI runs) through PyAV:
  the same frames on a constant 30 fps video, one source frame apart on some frames at 25 and 29.97 fps.
"""

from __future__ import annotations

import json
import logging
import math
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from pipeline import synth
from pipeline.api import CONF_PACKAGE
from pipeline.assemble import as_object, frame_transform, window_spec
from pipeline.config import register_configs, validate
from pipeline.io import open_source
from pipeline.transforms import crop_offsets, normalize_clips
from tests.helpers import REAL_CLIP, run_config, run_extract
from tests.reference import randomize_, relative_error
from tests.tsp_reference import (
    CROP,
    MEAN,
    RESIZE,
    STD,
    frame_indices,
    save_training_checkpoint,
    tsp_common,
    tsp_eval_dataset,
    tsp_extract,
    tsp_model,
    tsp_source,
)

RTOL = 1e-4  # per row, relative L2 (fp32 sums in another order; measured ~1e-6)
PRESETS = {  # preset -> (model, stride)
    "activitynet_tsp": ("r2plus1d_34_tsp_activitynet", 16),
    "thumos14_tsp": ("r2plus1d_34_tsp_thumos14", 1),
}


def compose_app(*overrides: str):
    """The config `python -m pipeline.extract <overrides>` would run."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _tsp_settings() -> dict[str, object]:
    """The numbers of TSP's extraction as its sources write them (opts.py defaults, extract_features.py's
    transform, the README's strides of the released features)."""
    folder = tsp_source() / "extract_features"
    opts = (folder / "opts.py").read_text()
    script = (folder / "extract_features.py").read_text()
    readme = (tsp_source() / "README.md").read_text()

    def default(flag: str) -> int:
        match = re.search(rf"'--{flag}', default=(\d+)", opts)
        assert match, flag
        return int(match[1])

    def floats(name: str) -> list[float]:
        match = re.search(rf"{name}=\[([^\]]+)\]", script)
        assert match, name
        return [float(v) for v in match[1].split(",")]

    resize = re.search(r"T\.Resize\(\((\d+), (\d+)\)\)", script)
    crop = re.search(r"T\.CenterCrop\(\((\d+), (\d+)\)\)", script)
    strides = re.findall(r"a stride of `(\d+) frames?`", readme)  # ActivityNet, then THUMOS14
    assert resize and crop and len(strides) == 2
    return {
        "clip_len": default("clip-len"),
        "frame_rate": default("frame-rate"),
        "stride": default("stride"),
        "mean": floats("mean"),
        "std": floats("std"),
        "resize_hw": (int(resize[1]), int(resize[2])),
        "crop_hw": (int(crop[1]), int(crop[2])),
        "released_strides": {"activitynet_tsp": int(strides[0]), "thumos14_tsp": int(strides[1])},
    }


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_hold_tsps_recipe_and_pick_its_model(tmp_path: Path, preset: str) -> None:
    tsp = _tsp_settings()
    cfg = compose_app(f"data={preset}", f"data.root={tmp_path}")
    validate(cfg)
    c = as_object(cfg)
    model, stride = PRESETS[preset]
    assert c.model.name == model and c.model.feature_layer is None and c.model.feature_dim == 512
    assert list(c.model.mean) == tsp["mean"] == list(MEAN) and list(c.model.std) == tsp["std"] == list(STD)
    assert c.model.channel_order.value == "rgb"
    d = c.data
    assert (d.fps, d.num_frames, d.sampling_rate) == (tsp["frame_rate"], tsp["clip_len"], 1)
    assert d.stride == stride == tsp["released_strides"][preset]
    if preset == "activitynet_tsp":
        assert d.stride == tsp["stride"]  # opts.py's default is the ActivityNet release's
    assert (d.window.value, d.pad.value, d.crops) == ("sliding", "drop", 1)
    r = d.resize
    height, width = tsp["resize_hw"]
    assert (r.mode.value, list(r.size), r.interpolation.value) == ("fixed", [width, height], "float_bilinear")
    assert tsp["crop_hw"] == (r.crop, r.crop) == CROP and (height, width) == RESIZE
    # TSP's centre crop: int(round((128 - 112) / 2.)), int(round((171 - 112) / 2.)) (Python's round)
    assert (
        crop_offsets(width, height, r.crop, 1, r.crop_rounding.value)
        == [(int(round((width - r.crop) / 2.0)), int(round((height - r.crop) / 2.0)))]
        == [(30, 8)]
    )
    spec = window_spec(d)
    assert (spec.span, spec.offsets.tolist()) == (16, list(range(16)))
    # the command line still chooses another model
    other = compose_app(f"data={preset}", "model=r2plus1d_18_tsp_activitynet", f"data.root={tmp_path}")
    assert other.model.name == "r2plus1d_18_tsp_activitynet"


def _real_frames() -> np.ndarray:
    """The 16 frames of the shipped real clip (1280x720), as PyAV decodes them: (16, 720, 1280, 3) uint8."""
    with av.open(str(REAL_CLIP)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_model_input_is_tsps_transform_on_real_footage(tmp_path: Path) -> None:
    """One clip of real 1280x720 frames through the preset's transform and normalisation against TSP's own
    Compose (ToFloatTensorInZeroOne, Resize((128, 171)), Normalize, CenterCrop((112, 112))): within 1e-6;
    rounding the resized frames to uint8, as a uint8 resizer would, is far outside that."""
    c = as_object(compose_app("data=activitynet_tsp", f"data.root={tmp_path}"))
    frames = _real_frames()
    transform = frame_transform(c)
    resized = np.stack([transform(frame)[0] for frame in frames])  # (16, 112, 112, 3) float32
    assert resized.dtype == np.float32
    valid = torch.ones(1, len(frames), dtype=torch.bool)
    ours = normalize_clips(torch.from_numpy(resized)[None], valid, c.model.mean, c.model.std)[0]
    T = tsp_common().transforms
    theirs = torch.from_numpy(frames)
    for step in (T.ToFloatTensorInZeroOne(), T.Resize(RESIZE), T.Normalize(MEAN, STD), T.CenterCrop(CROP)):
        theirs = step(theirs)
    assert ours.shape == theirs.shape == (3, 16, 112, 112)
    error = float((ours - theirs).abs().max())
    print(f"model input vs TSP's transform: max abs {error:.2e}")
    assert error <= 1e-6
    rounded = torch.from_numpy(np.round(resized))[None]
    coarse = normalize_clips(rounded, valid, c.model.mean, c.model.std)[0]
    assert float((coarse - theirs).abs().max()) > 1e-3  # the test sees a uint8 rounding


def _write_real_30fps(path: Path, frames: np.ndarray, count: int) -> None:
    """`count` frames at a constant 30 fps from the real clip: its frames back and forth, each seen through
    a window panning 4 px a frame (1120 x 630), so that no two frames are the same picture."""
    order = [i % 30 if i % 30 < 16 else 30 - i % 30 for i in range(count)]  # 0..15, 14..1, 0..
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1120, 630, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i, k in enumerate(order):
            x = 4 * i
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[k, 40:670, x : x + 1120]), "rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_run_on_real_footage_gives_tsps_rows(tmp_path: Path) -> None:
    """75 frames at 30 fps of real footage (38 at 15 fps: two clips, the 6 frames after them dropped)
    through `python -m pipeline.extract data=activitynet_tsp` with a random R(2+1)D-34 in TSP's checkpoint
    format, against TSP's algorithm on the frames PyAV decodes from the same file: the same rows."""
    root = tmp_path / "videos"
    root.mkdir()
    _write_real_30fps(root / "v_real.mp4", _real_frames(), 75)
    (root / "video_list.csv").write_text("v_real.mp4\n")
    ref = tsp_model("r2plus1d_34", [200, 2], concat_gvf=True)
    randomize_(ref, seed=3)
    checkpoint = tmp_path / "epoch_5.pth"
    save_training_checkpoint(ref, checkpoint)
    out = tmp_path / "out"
    done = run_extract(
        tmp_path,
        "data=activitynet_tsp",
        f"data.root={root}",
        f"model.checkpoint={checkpoint}",
        f"output_dir={out}",
        "output.hdf5=false",
        "hardware.threads=1",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ours = np.load(out / "features" / "v_real_16.npy")
    sidecar = json.loads((out / "features" / "v_real_16.json").read_text())

    with av.open(str(root / "v_real.mp4")) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        decoded = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)]))
    assert (len(decoded), fps) == (75, 30.0)
    at_15 = decoded[torch.from_numpy(frame_indices(len(decoded), fps))]  # every 2nd frame: 38
    want = tsp_extract(at_15, lambda clips: ref.features(clips), batch_size=2)
    clips = len(tsp_eval_dataset(torch.zeros(75, 2, 2, 3, dtype=torch.uint8), fps))  # TSP's own clip list
    assert ours.shape == want.shape == (clips, 512) == (2, 512)
    errors = [
        relative_error(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(ours, want, strict=True)
    ]
    print("rows vs TSP: relative L2 " + ", ".join(f"{e:.2e}" for e in errors))
    assert max(errors) < RTOL
    assert (sidecar["frames"], sidecar["fps"], sidecar["rows"]) == (38, 15, 2)
    # row t: frames [16 t, 16 t + 16) at 15 fps, centred at 16 t + 8
    assert np.allclose(np.asarray(sidecar["timestamps"]) * 15, [[0, 16, 8], [16, 32, 24]], atol=1e-4)
    assert sidecar["settings"]["resize"] == {
        "mode": "fixed",
        "backend": "torch",
        "interpolation": "float_bilinear",
        "size": [171, 128],
        "crop": 112,
        "crop_rounding": "half_even",
    }


def test_last_clip_rule_and_a_video_shorter_than_a_clip(tmp_path: Path, caplog) -> None:
    """Row counts of constant 30 fps videos equal the clips TSP's EvalVideoDataset makes (the frames after
    the last whole clip dropped); 30 frames (15 at 15 fps) hold no clip: TSP raises, we record a failed
    video that says why and what gives it a row."""
    root = tmp_path / "videos"
    lengths = {"v_31": 31, "v_32": 32, "v_63": 63, "v_65": 65, "v_79": 79, "v_96": 96, "v_30": 30}
    for name, n in lengths.items():
        assert synth.write_video(root / f"{name}.mp4", fps=30, seconds=n / 30) == n
    (root / "video_list.csv").write_text("".join(f"{name}.mp4\n" for name in lengths))
    out = tmp_path / "out"
    cfg = compose_app(
        "data=activitynet_tsp",
        "model=r2plus1d_tiny",  # any clip size: a global average over layer4
        "model.checkpoint=random",
        f"data.root={root}",
        f"output_dir={out}",
        "output.hdf5=false",
    )
    validate(cfg)
    caplog.set_level(logging.INFO, logger="pipeline.run")
    summary = run_config(cfg)
    assert (summary.ok, summary.failed) == (6, 1)
    for name, n in lengths.items():
        video = torch.zeros(n, 2, 2, 3, dtype=torch.uint8)
        if n == 30:
            with pytest.raises(IndexError):  # is_last_clip[-1] = 1 on no clip
                tsp_eval_dataset(video, 30)
            assert not (out / "features" / f"{name}_16.npy").exists()
            continue
        rows = np.load(out / "features" / f"{name}_16.npy").shape[0]
        assert rows == len(tsp_eval_dataset(video, 30)) == (math.ceil(n / 2) - 16) // 16 + 1, name
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED v_30.mp4: NoClipError: ")
    assert "15 frames at 15 fps hold no whole clip of 16 frames" in failed[0]
    assert "data.pad=zero, edge or shift gives it one" in failed[0]


# --------------------------------------------------------------------------- the 30 fps standardisation


def ffmpeg_fps_30(path: Path) -> list[int]:
    """Numbers of the frames `ffmpeg -i <path> -filter:v fps=fps=30` keeps, in order: the decoded frames (with
    their timestamps and durations) through libavfilter's fps filter, which the ffmpeg CLI runs."""
    numbers: list[int] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        source = graph.add_buffer(template=stream)
        fps = graph.add("fps", "fps=30")
        sink = graph.add("buffersink")
        source.link_to(fps)
        fps.link_to(sink)
        graph.configure()

        def drain() -> None:
            while True:
                try:
                    frame = graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    return
                numbers.append(synth.read_frame_number(frame.to_ndarray(format="rgb24")))

        for frame in container.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return numbers


def ours_at_15(path: Path) -> tuple[list[int], list[float]]:
    """Numbers and times of the frames `data.fps=15` gives."""
    with open_source(path, fps=15) as source:
        frames = [(synth.read_frame_number(f.image), f.time) for f in source]
    return [n for n, _ in frames], [t for _, t in frames]


def test_on_a_constant_30fps_video_fps_15_is_tsps_every_second_frame(tmp_path: Path) -> None:
    path = tmp_path / "cfr30.mp4"
    assert synth.write_video(path, fps=30, seconds=95 / 30) == 95
    at_30 = ffmpeg_fps_30(path)
    assert at_30 == list(range(95))  # the standardisation keeps every frame of a 30 fps video
    numbers, times = ours_at_15(path)
    assert numbers == at_30[::2] == list(range(0, 95, 2))
    assert np.allclose(times, np.arange(48) / 15, atol=1e-9)


@pytest.mark.parametrize(
    ("rate", "frames", "later"),
    [
        # 25 fps: TSP's frame is one source frame (40 ms) later on every 3rd frame, k = 1 mod 3
        (Fraction(25), 95, lambda k: k % 3 == 1),
        # 29.97 fps: one source frame (33 ms) later for k mod 500 in 1..249 (16.6 s on, 16.7 s off)
        (Fraction(30000, 1001), 1300, lambda k: 1 <= k % 500 <= 249),
    ],
)
def test_other_rates_differ_from_tsps_standardisation_by_one_source_frame(
    tmp_path: Path, rate: Fraction, frames: int, later
) -> None:
    """ffmpeg's fps filter gives output slot n the last frame whose time rounds to <= n / 30 (to the nearest
    slot, halves up): TSP's frame k at 15 fps is the last source frame before k / 15 + 1/60 s. Ours is the
    last at or before k / 15 s. The measured difference: TSP's frame is the next source frame on the frames
    `later` says, the same elsewhere; the frame counts are equal here."""
    path = tmp_path / "source.mp4"
    assert synth.write_video(path, fps=float(rate), seconds=frames / float(rate)) == frames
    tsp = ffmpeg_fps_30(path)[::2]
    ours, _ = ours_at_15(path)
    assert len(tsp) == len(ours)
    shift = [a - b for a, b in zip(tsp, ours, strict=True)]
    assert shift == [1 if later(k) else 0 for k in range(len(ours))]
    source_times = np.arange(frames) / float(rate)
    picked = [int(np.flatnonzero(source_times < k / 15 + 1 / 60 - 1e-9)[-1]) for k in range(len(tsp))]
    assert tsp == picked


@pytest.mark.parametrize(("frames", "ours", "tsp"), [(19, 11, 12), (79, 47, 48), (80, 48, 48)])
def test_frame_counts_at_25fps_can_differ_by_one(tmp_path: Path, frames: int, ours: int, tsp: int) -> None:
    """The standardisation ends at the last frame's end (round(frames * 30 / 25) slots, then every 2nd:
    ceil of half); our resampling at the last frame's start (floor((frames - 1) * 15 / 25) + 1). 79 frames:
    47 vs 48 at 15 fps, so 2 vs 3 clips of 16."""
    path = tmp_path / "pal.mp4"
    assert synth.write_video(path, fps=25, seconds=frames / 25) == frames
    at_30 = ffmpeg_fps_30(path)
    assert len(at_30) == round(frames * 30 / 25)
    assert len(at_30[::2]) == tsp == math.ceil(round(frames * 6 / 5) / 2)
    assert len(ours_at_15(path)[0]) == ours == (frames - 1) * 15 // 25 + 1
