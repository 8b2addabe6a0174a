"""The streaming engine with a stand-in model: row order, padding, cross-video batching, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.engine import Engine, VideoJob
from pipeline.io import DecodeError, Frame, SourceInfo
from pipeline.sampling import WindowSpec, clip_timestamps, clip_windows, resolve_padding
from tests.fakes import (
    SPEC,
    FakeOpener,
    PixelModel,
    engine,
    expected_pixels,
    frame_pixels,
    jobs,
)


class CountingSource:
    """Frames whose pixels all equal their index + 1 (so zero padding is distinguishable)."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.info = SourceInfo(Path("x"), "video", 4, 4, 10.0, n / 10, n, "fake")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise DecodeError("x", f"decode error at frame {i}")
            yield Frame(np.full((4, 4, 3), (i + 1) % 256, np.uint8), i / 10, i)


class FrameIdModel:
    """Feature of a clip = the value of each frame (frame index + 1; 0 for zero padding)."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, clips, valid):
        self.batch_sizes.append(len(clips))
        values = clips[:, :, 0, 0, 0].astype(np.float32) * valid
        return values, None


def make_engine(lengths: dict[str, int], spec: WindowSpec, fail: dict[str, int] | None = None, **kwargs):
    model = FrameIdModel()

    def open_video(job: VideoJob):
        return CountingSource(lengths[job.key], (fail or {}).get(job.key))

    return Engine(model, open_video, lambda image: image[None], spec, fps=10.0, **kwargs), model


def jobs_of(keys):
    return [VideoJob(k, Path(k), k) for k in keys]


def expected_rows(n: int, spec: WindowSpec) -> np.ndarray:
    windows = clip_windows(n, spec)
    if spec.pad == "zero":
        return np.where((windows >= 0) & (windows < n), (windows + 1) % 256, 0).astype(np.float32)
    return ((np.clip(windows, 0, n - 1) + 1) % 256).astype(np.float32)


@pytest.mark.parametrize(
    "spec",
    [
        WindowSpec(8, 1, 4, "sliding", "zero"),
        WindowSpec(4, 2, 3, "sliding", "edge"),
        WindowSpec(4, 2, 3, "sliding", "drop"),
        WindowSpec(6, 1, 1, "centered", "zero"),
        WindowSpec(6, 2, 5, "centered", "edge"),
    ],
)
def test_rows_follow_clip_windows(spec):
    lengths = {"long": 37, "short": 3, "one": 1}
    engine, _ = make_engine(lengths, spec, batch_size=3)
    results = {r.job.key: r for r in engine.run(jobs_of(lengths))}
    for key, n in lengths.items():
        result = results[key]
        want = expected_rows(n, spec)
        if not len(want):  # pad "drop" and no whole clip: a failed video with the reason, no rows
            assert spec.pad == "drop" and n < spec.span
            assert result.error == (
                f"NoClipError: {key}: {n} frames at 10 fps hold no whole clip of {spec.span} frames "
                "(data.pad=drop keeps only the clips that need no padding): no row; data.pad=zero, edge or "
                "shift gives it one"
            )
            assert result.features is None
            continue
        assert result.ok, result.error
        got = result.features if result.features is not None else np.zeros((0, spec.num_frames))
        assert np.array_equal(got, want), key
        assert result.timestamps.shape == (len(want), 3)
        assert result.frames == n


def test_cross_video_batching_equals_one_at_a_time():
    spec = WindowSpec(4, 1, 2, "sliding", "zero")
    lengths = {f"v{i}": n for i, n in enumerate([1, 2, 5, 9, 17, 3, 30, 4, 11, 6])}
    together, model = make_engine(lengths, spec, batch_size=4, decode_workers=3, queue_size=4)
    mixed = {r.job.key: r for r in together.run(jobs_of(lengths))}
    assert max(model.batch_sizes) == 4
    for key in lengths:
        alone, _ = make_engine({key: lengths[key]}, spec, batch_size=1)
        (single,) = list(alone.run(jobs_of([key])))
        assert np.array_equal(mixed[key].features, single.features)
        assert np.array_equal(mixed[key].timestamps, single.timestamps)


def test_a_failing_video_keeps_nothing_and_the_run_goes_on():
    spec = WindowSpec(4, 1, 2, "sliding", "zero")
    lengths = {"good": 20, "bad": 50, "after": 9}
    engine, _ = make_engine(lengths, spec, fail={"bad": 25}, batch_size=2)
    results = {r.job.key: r for r in engine.run(jobs_of(lengths))}
    assert results["bad"].error == "DecodeError: x: decode error at frame 25"
    assert results["bad"].features is None
    assert results["good"].ok and results["after"].ok
    assert np.array_equal(results["after"].features, expected_rows(9, spec))


def test_zero_frames_is_a_failure():
    engine, _ = make_engine({"empty": 0}, WindowSpec(4, 1, 2, "sliding", "zero"))
    (result,) = list(engine.run(jobs_of(["empty"])))
    assert "zero decodable frames" in result.error


def test_long_video_streams_with_bounded_queue():
    spec = WindowSpec(8, 1, 1, "sliding", "zero")
    engine, model = make_engine({"long": 3000}, spec, batch_size=4, queue_size=4)
    (result,) = list(engine.run(jobs_of(["long"])))
    assert np.array_equal(result.features, expected_rows(3000, spec))
    assert sum(model.batch_sizes) == 3000


# --- under load: many videos per batch, both decode backends ------------------------------------


def test_cross_video_batching_equals_one_clip_at_a_time(tiny_model):
    """Mixed lengths (some shorter than one clip) batched across videos by 2 worker processes equal the
    model run on each clip alone, built from clip_windows; rows come back in order."""
    lengths = (1, 3, 7, 8, 9, 20, 33, 5)
    opener = FakeOpener(lengths)
    together = engine(
        tiny_model, opener, batch_size=4, decode_workers=2, queue_size=8, start_method="forkserver"
    )
    results = {r.job.key: r for r in together.run(jobs(len(lengths)))}
    assert together.last_pool is not None and together.last_pool.kind == "process"
    for video, n in enumerate(lengths):
        result = results[f"v{video}"]
        assert result.ok, result.error
        windows = clip_windows(n, SPEC)
        indices, valid = resolve_padding(windows, n, SPEC.pad)
        frames = np.stack([frame_pixels(video, i) for i in range(n)])
        want = np.concatenate(
            [tiny_model(frames[idx][None], ok[None])[0] for idx, ok in zip(indices, valid, strict=False)]
        )
        assert result.features.shape == (len(windows), 144)
        np.testing.assert_allclose(result.features, want, rtol=1e-5, atol=1e-6)
        stamps = clip_timestamps(windows, np.arange(n) / 10, 0.1, n)
        np.testing.assert_allclose(result.timestamps, stamps, atol=1e-9)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_backends_give_the_same_rows(backend):
    lengths = (2, 40, 1, 17, 9, 30)
    model = PixelModel()
    run = engine(
        model, FakeOpener(lengths), batch_size=3, decode_workers=2, queue_size=3, decode_backend=backend
    )
    results = {r.job.key: r for r in run.run(jobs(len(lengths)))}
    for video, n in enumerate(lengths):
        assert np.array_equal(results[f"v{video}"].features, expected_pixels(video, n))
    assert max(model.batch_sizes) == 3  # clips of several videos filled batches
