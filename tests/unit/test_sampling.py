"""Tests for pipeline.sampling: windows vs a brute-force reading of the rules, timestamps, streaming."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.sampling import (
    ClipStream,
    WindowSpec,
    clip_timestamps,
    clip_windows,
    iter_clips,
    resolve_padding,
    slow_pathway_indices,
)


def reference_windows(n: int, T: int, tau: int, stride: int, window: str, pad: str) -> list[list[int]]:
    """The window rules written out literally, one clip at a time."""
    rows = []
    if window == "sliding":
        k = 0
        while True:
            start = k * stride
            idx = [start + j * tau for j in range(T)]
            if pad == "drop":
                if idx[-1] >= n:
                    break
            elif start >= n:
                break
            rows.append(idx)
            k += 1
    else:
        for centre in range(0, n, stride):
            idx = [centre + (j - T // 2) * tau for j in range(T)]
            if pad == "drop" and (idx[0] < 0 or idx[-1] >= n):
                continue
            rows.append(idx)
    return rows


def spec_grid(frames=(1, 2, 3, 4, 6, 8), taus=(1, 2, 3), strides=(1, 2, 3, 5)):
    for T, tau, stride, window, pad in itertools.product(
        frames, taus, strides, ("sliding", "centered"), ("zero", "edge", "drop")
    ):
        if window == "centered" and T % 2:
            continue
        yield WindowSpec(T, tau, stride, window, pad)


# ---------------------------------------------------------------- WindowSpec


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 2.0}, "num_frames"),
        ({"num_frames": True}, "num_frames"),
        ({"sampling_rate": 0}, "sampling_rate"),
        ({"stride": -1}, "stride"),
        ({"window": "middle"}, "window"),
        ({"pad": "reflect"}, "pad"),
        ({"window": "centered", "num_frames": 3}, "num_frames"),
    ],
)
def test_window_spec_rejects_bad_values_naming_the_field(kwargs, field):
    base = {"num_frames": 4, "sampling_rate": 1, "stride": 1, "window": "sliding", "pad": "zero"}
    with pytest.raises(ValueError, match=field):
        WindowSpec(**{**base, **kwargs})


def test_window_spec_is_frozen_and_hashable():
    spec = WindowSpec(8, 2, 4, "centered", "edge")
    assert spec == WindowSpec(8, 2, 4, "centered", "edge")
    assert len({spec, WindowSpec(8, 2, 4, "centered", "edge")}) == 1
    with pytest.raises(AttributeError):
        spec.stride = 3  # type: ignore[misc]


# ---------------------------------------------------------------- clip_windows


def test_clip_windows_match_reference_rules_exhaustively():
    checked = 0
    for spec in spec_grid():
        for n in range(0, 41):
            got = clip_windows(n, spec)
            want = reference_windows(
                n, spec.num_frames, spec.sampling_rate, spec.stride, spec.window, spec.pad
            )
            assert got.dtype == np.int64
            assert got.shape == (len(want), spec.num_frames), (spec, n)
            assert got.tolist() == want, (spec, n)
            checked += 1
    assert checked > 5000


def test_epic_convention_one_row_per_stride():
    spec = WindowSpec(32, 1, 16, "sliding", "zero")
    for n in (1, 15, 16, 17, 31, 32, 33, 100, 1000):
        w = clip_windows(n, spec)
        assert w.shape == (math.ceil(n / 16), 32)
        assert w[:, 0].tolist() == list(range(0, n, 16))
        assert (np.diff(w, axis=1) == 1).all()


def test_centered_stride_one_gives_one_clip_per_frame():
    spec = WindowSpec(8, 2, 1, "centered", "zero")
    w = clip_windows(20, spec)
    assert w.shape == (20, 8)
    assert (w[:, 4] == np.arange(20)).all()  # position T/2 is the centre frame
    assert w[0].tolist() == [-8, -6, -4, -2, 0, 2, 4, 6]
    assert w[19].tolist() == [11, 13, 15, 17, 19, 21, 23, 25]


def test_short_video_yields_a_row_unless_drop():
    for window, T in (("sliding", 32), ("centered", 32)):
        for pad in ("zero", "edge"):
            assert clip_windows(5, WindowSpec(T, 2, 64, window, pad)).shape == (1, T)
        assert clip_windows(5, WindowSpec(T, 2, 64, window, "drop")).shape == (0, T)
    assert clip_windows(0, WindowSpec(32, 1, 16)).shape == (0, 32)


def test_clip_windows_rejects_negative_n():
    with pytest.raises(ValueError, match="frame count"):
        clip_windows(-1, WindowSpec(4, 1, 1))


def test_resolve_padding_zero_edge_drop():
    w = np.array([[-2, -1, 0, 1], [3, 4, 5, 6]])
    idx, valid = resolve_padding(w, 5, "zero")
    assert idx.tolist() == [[0, 0, 0, 1], [3, 4, 4, 4]]
    assert valid.tolist() == [[False, False, True, True], [True, True, False, False]]
    idx, valid = resolve_padding(w, 5, "edge")
    assert idx.tolist() == [[0, 0, 0, 1], [3, 4, 4, 4]]
    assert valid.all()
    with pytest.raises(ValueError, match="drop"):
        resolve_padding(w, 5, "drop")
    idx, valid = resolve_padding(np.array([[0, 1, 2]]), 3, "drop")
    assert idx.tolist() == [[0, 1, 2]] and valid.all()
    with pytest.raises(ValueError, match="pad"):
        resolve_padding(w, 5, "mirror")


# ---------------------------------------------------------------- slow pathway


def test_slow_pathway_indices_known_values():
    assert slow_pathway_indices(32, 4) == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slow_pathway_indices(32, 8) == [0, 10, 20, 31]
    assert slow_pathway_indices(8, 8) == [0]
    assert slow_pathway_indices(4, 1) == [0, 1, 2, 3]
    # float32 linspace, as PySlowFast: exact rational arithmetic would give 47 at position 11
    assert slow_pathway_indices(95, 4)[11] == 46
    with pytest.raises(ValueError, match="alpha"):
        slow_pathway_indices(4, 8)


def test_slow_pathway_indices_match_pyslowfast_packing():
    try:
        import torch
        from slowfast.config.defaults import get_cfg
        from slowfast.datasets.utils import pack_pathway_output
    except Exception as exc:  # noqa: BLE001 - any import failure means the reference is unavailable
        from tests.reference import skip_or_fail

        skip_or_fail(f"PySlowFast reference (slowfast==1.0) not importable: {exc}")
    cfg = get_cfg()
    cfg.MODEL.ARCH = "slowfast"
    for T, alpha in [(32, 4), (64, 8), (95, 4), (111, 2), (16, 2), (8, 4), (13, 3), (4, 4)]:
        cfg.SLOWFAST.ALPHA = alpha
        frames = torch.arange(T, dtype=torch.float64).view(1, T, 1, 1)
        slow = pack_pathway_output(cfg, frames)[0].flatten().long().tolist()
        assert slow_pathway_indices(T, alpha) == slow, (T, alpha)


# ---------------------------------------------------------------- timestamps


def test_timestamps_sliding_uniform():
    spec = WindowSpec(4, 2, 4, "sliding", "zero")
    n, d = 10, 0.5
    times = np.arange(n) * d
    w = clip_windows(n, spec)  # starts 0, 4, 8; last indices 6, 10, 14
    ts = clip_timestamps(w, times, d, n)
    assert ts.dtype == np.float64 and ts.shape == (3, 3)
    # row 0: frames 0..6 -> [0, 3.5), centre 1.75
    assert ts[0].tolist() == [0.0, 3.5, 1.75]
    # row 1: nominal end t(10)+d = 5.5, clamped to the video end 5.0; centre nominal (2+5.5)/2
    assert ts[1].tolist() == [2.0, 5.0, 3.75]
    # row 2: nominal 4.0 .. 7.5, centre 5.75 -> clamped to end 5.0
    assert ts[2].tolist() == [4.0, 5.0, 5.0]


def test_timestamps_centered_centre_is_frame_time():
    spec = WindowSpec(8, 1, 1, "centered", "zero")
    n, d = 12, 1 / 30
    times = np.arange(n) / 30
    ts = clip_timestamps(clip_windows(n, spec), times, d, n)
    np.testing.assert_allclose(ts[:, 2], times, rtol=0, atol=1e-12)
    assert ts[0, 0] == 0.0  # start clamped to the first frame
    assert ts[-1, 1] == pytest.approx(times[-1] + d)  # end clamped to the video end
    assert (ts[:, 0] <= ts[:, 2]).all() and (ts[:, 2] <= ts[:, 1]).all()


def test_timestamps_use_real_frame_times_and_extend_with_duration():
    times = np.array([0.0, 0.1, 0.5, 0.6])  # irregular (VFR) times
    w = np.array([[1, 2], [2, 3], [-3, -2], [3, 6]])
    ts = clip_timestamps(w, times, 0.1, 4)
    np.testing.assert_allclose(ts[0], [0.1, 0.6, 0.35])
    np.testing.assert_allclose(ts[1], [0.5, 0.7, 0.6])
    # entirely before the video: nominal -0.3..-0.1, both clamped to 0.0
    np.testing.assert_allclose(ts[2], [0.0, 0.0, 0.0])
    # t(6) = 0.6 + 3*0.1, end nominal 1.0 -> 0.7; centre nominal 0.8 -> 0.7
    np.testing.assert_allclose(ts[3], [0.6, 0.7, 0.7])


def test_timestamps_empty_and_bad_input():
    assert clip_timestamps(np.zeros((0, 4), np.int64), np.zeros(0), 0.1, 0).shape == (0, 3)
    with pytest.raises(ValueError, match="frame_times"):
        clip_timestamps(np.zeros((1, 4), np.int64), np.zeros(2), 0.1, 3)
    with pytest.raises(ValueError, match="2-D"):
        clip_timestamps(np.zeros(4, np.int64), np.zeros(4), 0.1, 4)


# ---------------------------------------------------------------- streaming


def frame_times_for(n: int, seed: int) -> np.ndarray:
    """Non-decreasing, irregular frame times (like a VFR decode)."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.uniform(0.01, 0.08, size=n)) + 0.25


def stream_all(spec: WindowSpec, times: np.ndarray, d: float):
    """Push frames 0..n-1 (payload = index); return clips with the frame index each was emitted at."""
    stream = ClipStream(spec, d)
    out = []
    for j, t in enumerate(times):
        out += [(clip, j) for clip in stream.push(j, float(t))]
    out += [(clip, None) for clip in stream.finish()]
    assert stream.finish() == []
    return out


def check_stream_equals_batch(spec: WindowSpec, n: int, seed: int) -> None:
    d = 0.04
    times = frame_times_for(n, seed)
    windows = clip_windows(n, spec)
    want_ts = clip_timestamps(windows, times, d, n)
    got = stream_all(spec, times, d)
    assert [c.index for c, _ in got] == list(range(len(windows))), (spec, n)
    if n:
        idx, valid = resolve_padding(windows, n, spec.pad)
    for (clip, emitted_at), row in zip(got, range(len(windows)), strict=True):
        expected_frames = [int(i) if v else None for i, v in zip(idx[row], valid[row], strict=True)]
        assert clip.frames == expected_frames, (spec, n, row)
        assert clip.valid.dtype == bool and clip.valid.tolist() == valid[row].tolist()
        assert np.array_equal(clip.timestamps, want_ts[row]), (spec, n, row, clip.timestamps, want_ts[row])
        last = int(windows[row, -1])
        # emitted as soon as its last frame arrived; only clips needing frames past the end wait for finish
        assert emitted_at == (last if last < n else None), (spec, n, row, emitted_at)


def test_stream_equals_batch_exhaustively():
    for spec in spec_grid(frames=(1, 2, 4, 6), taus=(1, 2, 3), strides=(1, 2, 5)):
        for n in [0, 1, 2, 3, 5, 7, 8, 13, 20, 31]:
            check_stream_equals_batch(spec, n, seed=n)


def test_stream_equals_batch_random_larger_specs():
    rng = np.random.default_rng(1234)
    for trial in range(60):
        T = int(rng.choice([8, 16, 32]))
        spec = WindowSpec(
            T,
            int(rng.integers(1, 5)),
            int(rng.integers(1, 40)),
            str(rng.choice(["sliding", "centered"])),
            str(rng.choice(["zero", "edge", "drop"])),
        )
        n = int(rng.integers(0, 300))
        check_stream_equals_batch(spec, n, seed=trial)


def test_stream_n_below_one_clip():
    spec = WindowSpec(32, 2, 16, "sliding", "zero")
    got = stream_all(spec, np.arange(10) / 10, 0.1)
    assert len(got) == 1 and got[0][1] is None
    clip = got[0][0]
    assert clip.frames[:5] == [0, 2, 4, 6, 8] and clip.frames[5:] == [None] * 27
    assert clip.valid.sum() == 5
    # nominal span 0.0 .. t(62) + d = 6.3, centre 3.15: end and centre clamp to the video end 1.0
    assert clip.timestamps.tolist() == [0.0, 1.0, 1.0]


def test_stream_edge_padding_payloads():
    spec = WindowSpec(4, 1, 3, "centered", "edge")
    payloads = "abcde"
    stream = ClipStream(spec, 0.1)
    clips = []
    for j, p in enumerate(payloads):
        clips += stream.push(p, j / 10)
    clips += stream.finish()
    assert [c.frames for c in clips] == [["a", "a", "a", "b"], ["b", "c", "d", "e"]]
    assert all(c.valid.all() for c in clips)


@pytest.mark.parametrize(
    "spec",
    [
        WindowSpec(32, 1, 16, "sliding", "zero"),
        WindowSpec(32, 2, 1, "centered", "zero"),
        WindowSpec(8, 8, 64, "sliding", "edge"),
        WindowSpec(16, 4, 200, "centered", "drop"),
        WindowSpec(4, 1, 1000, "sliding", "drop"),
    ],
)
def test_stream_memory_is_bounded(spec):
    n = 10_000
    stream = ClipStream(spec, 1 / 30)
    peak = 0
    rows = 0
    for j in range(n):
        rows += len(stream.push(j, j / 30))
        peak = max(peak, stream.buffered)
    rows += len(stream.finish())
    assert peak <= spec.num_frames * spec.sampling_rate + spec.stride
    assert peak <= (spec.num_frames - 1) * spec.sampling_rate + 1
    assert rows == len(clip_windows(n, spec))
    assert stream.buffered == 0


def test_stream_push_after_finish_raises():
    stream = ClipStream(WindowSpec(2, 1, 1), 0.1)
    stream.push(0, 0.0)
    assert len(stream.finish()) == 1
    with pytest.raises(RuntimeError, match="finish"):
        stream.push(1, 0.1)


def test_iter_clips_generator():
    spec = WindowSpec(4, 1, 2, "sliding", "zero")
    clips = list(iter_clips(((j, j * 0.1) for j in range(7)), spec, 0.1))
    assert [c.frames for c in clips] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, None], [6, None, None, None]]


def test_bad_frame_duration_refused():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="frame_duration"):
            ClipStream(WindowSpec(2, 1, 1), bad)
        with pytest.raises(ValueError, match="frame_duration"):
            clip_timestamps(np.zeros((1, 2), np.int64), np.zeros(2), bad, 2)


# ---------------------------------------------------------------- pad "shift" (the Ego4D rule)


def ego4d_num_rows(n: int, stride: int, window: int) -> int:
    """Ego4D's own count of feature rows (ego4d/features/extract_features.py `_num_fvs`), written out."""
    rest = n - window
    if rest < 0:
        return 1
    return rest // stride + 1 + (1 if rest % stride else 0)


def shift_reference(n: int, T: int, tau: int, stride: int) -> list[list[int]]:
    """The rule literally: clips [k*stride, k*stride + span) while inside, then one ending on frame n-1."""
    span = (T - 1) * tau + 1
    if n < span:  # pytorchvideo's UniformTemporalSubsample(T) over all n frames
        return [[int(i) for i in np.linspace(0, n - 1, T).astype(np.float32).astype(np.int64)]]
    rows = [[k * stride + j * tau for j in range(T)] for k in range((n - span) // stride + 1)]
    if rows[-1][-1] != n - 1:
        rows.append([n - span + j * tau for j in range(T)])
    return rows


@pytest.mark.parametrize("n", [32, 48, 96, 160, 33, 40, 100, 161, 175])
def test_shift_ego4d_boundary_rows(n: int) -> None:
    """T=32, tau=1, stride 16: clip i covers [i, i+32); the last clip ends on the last frame, no padding."""
    spec = WindowSpec(32, 1, 16, "sliding", "shift")
    windows = clip_windows(n, spec)
    assert len(windows) == ego4d_num_rows(n, 16, 32)
    assert windows[-1].tolist() == list(range(n - 32, n))  # ends on frame n-1
    assert all(row.tolist() == list(range(16 * k, 16 * k + 32)) for k, row in enumerate(windows[:-1]))
    if n % 16 == 0:  # on the stride grid: the last clip is a regular one
        assert windows[-1][0] == 16 * (len(windows) - 1)
    else:  # moved back by (n - 32) % 16 frames from the grid
        assert windows[-1][0] == 16 * (len(windows) - 2) + (n - 32) % 16
    idx, valid = resolve_padding(windows, n, "shift")
    assert valid.all() and np.array_equal(idx, windows)


def test_shift_matches_the_rule_and_ego4d_counts_exhaustively() -> None:
    for T, tau, stride in itertools.product((1, 2, 4, 8, 32), (1, 2, 3), (1, 3, 5, 16)):
        spec = WindowSpec(T, tau, stride, "sliding", "shift")
        for n in range(1, 90):
            windows = clip_windows(n, spec)
            assert windows.tolist() == shift_reference(n, T, tau, stride), (spec, n)
            assert len(windows) == ego4d_num_rows(n, stride, spec.span), (spec, n)
            assert windows.min() >= 0 and windows.max() == n - 1


def test_shift_short_video_spreads_one_clip_over_all_frames() -> None:
    spec = WindowSpec(32, 1, 16, "sliding", "shift")
    windows = clip_windows(20, spec)
    assert windows.shape == (1, 32)
    # torch.linspace(0, 19, 32).long(), as UniformTemporalSubsample picks them
    assert windows[0].tolist() == [int(i) for i in __import__("torch").linspace(0, 19, 32).long()]
    assert windows[0, 0] == 0 and windows[0, -1] == 19 and len(set(windows[0].tolist())) == 20
    assert clip_timestamps(windows, np.arange(20) / 30, 1 / 30, 20).tolist() == [[0.0, 20 / 30, 10 / 30]]


def test_shift_needs_a_sliding_window() -> None:
    with pytest.raises(ValueError, match="'shift' needs window 'sliding'"):
        WindowSpec(32, 1, 16, "centered", "shift")


def test_shift_timestamps_say_which_frames_each_row_saw() -> None:
    n, d = 100, 1 / 30
    windows = clip_windows(n, WindowSpec(32, 1, 16, "sliding", "shift"))
    stamps = clip_timestamps(windows, np.arange(n) * d, d, n)
    assert np.allclose(stamps[:, 0] * 30, [0, 16, 32, 48, 64, 68])
    assert np.allclose(stamps[:, 1] * 30, [32, 48, 64, 80, 96, 100])


def test_shift_stream_equals_batch() -> None:
    for T, tau, stride in itertools.product((1, 2, 4, 8), (1, 2, 3), (1, 2, 5, 16)):
        spec = WindowSpec(T, tau, stride, "sliding", "shift")
        for n in [0, 1, 2, 3, 5, 7, 8, 13, 20, 31, 47]:
            d = 0.04
            times = frame_times_for(n, n)
            windows = clip_windows(n, spec)
            want_ts = clip_timestamps(windows, times, d, n)
            got = stream_all(spec, times, d)
            assert [c.index for c, _ in got] == list(range(len(windows))), (spec, n)
            for (clip, emitted_at), row in zip(got, windows, strict=True):
                assert clip.frames == row.tolist(), (spec, n)
                assert clip.valid.all()
                assert np.array_equal(clip.timestamps, want_ts[clip.index])
                on_grid = row[0] == clip.index * stride and row[-1] - row[0] == spec.span - 1
                # grid clips as soon as their last frame arrives; the shifted one (or a short video's) at the end
                assert emitted_at == (int(row[-1]) if on_grid else None), (spec, n, clip.index)


@pytest.mark.parametrize(
    "spec", [WindowSpec(32, 1, 16, "sliding", "shift"), WindowSpec(8, 2, 100, "sliding", "shift")]
)
def test_shift_stream_memory_is_bounded(spec: WindowSpec) -> None:
    n = 5_003
    stream = ClipStream(spec, 1 / 30)
    peak = rows = 0
    for j in range(n):
        rows += len(stream.push(j, j / 30))
        peak = max(peak, stream.buffered)
    last = stream.finish()
    assert last[-1].frames == clip_windows(n, spec)[-1].tolist()
    assert rows + len(last) == len(clip_windows(n, spec))
    assert peak <= spec.span
