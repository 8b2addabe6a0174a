"""The engine under load and under failure: cross-video batching, worker processes that crash or hang,
back-pressure, clamping, and workers that live for the whole run."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.engine import Engine, VideoJob
from pipeline.hardware import usable_cpus
from pipeline.inference import TorchClipModel
from pipeline.io import Frame, SourceInfo
from pipeline.models.registry import build_model
from pipeline.sampling import WindowSpec, clip_timestamps, clip_windows, resolve_padding
from pipeline.transforms import FrameTransform

SIZE = 64  # slowfast_tiny's input size
SPEC = WindowSpec(8, 1, 4, "sliding", "zero")
SQUARE = FrameTransform(mode="square", size=(SIZE, SIZE))  # frames are already 64x64: adds the crop axis


def frame_pixels(video: int, index: int, size: int = SIZE) -> np.ndarray:
    """A deterministic random frame of one video (the same in every process)."""
    return np.random.default_rng(1000 * video + index).integers(0, 256, (size, size, 3), dtype=np.uint8)


class FakeSource:
    """A picklable stand-in video: `n` frames at 10 fps, with an optional misdeed at frame `at`.

    misdeeds: "segv"/"kill" (the worker process signals itself), "exit" (os._exit(3)), "hang" (sleeps an
    hour), "pidfile" (writes the pid to `arg` then sleeps), "raise"; `pid=True` stamps the worker pid.
    """

    def __init__(self, video: int, n: int, misdeed: str | None, at: int, arg: str, pid: bool) -> None:
        self.video, self.n, self.misdeed, self.at, self.arg, self.pid = video, n, misdeed, at, arg, pid
        self.info = SourceInfo(Path(f"v{video}.mp4"), "video", SIZE, SIZE, 10.0, n / 10, n, "fake")

    def __enter__(self) -> FakeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self):
        for i in range(self.n):
            if i == self.at:
                self._misbehave()
            image = frame_pixels(self.video, i)
            if self.pid:
                image[0, :4, 0] = np.frombuffer(np.uint32(os.getpid()).tobytes(), np.uint8)
            yield Frame(image, i / 10, i)

    def _misbehave(self) -> None:
        if self.misdeed == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif self.misdeed == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.misdeed == "exit":
            os._exit(3)
        elif self.misdeed == "hang":
            time.sleep(3600)
        elif self.misdeed == "pidfile":
            Path(self.arg).write_text(str(os.getpid()))
            time.sleep(3600)
        elif self.misdeed == "raise":
            raise ValueError(f"bad frame {self.at}")


@dataclass(frozen=True)
class FakeOpener:
    """Picklable `open_video`: job key `v<number>` -> that video's length and misdeed."""

    lengths: tuple[int, ...]
    misdeeds: tuple[tuple[int, str, int], ...] = ()  # (video, misdeed, frame)
    arg: str = ""
    pid: bool = False

    def __call__(self, job: VideoJob) -> FakeSource:
        video = int(job.key[1:])
        misdeed, at = next(((m, a) for v, m, a in self.misdeeds if v == video), (None, -1))
        return FakeSource(video, self.lengths[video], misdeed, at, self.arg, self.pid)


class PixelModel:
    """Stand-in model: the feature of a clip = pixel (0, 0, 0) of each frame (0 where padded)."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.sleep_s = sleep_s
        self.batch_sizes: list[int] = []

    def __call__(self, clips: np.ndarray, valid: np.ndarray):
        self.batch_sizes.append(len(clips))
        time.sleep(self.sleep_s)
        return clips[:, :, 0, 0, 0].astype(np.float32) * valid, None


class PidModel:
    """Stand-in model: the feature of a clip = the pid stamped into its first frame."""

    def __call__(self, clips: np.ndarray, valid: np.ndarray):
        pids = np.ascontiguousarray(clips[:, 0, 0, :4, 0]).view(np.uint32)
        return pids.astype(np.float64), None


def jobs(count: int) -> list[VideoJob]:
    return [VideoJob(f"v{i}", Path(f"v{i}.mp4"), f"v{i}.mp4") for i in range(count)]


def expected_pixels(video: int, n: int) -> np.ndarray:
    """What PixelModel must give for a video: rows from clip_windows, not from the engine."""
    windows = clip_windows(n, SPEC)
    values = np.array([frame_pixels(video, i)[0, 0, 0] for i in range(n)], dtype=np.float32)
    indices, valid = resolve_padding(windows, n, SPEC.pad)
    return values[indices] * valid


def engine(model, opener, **kwargs) -> Engine:
    return Engine(model, opener, SQUARE, SPEC, fps=10.0, **kwargs)


@pytest.fixture(scope="module")
def tiny_model() -> TorchClipModel:
    torch.manual_seed(0)
    network = build_model("slowfast_tiny")
    return TorchClipModel(network, device=torch.device("cpu"), mean=[0.45] * 3, std=[0.225] * 3)


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


@pytest.mark.parametrize(
    ("misdeed", "reason"),
    [
        ("segv", "died with SIGSEGV"),
        ("kill", "died with SIGKILL (killed from outside; out of memory?)"),
        ("exit", "exited with code 3"),
    ],
)
def test_a_dying_worker_fails_its_video_and_is_replaced(misdeed, reason):
    lengths = (12, 30, 12, 12, 12, 12)
    opener = FakeOpener(lengths, misdeeds=((1, misdeed, 10),))
    run = engine(PixelModel(), opener, batch_size=2, decode_workers=1)
    results = {r.job.key: r for r in run.run(jobs(len(lengths)))}
    bad = results["v1"]
    assert bad.error == f"DecodeWorkerError: v1.mp4: decode process {reason} while decoding this video"
    assert bad.features is None
    for video in (0, 2, 3, 4, 5):
        result = results[f"v{video}"]
        assert result.ok, result.error
        assert np.array_equal(result.features, expected_pixels(video, lengths[video]))
    assert run.last_pool is not None and run.last_pool.replaced == 1


def test_worker_killed_from_outside_mid_video(tmp_path):
    """The OOM killer's way: SIGKILL from another process while the worker is inside a video."""
    pidfile = tmp_path / "pid"
    lengths = (12, 40, 12, 12)
    opener = FakeOpener(lengths, misdeeds=((1, "pidfile", 20),), arg=str(pidfile))

    def killer() -> None:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run = engine(PixelModel(), opener, batch_size=2, decode_workers=1, decode_timeout=None)
    results = {r.job.key: r for r in run.run(jobs(len(lengths)))}
    thread.join(timeout=5)
    assert "decode process died with SIGKILL" in results["v1"].error
    assert all(results[f"v{v}"].ok for v in (0, 2, 3))
    assert np.array_equal(results["v3"].features, expected_pixels(3, 12))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("backend", ["process", "thread"])
def test_a_hanging_video_is_failed_by_the_timeout(backend):
    lengths = (12, 30, 12, 12)
    opener = FakeOpener(lengths, misdeeds=((1, "hang", 5),))
    run = engine(
        PixelModel(), opener, batch_size=2, decode_workers=2, decode_timeout=1.0, decode_backend=backend
    )
    results = {r.job.key: r for r in run.run(jobs(len(lengths)))}
    assert (
        results["v1"].error == "DecodeTimeout: v1.mp4: no decoding progress for 1 s (data.decode_timeout_s)"
    )
    for video in (0, 2, 3):
        assert np.array_equal(results[f"v{video}"].features, expected_pixels(video, lengths[video]))


def test_a_worker_waiting_for_a_slow_model_is_not_timed_out():
    """Back-pressure is not a hang: the worker waits for slots far longer than the timeout."""
    lengths = (40,)
    model = PixelModel(sleep_s=0.3)
    run = engine(model, FakeOpener(lengths), batch_size=1, queue_size=2, decode_timeout=0.5)
    (result,) = list(run.run(jobs(1)))
    assert result.ok, result.error
    assert np.array_equal(result.features, expected_pixels(0, 40))
    assert sum(model.batch_sizes) == 10


def test_an_ordinary_decode_error_is_still_one_line():
    lengths = (12, 12)
    run = engine(PixelModel(), FakeOpener(lengths, misdeeds=((0, "raise", 4),)), batch_size=2)
    results = {r.job.key: r for r in run.run(jobs(2))}
    assert results["v0"].error == "ValueError: bad frame 4"
    assert results["v1"].ok and run.last_pool.replaced == 0


def test_workers_live_for_the_whole_run():
    """Many short videos, two worker processes: every clip comes from one of the same two pids."""
    lengths = (6,) * 16
    run = engine(PidModel(), FakeOpener(lengths, pid=True), batch_size=4, decode_workers=2)
    results = list(run.run(jobs(len(lengths))))
    pids = {int(p) for r in results for p in r.features.ravel()}
    assert len(pids) == 2 and os.getpid() not in pids


def test_decode_workers_beyond_the_cpus_are_clamped(caplog):
    cpus = usable_cpus()
    with caplog.at_level(logging.WARNING, logger="pipeline.engine"):
        run = engine(PixelModel(), FakeOpener((5,)), decode_workers=cpus + 7)
    assert run.decode_workers == cpus
    assert f"hardware.decode_workers={cpus + 7} is more than the {cpus} CPUs" in caplog.text


def test_zero_decode_workers_means_one_per_usable_cpu(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")  # a Slurm task's CPUs win over the affinity mask
    assert usable_cpus() == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    run = engine(PixelModel(), FakeOpener((5, 7)), decode_workers=0)
    assert run.decode_workers == usable_cpus()
    results = {r.job.key: r for r in run.run(jobs(2))}
    for video, n in enumerate((5, 7)):
        assert np.array_equal(results[f"v{video}"].features, expected_pixels(video, n))


def test_stopping_early_stops_the_workers():
    lengths = (400, 400)
    run = engine(PixelModel(), FakeOpener(lengths), batch_size=1, decode_workers=2, queue_size=2)
    results = run.run(jobs(2))
    processes = None
    for _ in results:  # nothing finishes quickly; take the pool while it runs, then stop
        break
    pool = run.last_pool
    assert pool is not None
    processes = [w.handle for w in pool.workers.values()]
    results.close()
    assert processes and not any(p.is_alive() for p in processes)
    assert not pool.workers


ORPHAN_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {root!r}]
import test_throughput as t

class Announcing(t.PixelModel):
    def __call__(self, clips, valid):
        print("model busy", flush=True)
        return super().__call__(clips, valid)

run = t.engine(Announcing(sleep_s=60), t.FakeOpener((4000,)), batch_size=1, queue_size=2)
list(run.run(t.jobs(1)))
"""


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_do_not_outlive_a_killed_engine(tmp_path):
    """SIGKILL of the engine's process (no cleanup runs): its decode workers notice and exit."""
    script = tmp_path / "engine.py"
    tests = Path(__file__).resolve().parent
    script.write_text(ORPHAN_SCRIPT.format(tests=str(tests), root=str(tests.parent)))
    engine_process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert engine_process.stdout.readline().strip() == "model busy"
        workers = children_of(engine_process.pid)
        assert workers
    finally:
        engine_process.kill()
        engine_process.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def test_benchmark_runs_end_to_end(tmp_path, capsys):
    """The benchmark's main path on a tiny model and 3 short generated videos (a smoke test, not a timing)."""
    from pipeline.bench import cli as bench_cli

    argv = [
        "--model",
        "slowfast_tiny",
        "--num-frames",
        "8",
        "--many-short",
        "3",
        "--repeats",
        "2",
        "--e2e-repeats",
        "1",
        "--decode-frames",
        "20",
        "--workdir",
        str(tmp_path),
        "--json",
    ]
    assert bench_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["e2e"]["clips"] == 3 * 4  # 2 s at 30 fps = 60 frames, one row per 16
    assert report["model_clips_per_s"] > 0 and report["plain_fp32_ncdhw_clips_per_s"] > 0
    assert 0 < report["gflops_per_clip"] < 1
    assert (
        report["decode"]["torch_resize_frames_per_s"] > 0
        and report["decode"]["ffmpeg_resize_frames_per_s"] > 0
    )
    assert report["transfer"]["process"]["mb_per_s"] > 0
    assert report["bottleneck"]["limit"] in ("decode", "model")
    node = report["node"]
    assert report["decode"]["torch_resize_one_thread_frames_per_s"] > 0
    assert node["decode_workers_needed"] >= 1 and node["device"] == "cpu" and node["gpu"] is None
    assert node["decode_workers_needed"] == math.ceil(
        node["model_clips_per_s"] / node["decode_clips_per_s_per_worker"]
    )


def test_decode_workers_needed_arithmetic():
    from pipeline.bench.decode import decode_workers_needed

    # a GPU at 120 clips/s, one core decoding 400 frames/s, a new clip every 16 frames: 25 clips/s a worker
    plan = decode_workers_needed(120.0, 400.0, 16.0, 16)
    assert plan["decode_clips_per_s_per_worker"] == 25.0
    assert plan["decode_workers_needed"] == 5 and plan["enough_cpus"]
    assert plan["expected_clips_per_s"] == 120.0 and plan["model_busy_share"] == 1.0
    starved = decode_workers_needed(1000.0, 400.0, 16.0, 16)  # 40 workers needed, 15 to spare
    assert starved["decode_workers_needed"] == 40 and not starved["enough_cpus"]
    assert starved["decode_workers_available"] == 15
    assert starved["expected_clips_per_s"] == 15 * 25.0 and starved["model_busy_share"] == 0.375


def test_benchmark_rss_refuses_a_short_video_without_full_batches(tmp_path):
    """Peak memory includes one batch's activations: a 1-minute video must fill batches to be comparable."""
    from pipeline.bench import cli as bench_cli

    argv = ["--model", "slowfast_tiny", "--minutes", "2", "--stride", "480", "--batch-size", "4"]
    with pytest.raises(SystemExit, match="fewer than 3 batches of 4.*--stride 150 or less"):
        bench_cli.main([*argv, "--workdir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before generating any video
