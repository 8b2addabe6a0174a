"""Throughput benchmark: model-only, decode-only and end-to-end clips/s, peak memory, GFLOPs, transfer.

    python -m pipeline.benchmark                         # SlowFast R50, EPIC setting, generated 1080p30 video
    python -m pipeline.benchmark --video my.mp4 --json   # a user's file, machine-readable
    python -m pipeline.benchmark --all-models            # clips/s and GFLOPs of every registered model
    python -m pipeline.benchmark --many-short 200        # 200 videos of 2 s at 320x240
    python -m pipeline.benchmark --minutes 60 --stride 120 --resolution 320x240   # RSS vs video length
    python -m pipeline.benchmark --vs-seed               # whole-process time vs the old extractor's algorithm

Everything runs in one process (the RSS-vs-length mode starts one fresh process per video length) with
random weights (speed does not depend on their values). Rates are medians of repeated measurements:
shared machines are noisy. GFLOPs are fvcore's, which counts one multiply-add as one flop (= GMACs).
On a GPU node decoding decides throughput: `node` in the report gives the decode workers (one CPU each)
that keep the model busy, from the model's clips/s and one single-threaded worker's decode rate, both
measured in the same run (`--node-cpus N` plans for a node with N CPUs).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from pipeline.decode import SourceOpener
from pipeline.engine import Engine, VideoJob
from pipeline.errors import exit_status
from pipeline.hardware import usable_cpus
from pipeline.io import Frame, FrameSource, SourceInfo
from pipeline.layer_profile import layer_profile, print_layer_profile
from pipeline.models.base import VideoModel
from pipeline.models.fused import unfused
from pipeline.sampling import WindowSpec
from pipeline.transforms import FrameTransform

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass
class Settings:
    """What is measured: the model, the clip setting and the hardware knobs (defaults: EPIC on CPU)."""

    model: str = "slowfast_r50"
    num_frames: int | None = 32  # None: the model's own
    sampling_rate: int | None = 1
    stride: int = 16
    fps: float | None = 30.0
    size: int | None = None  # model input size; None: the model's crop size
    batch_size: int = 4
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False
    decode_workers: int = 1
    decode_backend: str = "process"
    resize_backend: str = "torch"
    reuse_memory: bool = True
    repeats: int = 5


# --- measurements --------------------------------------------------------------------------------


def median_rate(count: float, seconds: list[float]) -> float:
    """count per second at the median time."""
    return count / statistics.median(seconds)


def time_call(function: Any, *args: Any) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def random_clips(batch: int, num_frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (batch, num_frames, size, size, 3), dtype=np.uint8),
        np.ones((batch, num_frames), dtype=bool),
    )


def measure_model(
    models: dict[str, Any],
    batch: int,
    num_frames: int,
    size: int,
    repeats: int,
    cpu: dict[str, float] | None = None,
) -> dict[str, float]:
    """Clips/s of each model on ready uint8 clips; the models take turns so that load drift hits all alike.

    `cpu`, when given, receives each model's median CPU seconds per clip (all its threads).
    """
    clips, valid = random_clips(batch, num_frames, size)
    for model in models.values():
        model(clips, valid)  # warm-up (and compilation)
    times: dict[str, list[float]] = {name: [] for name in models}
    cpu_times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            with CpuMeter() as meter:
                times[name].append(time_call(model, clips, valid))
            cpu_times[name].append(meter.ours / batch)
    if cpu is not None:
        cpu.update({name: statistics.median(spent) for name, spent in cpu_times.items()})
    return {name: median_rate(batch, spent) for name, spent in times.items()}


def measure_decode(
    video: Path,
    opener: SourceOpener,
    transform: FrameTransform,
    max_frames: int,
    repeats: int,
    cpu: dict[str, float] | None = None,
) -> float:
    """Decoded source frames/s (decode, resampling and the transform to model input) like one worker.

    `cpu`, when given, receives "cpu_s_per_frame": the median CPU seconds (all decoder threads) per
    source frame.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a decode worker
    job = VideoJob("bench", video, video.name)
    times, cpu_times, frames = [], [], 0
    try:
        for _ in range(repeats):
            with CpuMeter() as meter:
                started = time.perf_counter()
                with opener(job) as source:
                    for frame in source:
                        transform(frame.image)
                        if source.frames_decoded >= max_frames:
                            break
                    frames = source.frames_decoded
                times.append(time.perf_counter() - started)
            cpu_times.append(meter.ours / max(frames, 1))
    finally:
        torch.set_num_threads(threads)
    if cpu is not None:
        cpu["cpu_s_per_frame"] = statistics.median(cpu_times)
    return median_rate(frames, times)


def measure_ffmpeg_cli(video: Path, size: int, max_frames: int, repeats: int) -> float | None:
    """frames/s of the ffmpeg CLI decoding and scaling to size x size rgb24 (None without ffmpeg)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    command = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "0",
        "-i",
        str(video),
        "-an",
        "-frames:v",
        str(max_frames),
        "-vf",
        f"scale={size}:{size}:flags=bilinear",
        "-pix_fmt",
        "rgb24",
        "-f",
        "rawvideo",
        "-y",
        os.devnull,
    ]
    times = [time_call(subprocess.run, command) for _ in range(repeats)]
    return median_rate(min(frame_count(video), max_frames), times)


def frame_count(video: Path) -> int:
    """Frames of a video: the header's count, else counted by decoding."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.decode(stream))


class CpuMeter:
    """CPU seconds over a span: this process plus its finished children, and the whole machine.

    `foreign_share` is the fraction of the machine's CPU time others used meanwhile: a measurement taken
    while other jobs ran is flagged instead of silently trusted.
    """

    def __enter__(self) -> CpuMeter:
        self.start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
        return ours, (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz

    @property
    def ours(self) -> float:
        return self.end[0] - self.start[0]

    @property
    def foreign_share(self) -> float:
        busy, total = self.end[1] - self.start[1], self.end[2] - self.start[2]
        return max(0.0, (busy - self.ours) / total) if total > 0 else 0.0


class MemorySampler:
    """Samples this process's RSS and the PSS of it plus its decode workers while a run goes on."""

    def __init__(self, engine: Engine, every_s: float = 1.0) -> None:
        self.engine, self.every_s = engine, every_s
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.every_s):
                return

    def _sample(self) -> None:
        pool = self.engine.last_pool
        workers = list(pool.workers.values()) if pool else []
        pids = [w.handle.pid for w in workers if hasattr(w.handle, "pid")]
        self.peak_rss = max(self.peak_rss, proc_kb(os.getpid(), "VmRSS") * 1024)
        self.peak_pss = max(self.peak_pss, sum(pss_bytes(pid) for pid in [os.getpid(), *pids]))


def proc_kb(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process (shared pages split among their users); 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure_e2e(extractor: Any, videos: list[Path]) -> dict[str, Any]:
    """Clips/s through the real pipeline (decode workers, batching, model) over the videos."""
    rows, failed = 0, []
    with MemorySampler(extractor.engine) as memory, CpuMeter() as meter:
        started = time.perf_counter()
        for result in extractor.extract_many(videos):  # counted and dropped, as a run writes and drops them
            if result.ok:
                rows += len(result.features)
            else:
                failed.append(result.error)
        seconds = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark videos failed, e.g. {failed[0]}")
    return {
        "clips": rows,
        "seconds": round(seconds, 2),
        "clips_per_s": rows / seconds,
        "cpu_s_per_clip": meter.ours / rows,  # this process and its decode workers
        "foreign_cpu_share": meter.foreign_share,
        "peak_rss_mb": memory.peak_rss / MB,
        "peak_pss_with_workers_mb": memory.peak_pss / MB,
    }


def measure_e2e_interleaved(
    extractor: Any, videos: list[Path], batch: int, num_frames: int, size: int, repeats: int
) -> dict[str, Any]:
    """End-to-end runs, each between two short model-only measurements: the e2e/model-only ratio of every
    run compares rates taken minutes apart at most, so load drifting on a shared machine cancels out.

    Also `cpu_ratio`: model-only CPU seconds per clip / end-to-end CPU seconds per clip (decode workers
    included), which is what e2e/model-only comes to on a dedicated CPU-bound machine, whatever else ran.
    Runs where other processes took more than 5% of the machine are flagged (`foreign_cpu_share`);
    `vs_model_clean` is the median over the others.
    """
    model = {"m": extractor.engine.model}
    cpu: dict[str, float] = {}
    before = measure_model(model, batch, num_frames, size, 2, cpu)["m"]
    model_cpu = [cpu["m"]]
    runs = []
    for _ in range(repeats):
        run = measure_e2e(extractor, videos)
        after = measure_model(model, batch, num_frames, size, 2, cpu)["m"]
        model_cpu.append(cpu["m"])
        run["vs_model"] = run["clips_per_s"] / ((before + after) / 2)
        runs.append(run)
        before = after
    summary = dict(runs[0])
    for key in ("clips_per_s", "vs_model", "seconds", "cpu_s_per_clip", "foreign_cpu_share"):
        summary[key] = statistics.median(r[key] for r in runs)
    for key in ("peak_rss_mb", "peak_pss_with_workers_mb"):
        summary[key] = max(r[key] for r in runs)
    clean = [r["vs_model"] for r in runs if r["foreign_cpu_share"] < 0.05]
    summary["vs_model_clean"] = statistics.median(clean) if clean else None
    summary["model_cpu_s_per_clip"] = statistics.median(model_cpu)
    summary["cpu_ratio"] = summary["model_cpu_s_per_clip"] / summary["cpu_s_per_clip"]
    summary["runs"] = runs
    return summary


def flop_input(model: VideoModel, num_frames: int, size: int) -> torch.Tensor:
    """A blank clip (1, 3, T, size, size) on the device of the model's weights (the FLOP counter's input)."""
    device = next(model.parameters()).device
    return torch.zeros(1, 3, num_frames, size, size, device=device)


def gflops_per_clip(model: VideoModel, num_frames: int, size: int) -> float | None:
    """fvcore's count (one multiply-add = one flop) for one clip through forward_features."""
    analysis = flop_analysis(model, num_frames, size)
    return analysis.total() / 1e9 if analysis is not None else None


def flop_analysis(model: VideoModel, num_frames: int, size: int) -> Any:
    """fvcore's FlopCountAnalysis of one clip through forward_features (None without fvcore)."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None

    class Features(torch.nn.Module):
        def __init__(self, inner: VideoModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *pathways: torch.Tensor) -> torch.Tensor:
            return self.inner.forward_features(list(pathways))

    with torch.inference_mode(), unfused(model):  # the tracer cannot record oneDNN's fused conv op
        pathways = model.pathways(flop_input(model, num_frames, size))
        analysis = FlopCountAnalysis(Features(model).eval(), tuple(pathways))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        analysis.total()  # counts now, under inference mode
        return analysis


# --- the machine's own yardstick: fp32 matmul peak, per-stage efficiency, bf16 against fp32 ----------


def measure_matmul_peak(
    size: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """GFLOP/s (2 flops per multiply-add) of a size x size matmul in `dtype` on the current torch threads
    (or the GPU): the best of `repeats`, the machine's peak least disturbed by other load."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def multiply() -> None:
        torch.mm(a, b, out=out)
        if out.is_cuda:
            torch.cuda.synchronize()

    multiply()  # warm-up
    best = min(time_call(multiply) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def stage_profile(clip_model: Any, batch: int, num_frames: int, size: int, repeats: int = 2) -> list[dict]:
    """Time and GFLOP/s (2 flops per multiply-add) of each top-level module of the model on one batch,
    as the configured fast paths run it (hooks around each stage; median of `repeats` batches)."""
    model = clip_model.model
    analysis = flop_analysis(model, num_frames, size)
    macs = analysis.by_module() if analysis is not None else {}
    stages = list(model.named_children())
    spent: dict[str, list[float]] = {name: [] for name, _ in stages}
    started: dict[str, float] = {}
    handles = []
    for name, module in stages:
        handles.append(
            module.register_forward_pre_hook(
                lambda m, a, name=name: started.__setitem__(name, time.perf_counter())
            )
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, name=name: spent[name].append(time.perf_counter() - started[name])
            )
        )
    clips, valid = random_clips(batch, num_frames, size)
    try:
        clip_model(clips, valid)  # warm-up
        for times in spent.values():
            times.clear()
        total = statistics.median(time_call(clip_model, clips, valid) for _ in range(repeats))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, _ in stages:
        if not spent[name]:
            continue  # not called by forward_features (e.g. the classifier)
        seconds = statistics.median(spent[name]) * len(spent[name]) / repeats  # per batch
        gmacs = macs.get(f"inner.{name}", 0) / 1e9 * batch  # flop_analysis wraps the model as `inner`
        rows.append(
            {
                "stage": name,
                "ms": 1000 * seconds,
                "share": seconds / total,
                "gflop": 2 * gmacs,
                "gflop_per_s": 2 * gmacs / seconds if seconds > 0 else 0.0,
            }
        )
    rest = total - sum(r["ms"] for r in rows) / 1000
    rows.append(
        {
            "stage": "(outside stages)",
            "ms": 1000 * rest,
            "share": rest / total,
            "gflop": 0.0,
            "gflop_per_s": 0.0,
        }
    )
    return rows


def fidelity(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Per row of features: the smallest cosine similarity and the largest relative L2 error of got vs want."""
    a = got.reshape(len(got), -1).astype(np.float64)
    b = want.reshape(len(want), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-30)
    relative = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    return {"rows": len(a), "min_cosine": float(cosine.min()), "max_relative_l2": float(relative.max())}


def fp32_twin(clip_model: Any) -> Any:
    """The same prepared model (folded norms, memory layout) without autocast, on a copy of the weights, so
    that its fp32 fast paths (conv + ReLU fusion) do not reach the reduced-precision model."""
    from pipeline.inference import TorchClipModel

    return TorchClipModel(
        copy.deepcopy(clip_model.model),
        device=clip_model.device,
        mean=clip_model.mean,
        std=clip_model.std,
        precision="fp32",
        channels_last=clip_model.channels_last,
        logits=clip_model.logits,
        fold_bn=False,  # already folded
    )


def compare_with_fp32(
    extractor: Any, video: Path, batch: int, num_frames: int, size: int, repeats: int
) -> dict[str, Any]:
    """Speed and fidelity of the configured precision against fp32 in the same process: model-only
    clips/s of both (taking turns), and per-row fidelity of the features of the same video's clips."""
    reduced = extractor.engine.model
    fp32 = fp32_twin(reduced)
    cpu: dict[str, float] = {}
    rates = measure_model({"reduced": reduced, "fp32": fp32}, batch, num_frames, size, repeats, cpu)
    extractor.engine.model = fp32
    try:
        want, _ = extractor.extract(video)
    finally:
        extractor.engine.model = reduced
    got, _ = extractor.extract(video)
    return {
        "precision": reduced.precision,
        "clips_per_s": rates["reduced"],
        "fp32_clips_per_s": rates["fp32"],
        "speedup": rates["reduced"] / rates["fp32"],
        "cpu_s_per_clip": cpu["reduced"],
        "fp32_cpu_s_per_clip": cpu["fp32"],
        "fidelity_video": str(video),
        **fidelity(got, want),
    }


# --- the transfer between decode workers and the model ----------------------------------------------


class SyntheticSource:
    """Ready frames at the model's input size, no decoding: isolates the engine's own plumbing."""

    def __init__(self, frames: int, size: int) -> None:
        self.frames = frames
        self.pool = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        self.info = SourceInfo(Path("synthetic"), "video", size, size, 30.0, frames / 30, frames, "none")

    def __enter__(self) -> SyntheticSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.frames):
            yield Frame(self.pool[i % len(self.pool)], i / 30, i)


@dataclass(frozen=True)
class SyntheticOpener:
    frames: int
    size: int

    def __call__(self, job: VideoJob) -> FrameSource:
        # duck-typed: the engine only enters, iterates and closes a source and reads its `info`
        return cast(FrameSource, SyntheticSource(self.frames, self.size))


def null_model(clips: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, None]:
    return np.zeros((len(clips), 1), np.float32), None


def measure_transfer(
    s: Settings, num_frames: int, size: int, backend: str, clips: int = 120
) -> dict[str, float]:
    """Clips/s and MB/s the engine moves from decode workers to the model with no decoding and no model."""
    frames = clips * s.stride
    engine = Engine(
        null_model,
        SyntheticOpener(frames, size),
        FrameTransform(mode="square", size=(size, size)),
        WindowSpec(num_frames, s.sampling_rate or 1, s.stride),
        fps=30.0,
        batch_size=s.batch_size,
        decode_backend=backend,
        decode_workers=s.decode_workers,
    )
    started = time.perf_counter()
    rows = 0
    for result in engine.run([VideoJob("t", Path("t"), "t")]):
        assert result.features is not None, result.error
        rows += len(result.features)
    seconds = time.perf_counter() - started
    clip_mb = num_frames * size * size * 3 / MB
    return {"clips_per_s": rows / seconds, "mb_per_s": rows * clip_mb / seconds}


# --- videos ------------------------------------------------------------------------------------------


def generated_video(workdir: Path, resolution: tuple[int, int], fps: float, seconds: float) -> Path:
    """A numbered h264 test video (pipeline.synth), cached in workdir; longer ones loop a 1-minute one."""
    width, height = resolution
    path = workdir / f"synth_{width}x{height}_{fps:g}fps_{seconds:g}s.mp4"
    if path.exists():
        return path
    from pipeline import synth

    workdir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.mp4")
    if seconds <= 60:
        log.info("writing %s", path.name)
        synth.write_video(partial, size=(width, height), fps=fps, seconds=seconds)
    else:
        base = generated_video(workdir, resolution, fps, 60.0)
        loop_video(base, partial, int(round(seconds / 60)))
    partial.rename(path)
    return path


def loop_video(source: Path, target: Path, copies: int) -> None:
    """target = source repeated `copies` times, by remuxing packets (no re-encoding)."""
    import av

    log.info("writing %s (%d copies of %s)", target.name, copies, source.name)
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream_from_template(stream_in)
        span = None
        for copy in range(copies):
            src.seek(0)
            last = 0
            for packet in src.demux(stream_in):
                if packet.pts is None:
                    continue
                if span is None and copy == 0:
                    last = max(last, packet.pts + (packet.duration or 0))
                offset = copy * (span or 0)
                packet.pts += offset
                packet.dts = packet.dts + offset if packet.dts is not None else None
                packet.stream = stream_out
                dst.mux(packet)
            if span is None:
                span = last


# --- reports -----------------------------------------------------------------------------------------


def make_extractor(s: Settings, **extra: Any) -> Any:
    from pipeline.api import FeatureExtractor

    settings: dict[str, Any] = {
        "stride": s.stride,
        "fps": s.fps,
        "batch_size": s.batch_size,
        "device": s.device,
        "precision": s.precision,
        "channels_last": s.channels_last,
        "compile": s.compile,
        "decode_workers": s.decode_workers,
        "decode_backend": s.decode_backend,
        "data.resize.backend": s.resize_backend,
        "reuse_memory": s.reuse_memory,
        **extra,
    }
    if s.num_frames:
        settings["num_frames"] = s.num_frames
    if s.sampling_rate:
        settings["sampling_rate"] = s.sampling_rate
    if s.size:
        settings["data.resize.size"] = [s.size, s.size]
    return FeatureExtractor(s.model, checkpoint="random", **settings)


def plain_model(extractor: Any) -> Any:
    """The same architecture as plain fp32 NCDHW (no fast path), on the same device."""
    from pipeline.inference import TorchClipModel
    from pipeline.models.registry import build_model

    c = extractor.config
    model = build_model(c.model.name, feature_layer=c.model.feature_layer)
    return TorchClipModel(
        model,
        device=extractor.engine.model.device,
        mean=c.model.mean,
        std=c.model.std,
        precision="fp32",
        channels_last=False,
        fold_bn=False,
    )


def bench_main(
    s: Settings,
    videos: list[Path],
    *,
    decode_frames: int,
    e2e_repeats: int = 3,
    plain: bool = True,
    transfer: bool = True,
    node_cpus: int | None = None,
    fidelity_video: Path | None = None,
    layers: bool = False,
) -> dict[str, Any]:
    """Model-only, decode-only, end-to-end, memory, GFLOPs and transfer for one setting (`layers`: and the
    per-conv roofline profile).

    The plain baseline is measured first, before the configured extractor exists: building that one
    applies `hardware.reuse_memory`, a process-wide allocator switch, and the baseline is what a plain
    PyTorch script gets (NCDHW, fp32, unfolded batch norms, glibc's default allocator).
    """
    plain_rate = None
    if plain:
        baseline = make_extractor(replace(s, reuse_memory=False))
        c = baseline.config
        models = {"plain": plain_model(baseline)}
        rates = measure_model(models, s.batch_size, c.data.num_frames, c.data.resize.size[0], s.repeats)
        plain_rate = rates["plain"]
        del baseline, models
    fx = make_extractor(s)
    c = fx.config
    T, size = c.data.num_frames, c.data.resize.size[0]
    report: dict[str, Any] = {
        "settings": asdict(s),
        "num_frames": T,
        "input_size": size,
        "fast_paths": fx.engine.model.describe(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "cpus": usable_cpus(),
        "videos": [str(v) for v in videos],
    }
    report["gflops_per_clip"] = gflops_per_clip(fx.engine.model.model, T, size)
    report["model_clips_per_s"] = measure_model({"m": fx.engine.model}, s.batch_size, T, size, s.repeats)["m"]
    if plain_rate is not None:
        report["plain_fp32_ncdhw_clips_per_s"] = plain_rate
        report["fast_path_speedup"] = report["model_clips_per_s"] / plain_rate
    report.update(efficiency(fx.engine.model, report, s.batch_size, T, size))
    if s.precision != "fp32":
        report["vs_fp32"] = compare_with_fp32(
            fx, fidelity_video or videos[0], s.batch_size, T, size, max(2, s.repeats // 2)
        )
    decode: dict[str, Any] = {}
    first = videos[0]
    for backend in ("torch", "ffmpeg"):
        transform = FrameTransform(mode="square", size=(size, size), backend=backend)
        resize = transform.decoder_resize
        assert not callable(resize), "square mode: the decoder gets a fixed (w, h)"
        opener = SourceOpener(fps=c.data.fps, resize=resize)
        cpu: dict[str, float] = {}
        decode[f"{backend}_resize_frames_per_s"] = measure_decode(
            first, opener, transform, decode_frames, max(2, s.repeats // 2), cpu
        )
        decode[f"{backend}_resize_one_thread_frames_per_s"] = measure_decode(  # one worker on one CPU
            first, replace(opener, threads=1), transform, decode_frames, max(2, s.repeats // 2)
        )
        decode[f"{backend}_resize_cpu_s_per_frame"] = cpu["cpu_s_per_frame"]
    cli = measure_ffmpeg_cli(first, size, decode_frames, max(2, s.repeats // 2))
    decode["ffmpeg_cli_frames_per_s"] = cli
    if cli:
        for backend in ("torch", "ffmpeg"):
            decode[f"{backend}_resize_vs_cli"] = decode[f"{backend}_resize_frames_per_s"] / cli
    report["decode"] = decode
    report["e2e"] = measure_e2e_interleaved(fx, videos, s.batch_size, T, size, e2e_repeats)
    report["e2e_vs_model"] = report["e2e"]["vs_model"]
    report["peak_rss_mb_process_lifetime"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["bottleneck"] = bottleneck(report, c, first, fx.engine.decode_workers)
    report["node"] = node_decode_plan(report, c, first, s.device, node_cpus or usable_cpus())
    report["cpu_budget"] = cpu_budget(report, c)
    if transfer:
        report["transfer"] = {b: measure_transfer(s, T, size, b) for b in ("process", "thread")}
    if layers and not fx.engine.model.compiled:  # last: its allocations would stay in the reused heap
        report["layers"] = layer_profile(fx.engine.model, s.batch_size, T, size, report["peak_gflop_s"])
    return report


def efficiency(
    clip_model: Any, report: dict[str, Any], batch: int, num_frames: int, size: int
) -> dict[str, Any]:
    """Achieved GFLOP/s of the model beside this machine's fp32 matmul peak (and the bf16/fp16 one for a
    reduced precision: efficiency is against the run's own precision), and the per-stage profile."""
    device = clip_model.device.type
    out: dict[str, Any] = {"matmul_peak_gflop_s": measure_matmul_peak(device=device)}
    out["peak_gflop_s"] = out["matmul_peak_gflop_s"]
    if clip_model.dtype is not None:  # the precision's own peak: bf16 on AMX is several times fp32's
        out["peak_gflop_s"] = out[f"{clip_model.precision}_matmul_peak_gflop_s"] = measure_matmul_peak(
            dtype=clip_model.dtype, device=device
        )
    gmacs = report.get("gflops_per_clip")
    if gmacs:
        out["achieved_gflop_s"] = 2 * gmacs * report["model_clips_per_s"]
        out["efficiency_vs_peak"] = out["achieved_gflop_s"] / out["peak_gflop_s"]
    if not getattr(clip_model, "compiled", False):  # a compiled graph runs no module hooks
        out["stages"] = stage_profile(clip_model, batch, num_frames, size)
    again = measure_matmul_peak(dtype=clip_model.dtype or torch.float32, device=device)
    if again > out["peak_gflop_s"]:  # measured before and after the profile: the better is the peak
        for key in [k for k in out if k.endswith("matmul_peak_gflop_s")][-1:]:
            out[key] = again
        out["peak_gflop_s"] = again
        if "achieved_gflop_s" in out:
            out["efficiency_vs_peak"] = out["achieved_gflop_s"] / again
    return out


def frames_per_clip(c: Any, video: Path) -> float:
    """Source frames decoded per new clip: the stride, in source frames (fps resampling included)."""
    from pipeline.io import probe

    native = probe(video).native_fps or 30.0
    return c.data.stride * native / (c.data.fps or native)


def cpu_budget(report: dict[str, Any], c: Any) -> dict[str, Any]:
    """End-to-end CPU seconds per clip against the sum of its parts measured alone (model-only +
    decode-only): what the hand-over, the batching and threads competing for the cores cost on top."""
    backend = c.data.resize.backend.value
    decode = report["decode"][f"{backend}_resize_cpu_s_per_frame"] * frames_per_clip(
        c, Path(report["videos"][0])
    )
    model = report["e2e"]["model_cpu_s_per_clip"]
    e2e = report["e2e"]["cpu_s_per_clip"]
    return {
        "model_cpu_s_per_clip": model,
        "decode_cpu_s_per_clip": decode,
        "e2e_cpu_s_per_clip": e2e,
        "e2e_vs_parts": e2e / (model + decode),
    }


def bottleneck(report: dict[str, Any], c: Any, video: Path, workers: int) -> dict[str, Any]:
    """Which side limits the run: decode capacity in clips/s vs the model's clips/s (measured rates)."""
    per_clip = frames_per_clip(c, video)
    backend = c.data.resize.backend.value
    decode_fps = report["decode"][f"{backend}_resize_frames_per_s"]
    capacity = decode_fps * workers / per_clip
    model = report["model_clips_per_s"]
    side = "decode" if capacity < model else "model"
    return {
        "decode_capacity_clips_per_s": capacity,
        "model_clips_per_s": model,
        "limit": side,
        "note": f"{workers} decode worker(s) at {decode_fps:.0f} frames/s feed "
        f"{capacity:.2f} clips/s; the model takes {model:.2f}: the {side} is the bottleneck",
    }


def decode_workers_needed(
    model_clips_per_s: float, worker_frames_per_s: float, frames_per_clip: float, cpus: int
) -> dict[str, Any]:
    """Decode workers (one CPU, one FFmpeg thread each) that keep the model busy, and whether the node
    has them: model clips/s over one worker's clips/s; one CPU stays with the process that feeds the model.
    """
    worker_clips_per_s = worker_frames_per_s / frames_per_clip
    needed = max(1, math.ceil(model_clips_per_s / worker_clips_per_s)) if worker_clips_per_s > 0 else None
    spare = max(1, cpus - 1)
    enough = needed is not None and needed <= spare
    reachable = min(model_clips_per_s, spare * worker_clips_per_s)
    return {
        "model_clips_per_s": model_clips_per_s,
        "decode_clips_per_s_per_worker": worker_clips_per_s,
        "decode_workers_needed": needed,
        "cpus": cpus,
        "decode_workers_available": spare,
        "enough_cpus": enough,
        "expected_clips_per_s": reachable,
        "model_busy_share": reachable / model_clips_per_s if model_clips_per_s > 0 else None,
    }


def node_decode_plan(report: dict[str, Any], c: Any, video: Path, device: str, cpus: int) -> dict[str, Any]:
    """For this node (its usable CPUs, its GPU): the decode workers that keep the model busy, from the
    model's clips/s and one single-threaded worker's decode rate, both measured in this run."""
    from pipeline.io import probe

    native = probe(video).native_fps or 30.0
    frames_per_clip = c.data.stride * native / (c.data.fps or native)  # source frames decoded per new clip
    backend = c.data.resize.backend.value
    worker_fps = report["decode"][f"{backend}_resize_one_thread_frames_per_s"]
    plan = decode_workers_needed(report["model_clips_per_s"], worker_fps, frames_per_clip, cpus)
    gpu = torch.cuda.get_device_name(torch.cuda.current_device()) if device == "cuda" else None
    plan.update(device=device, gpu=gpu, decode_frames_per_s_per_worker=worker_fps)
    needed = plan["decode_workers_needed"]
    plan["note"] = (
        f"the model takes {plan['model_clips_per_s']:.1f} clips/s; one decode worker (1 CPU) feeds "
        f"{plan['decode_clips_per_s_per_worker']:.2f}: {needed} worker(s) keep it busy, this node has "
        f"{plan['decode_workers_available']} to spare ({plan['cpus']} CPUs) -> about "
        f"{plan['expected_clips_per_s']:.1f} clips/s"
    )
    return plan


def bench_all_models(
    s: Settings, fidelity_video: Path | None = None, names: list[str] | None = None
) -> list[dict[str, Any]]:
    """Model-only clips/s (configured fast paths) and GFLOPs per registered model at its own setting;
    with a reduced precision also its speed-up and fidelity against fp32 (`compare_with_fp32`)."""
    from pipeline.models.registry import get_spec, list_models

    rows = []
    for name in names or list_models():
        spec = get_spec(name)
        one = Settings(
            **{
                **asdict(s),
                "model": name,
                "num_frames": None,
                "sampling_rate": None,
                "size": None,
                "stride": 16,
                "repeats": s.repeats,
            }
        )
        fx = make_extractor(one)
        T, size = fx.config.data.num_frames, fx.config.data.resize.size[0]
        rate = measure_model({"m": fx.engine.model}, s.batch_size, T, size, s.repeats)["m"]
        rows.append(
            {
                "model": name,
                "arch": spec.arch,
                "num_frames": T,
                "sampling_rate": fx.config.data.sampling_rate,
                "input_size": size,
                "gflops_per_clip": gflops_per_clip(fx.engine.model.model, T, size),
                "clips_per_s": rate,
                "batch_size": s.batch_size,
                "device": s.device,
            }
        )
        if fidelity_video is not None:
            rows[-1]["vs_fp32"] = compare_with_fp32(fx, fidelity_video, s.batch_size, T, size, s.repeats)
        log.info("%s: %.3f clips/s", name, rate)
        del fx
    return rows


def bench_rss(s: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end peak memory on a 1-minute and an M-minute video, each in a fresh process.

    The peak includes one batch's activations, so the 1-minute video must fill whole batches too: with
    fewer than 3 batches of clips in it the comparison is refused (use a smaller --stride).
    """
    fps = s.fps or args.video_fps
    short_clips = -(-int(60 * fps) // s.stride)
    if short_clips < 3 * s.batch_size:
        raise SystemExit(
            f"--minutes: a 1-minute video gives {short_clips} clips at stride {s.stride}, fewer than 3 batches of "
            f"{s.batch_size}; peak memory would compare different batch sizes (use --stride {int(20 * fps) // s.batch_size} or less)"
        )
    out: dict[str, Any] = {"resolution": "x".join(map(str, args.resolution)), "video_fps": args.video_fps}
    for key, minutes in (("short", 1.0), ("long", args.minutes)):
        video = generated_video(args.workdir, args.resolution, args.video_fps, 60.0 * minutes)
        command = [
            sys.executable,
            "-m",
            "pipeline.benchmark",
            "--probe-e2e",
            "--video",
            str(video),
            "--json",
            *settings_args(s),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"e2e probe failed: {done.stderr.strip().splitlines()[-1:]}")
        out[key] = {"minutes": minutes, **json.loads(done.stdout)}
    short, long = out["short"], out["long"]
    out["rss_ratio"] = long["peak_rss_mb_process_lifetime"] / short["peak_rss_mb_process_lifetime"]
    out["pss_ratio"] = long["e2e"]["peak_pss_with_workers_mb"] / short["e2e"]["peak_pss_with_workers_mb"]
    return out


def settings_args(s: Settings) -> list[str]:
    """Command-line flags that reproduce a Settings."""
    flags = [
        "--model",
        s.model,
        "--stride",
        str(s.stride),
        "--batch-size",
        str(s.batch_size),
        "--device",
        s.device,
        "--precision",
        s.precision,
        "--decode-workers",
        str(s.decode_workers),
        "--decode-backend",
        s.decode_backend,
        "--resize-backend",
        s.resize_backend,
        "--reuse-memory",
        "on" if s.reuse_memory else "off",
        "--repeats",
        str(s.repeats),
    ]
    for flag, value in (
        ("--num-frames", s.num_frames),
        ("--sampling-rate", s.sampling_rate),
        ("--fps", s.fps),
        ("--size", s.size),
    ):
        if value is not None:
            flags += [flag, str(value)]
    if s.channels_last is not None:
        flags += ["--channels-last", "on" if s.channels_last else "off"]
    if s.compile:
        flags.append("--compile")
    return flags


def print_report(report: dict[str, Any]) -> None:
    """Human-readable summary of bench_main's report."""
    s = report["settings"]
    fp = report["fast_paths"]
    print(
        f"model {s['model']}: T={report['num_frames']} tau={s['sampling_rate']} stride={s['stride']} "
        f"fps={s['fps']} input {report['input_size']}x{report['input_size']}, batch {s['batch_size']}, "
        f"{fp['device']} {fp['precision']} channels_last={fp['channels_last']} compiled={fp['compiled']}, "
        f"{report['torch_threads']} torch threads (OMP_WAIT_POLICY={report['omp_wait_policy']}, "
        f"GOMP_SPINCOUNT={report['gomp_spincount']}) on "
        f"{report['cpus']} CPUs"
    )
    if report.get("gflops_per_clip"):
        print(f"  GFLOPs/clip (fvcore, multiply-add = 1): {report['gflops_per_clip']:.3g}")
    line = f"  model-only:  {report['model_clips_per_s']:.3f} clips/s (median of {s['repeats']})"
    if "plain_fp32_ncdhw_clips_per_s" in report:
        line += (
            f"; plain fp32 NCDHW {report['plain_fp32_ncdhw_clips_per_s']:.3f} "
            f"-> fast paths x{report['fast_path_speedup']:.2f}"
        )
    print(line)
    print_efficiency(report)
    d = report["decode"]
    line = (
        f"  decode-only: {d['torch_resize_frames_per_s']:.0f} frames/s (torch resize), "
        f"{d['ffmpeg_resize_frames_per_s']:.0f} frames/s (ffmpeg resize)"
    )
    if d.get("ffmpeg_cli_frames_per_s"):
        line += (
            f"; ffmpeg CLI {d['ffmpeg_cli_frames_per_s']:.0f} -> x{d['torch_resize_vs_cli']:.2f} / "
            f"x{d['ffmpeg_resize_vs_cli']:.2f} of the CLI"
        )
    else:
        line += "; no ffmpeg CLI to compare with"
    print(line)
    e = report["e2e"]
    print(
        f"  end-to-end:  {e['clips_per_s']:.3f} clips/s ({e['clips']} clips in {e['seconds']:.0f} s, median of "
        f"{len(e['runs'])}) -> e2e/model-only {report['e2e_vs_model']:.2f} (each run vs model-only around it)"
    )
    clean = f"{e['vs_model_clean']:.2f}" if e["vs_model_clean"] is not None else "none"
    print(
        f"               CPU s/clip: model-only {e['model_cpu_s_per_clip']:.2f}, e2e {e['cpu_s_per_clip']:.2f} "
        f"(with decode) -> ratio {e['cpu_ratio']:.2f}; other processes took {100 * e['foreign_cpu_share']:.0f}% "
        f"of the machine (runs under 5%: e2e/model-only {clean})"
    )
    print(
        f"  memory:      peak RSS {e['peak_rss_mb']:.0f} MB during e2e (process lifetime "
        f"{report['peak_rss_mb_process_lifetime']:.0f} MB); with decode workers {e['peak_pss_with_workers_mb']:.0f} "
        "MB PSS"
    )
    b = report["cpu_budget"]
    print(
        f"               CPU s/clip e2e {b['e2e_cpu_s_per_clip']:.3f} vs model-only {b['model_cpu_s_per_clip']:.3f} "
        f"+ decode-only {b['decode_cpu_s_per_clip']:.3f} -> e2e/parts {b['e2e_vs_parts']:.2f}"
    )
    print(f"  bottleneck:  {report['bottleneck']['note']}")
    print(f"  this node:   {report['node']['note']}")
    for backend, t in (report.get("transfer") or {}).items():
        print(
            f"  transfer ({backend} workers, no decode, no model): {t['clips_per_s']:.0f} clips/s = "
            f"{t['mb_per_s']:.0f} MB/s"
        )


def print_efficiency(report: dict[str, Any]) -> None:
    """The efficiency lines: GFLOP/s vs the matmul peak, per stage, and the reduced precision vs fp32."""
    peak = report["peak_gflop_s"]
    own = [f"{k.split('_')[0]} {v:.0f}" for k, v in report.items() if k.endswith("_matmul_peak_gflop_s")]
    if "achieved_gflop_s" in report:
        print(
            f"  efficiency:  {report['achieved_gflop_s']:.0f} GFLOP/s achieved (2 flops per multiply-add) vs "
            f"matmul peak measured now (fp32 {report['matmul_peak_gflop_s']:.0f}"
            + "".join(f", {text}" for text in own)
            + f" GFLOP/s) = {100 * report['efficiency_vs_peak']:.0f}% of the run's own precision"
        )
    for row in report.get("stages") or []:
        print(
            f"    {row['stage']:18s} {row['ms']:8.1f} ms/batch {100 * row['share']:5.1f}%  "
            f"{row['gflop']:7.1f} GFLOP  {row['gflop_per_s']:6.0f} GFLOP/s ({100 * row['gflop_per_s'] / peak:3.0f}% of peak)"
        )
    if report.get("layers"):
        print_layer_profile(report["layers"])
    v = report.get("vs_fp32")
    if v:
        print(
            f"  vs fp32:     {v['precision']} {v['clips_per_s']:.3f} vs fp32 {v['fp32_clips_per_s']:.3f} clips/s "
            f"model-only -> x{v['speedup']:.2f}; fidelity over {v['rows']} rows of the same clips: "
            f"min cosine {v['min_cosine']:.6f}, max relative L2 {v['max_relative_l2']:.2e}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="slowfast_r50", help="registered model name")
    p.add_argument("--all-models", action="store_true", help="model-only clips/s and GFLOPs of every model")
    p.add_argument("--models", nargs="+", help="with --all-models: only these models")
    p.add_argument("--video", type=Path, help="a video file (default: a generated one)")
    p.add_argument("--resolution", default="1920x1080", help="generated video WxH")
    p.add_argument("--video-fps", type=float, default=30.0, help="generated video frame rate")
    p.add_argument("--seconds", type=float, help="generated video length (default 20; --vs-seed: 30)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pipeline-benchmark",
        help="where generated videos are cached",
    )
    p.add_argument("--num-frames", type=int, default=32, help="T (0: the model's)")
    p.add_argument("--sampling-rate", type=int, default=1, help="tau (0: the model's)")
    p.add_argument("--stride", type=int, help="frames between clips (default 16; --vs-seed: 32)")
    p.add_argument("--fps", type=float, default=30.0, help="frames/s the model sees (0: native)")
    p.add_argument("--size", type=int, default=0, help="model input size (0: the model's crop size)")
    p.add_argument("--batch-size", type=int, help="default 4; --vs-seed: hardware=cpu's")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--decode-workers", type=int, default=1, help="0: one per usable CPU")
    p.add_argument("--decode-backend", default="process", choices=["process", "thread"])
    p.add_argument("--resize-backend", default="torch", choices=["torch", "ffmpeg"])
    p.add_argument(
        "--reuse-memory", default="on", choices=["on", "off"], help="hardware.reuse_memory (pipeline.memory)"
    )
    p.add_argument(
        "--node-cpus",
        type=int,
        default=0,
        help="CPUs of the node to plan decode workers for (0: usable here)",
    )
    p.add_argument(
        "--repeats", type=int, help="repeated measurements, medians reported (default 5; --vs-seed: 2)"
    )
    p.add_argument("--decode-frames", type=int, default=300, help="frames per decode-only measurement")
    p.add_argument(
        "--e2e-repeats", type=int, default=3, help="end-to-end runs (each between model-only checks)"
    )
    p.add_argument(
        "--many-short", type=int, default=0, metavar="N", help="N generated videos of 2 s at 320x240"
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=0,
        metavar="M",
        help="peak memory on a 1-minute vs an M-minute video (fresh process each)",
    )
    p.add_argument(
        "--vs-seed",
        action="store_true",
        help="whole-process time of the old extractor's algorithm (pipeline.seed_baseline) vs pipeline.extract",
    )
    p.add_argument(
        "--seed-impl",
        default="auto",
        choices=["auto", "pyslowfast", "ours"],
        help="with --vs-seed: the seed's model (auto: PySlowFast 1.0's when importable)",
    )
    p.add_argument("--probe-e2e", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layers", action="store_true", help="time every conv alone against its roofline bound")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = p.parse_args(argv)
    args.resolution = tuple(int(v) for v in args.resolution.lower().split("x"))
    defaults: dict[str, Any] = {"seconds": 20.0, "stride": 16, "batch_size": 4, "repeats": 5}
    if args.vs_seed:
        from pipeline.benchmark_seed import SEED_DEFAULTS

        defaults = {**SEED_DEFAULTS, "batch_size": None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(
        model=args.model,
        num_frames=args.num_frames or None,
        sampling_rate=args.sampling_rate or None,
        stride=args.stride,
        fps=args.fps or None,
        size=args.size or None,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
        compile=args.compile,
        decode_workers=args.decode_workers,
        decode_backend=args.decode_backend,
        resize_backend=args.resize_backend,
        reuse_memory=args.reuse_memory == "on",
        repeats=args.repeats,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    s = settings_of(args)
    report: dict[str, Any]
    if args.probe_e2e:
        fx = make_extractor(s)
        report = {
            "e2e": measure_e2e(fx, [args.video]),
            "peak_rss_mb_process_lifetime": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    elif args.vs_seed:
        from pipeline.benchmark_seed import bench_vs_seed, print_seed_report

        report = bench_vs_seed(
            args.model,
            args.video,
            workdir=args.workdir,
            resolution=args.resolution,
            video_fps=args.video_fps,
            seconds=args.seconds,
            num_frames=args.num_frames or None,
            sampling_rate=args.sampling_rate or None,
            stride=args.stride,
            size=args.size or None,
            batch_size=args.batch_size,
            repeats=args.repeats,
            seed_impl=args.seed_impl,
        )
        if not args.json:
            print_seed_report(report)
    elif args.all_models:
        report = {"models": bench_all_models(s, fidelity_video_of(s, args), args.models)}
        if not args.json:
            for row in report["models"]:
                line = (
                    f"{row['model']:22s} {row['num_frames']:3d}x{row['sampling_rate']:<2d} {row['input_size']:4d}px  "
                    f"{row['gflops_per_clip'] or 0:7.1f} GFLOPs  {row['clips_per_s']:7.3f} clips/s"
                )
                if v := row.get("vs_fp32"):
                    line += (
                        f"  fp32 {v['fp32_clips_per_s']:.3f} -> x{v['speedup']:.2f}  min cosine "
                        f"{v['min_cosine']:.6f}  max rel L2 {v['max_relative_l2']:.1e} ({v['rows']} rows)"
                    )
                print(line)
    elif args.minutes:
        report = bench_rss(s, args)
        if not args.json:
            for key in ("short", "long"):
                r = report[key]
                print(
                    f"{r['minutes']:g} min: peak RSS {r['peak_rss_mb_process_lifetime']:.0f} MB, with workers "
                    f"{r['e2e']['peak_pss_with_workers_mb']:.0f} MB PSS, {r['e2e']['clips']} clips in "
                    f"{r['e2e']['seconds']:.0f} s"
                )
            print(
                f"RSS({args.minutes:g} min)/RSS(1 min) = {report['rss_ratio']:.3f}; "
                f"PSS ratio {report['pss_ratio']:.3f}"
            )
    else:
        if args.many_short:
            videos = [generated_video(args.workdir / "short", (320, 240), args.video_fps, 2.0)]
            videos = [
                link_copy(videos[0], args.workdir / "short" / f"v{i:04d}.mp4") for i in range(args.many_short)
            ]
        else:
            videos = [
                args.video or generated_video(args.workdir, args.resolution, args.video_fps, args.seconds)
            ]
        report = bench_main(
            s,
            videos,
            decode_frames=args.decode_frames,
            e2e_repeats=args.e2e_repeats,
            node_cpus=args.node_cpus or None,
            fidelity_video=fidelity_video_of(s, args),
            layers=args.layers,
        )
        if not args.json:
            print_report(report)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    return 0


def fidelity_video_of(s: Settings, args: argparse.Namespace) -> Path | None:
    """The video whose clips compare a reduced precision with fp32: 10 s of 640x360 (None for fp32)."""
    if s.precision == "fp32":
        return None
    return generated_video(args.workdir, (640, 360), args.video_fps, 10.0)


def link_copy(source: Path, target: Path) -> Path:
    """target as a hard link of source (a separate file name, same bytes)."""
    if not target.exists():
        os.link(source, target)
    return target


if __name__ == "__main__":
    sys.exit(exit_status(main, "python -m pipeline.benchmark"))
