"""The prepared GPU check: one command that proves the GPU path and measures it, written as one JSON report.

    python -m pipeline.gpu_check --out gpu_check.json              # on a GPU node (scripts/gpu_check.sh)
    python -m pipeline.gpu_check --device cpu --quick --out x.json  # the same logic on the CPU (tests)

Sections (each with `ok`; the report's `ok` is all of them): `environment`; `cuda_tests` (the tests that
skip without a GPU, run here); `cpu_vs_device` (fp32 features of one model per family on the CPU and on
the device, TF32 off, within 1e-4 relative L2); `low_precision` (bf16 / fp16 cosine and relative L2 vs
fp32 on the device); `e2e` (process decode workers on a generated 1080p video, then the same with one
worker killed mid-video); `compile` (end to end with torch.compile vs without); `benchmark` (model-only
clips/s of every registered model at batch 16, fp32 and bf16, channels-last on and off); `decode_plan`
(the decode workers each model needs on this node). A time budget keeps the whole run within about four
minutes: what did not fit is listed as skipped, never silently dropped. The report is rewritten after
every section, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.api import FeatureExtractor
from pipeline.bench.decode import decode_workers_needed, measure_decode
from pipeline.bench.media import generated_video, link_copy
from pipeline.decode import SourceOpener
from pipeline.errors import describe_error
from pipeline.hardware import usable_cpus
from pipeline.inference import TorchClipModel
from pipeline.models.registry import build_model, get_spec, list_models
from pipeline.transforms import FrameTransform

log = logging.getLogger(__name__)

SECTIONS = (
    "environment",
    "cuda_tests",
    "cpu_vs_device",
    "low_precision",
    "e2e",
    "benchmark",
    "decode_plan",
    "compile",
)
FP32_TOLERANCE = 1e-4  # relative L2, CPU vs CUDA with TF32 off
LOW_PRECISION_COSINE = 0.99  # lowest per-clip cosine of bf16 / fp16 features vs fp32
# Convolutional: any input size >= 64 works.
SMALL_INPUT_ARCHS = ("slowfast", "slow", "c2d", "i3d", "x3d", "i3d_inception")
FRAMES_PER_CLIP = 16  # decode plan: a new clip every 16 source frames (stride 16 at the video's rate)
REPO = Path(__file__).resolve().parents[2]
NEEDS_CUDA = re.compile(r"\bnot\s+torch\.cuda\.is_available\(\)")


@dataclass
class Options:
    """What the check runs: the device, quick mode (tiny models and inputs), the time budget, the report."""

    device: str = "cuda"
    quick: bool = False
    budget_s: float = 250.0
    out: Path = Path("gpu_check.json")
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pipeline-gpu-check")
    batch_size: int = 16
    tests_dir: Path = REPO / "tests"
    only: str | None = None  # one section in this process (the compile section's child process)

    @property
    def e2e_model(self) -> str:
        return "slowfast_tiny" if self.quick else "slowfast_r50"

    @property
    def resolution(self) -> tuple[int, int]:
        return (320, 240) if self.quick else (1920, 1080)


class Budget:
    """Seconds left of the run's time budget."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


# --- helpers ---------------------------------------------------------------------------------------


def relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    """|got - want| / |want| in float64."""
    want64 = want.astype(np.float64)
    scale = max(float(np.linalg.norm(want64)), 1e-30)
    return float(np.linalg.norm(got.astype(np.float64) - want64)) / scale


def min_cosine(got: np.ndarray, want: np.ndarray) -> float:
    """The lowest cosine similarity between matching rows."""
    a, b = got.astype(np.float64).reshape(len(got), -1), want.astype(np.float64).reshape(len(want), -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(cos.min())


def random_clips(rows: int, num_frames: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic uint8 clips (rows, T, size, size, 3) and all-valid masks."""
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 256, (rows, num_frames, size, size, 3), dtype=np.uint8)
    return clips, np.ones((rows, num_frames), dtype=bool)


def family_models(quick: bool) -> dict[str, str]:
    """One model per family (arch, plus non-local): the smallest registered one ('_tiny' first).

    Only models of RGB clips: an optical-flow stream needs flow input, which these checks do not make.
    """
    families: dict[str, list[str]] = {}
    for name in list_models():
        if get_spec(name).input_channels != 3:
            continue
        arch = get_spec(name).arch
        family = f"{arch}_nln" if "nln" in name else arch
        families.setdefault(family, []).append(name)
    chosen = {}
    for family, names in sorted(families.items()):
        tiny = [n for n in names if n.endswith("_tiny")]
        chosen[family] = tiny[0] if tiny else min(names, key=lambda n: (get_spec(n).crop_size, n))
    if quick:
        chosen = {f: n for f, n in chosen.items() if n.endswith("_tiny")} or dict(list(chosen.items())[:1])
    return chosen


def model_input(name: str, small: bool) -> tuple[int, int]:
    """(T, size) for a model: its own T; 64 px for convolutional families when `small`, else its crop."""
    spec = get_spec(name)
    size = 64 if small and spec.arch in SMALL_INPUT_ARCHS else spec.crop_size
    return spec.num_frames, size


def clip_model(network: Any, device: str, **kwargs: Any) -> Any:
    """A TorchClipModel of `network` (a copy) on `device` with the model's own mean and std."""
    spec = network.spec
    return TorchClipModel(
        copy.deepcopy(network),
        device=torch.device(device),
        mean=list(spec.mean),
        std=list(spec.std),
        **kwargs,
    )


def built(name: str) -> Any:
    """The registry model with seeded random weights, eval mode, on the CPU."""
    torch.manual_seed(0)
    return build_model(name).eval()


@contextmanager
def no_tf32() -> Iterator[None]:
    """Plain fp32 matmuls and convolutions on the GPU (TF32 keeps ~10 mantissa bits)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- sections --------------------------------------------------------------------------------------


def check_environment(opts: Options) -> dict[str, Any]:
    """Versions, the device and its abilities."""
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpus": usable_cpus(),
        "device": opts.device,
        "quick": opts.quick,
    }
    if opts.device == "cuda":
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        out.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
            cudnn=torch.backends.cudnn.version(),
        )
    out["ok"] = opts.device != "cuda" or bool(out.get("gpu"))
    return out


def cuda_test_ids(tests_dir: Path) -> list[str]:
    """Test functions that skip without a GPU: `not torch.cuda.is_available()` in their decorators or body
    (tests that skip *with* a GPU say `torch.cuda.is_available()` without the `not`)."""
    ids = []
    for path in sorted(tests_dir.rglob("test_*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                text = "\n".join(ast.get_source_segment(source, d) or "" for d in node.decorator_list)
                text += ast.get_source_segment(source, node) or ""
                if NEEDS_CUDA.search(text):
                    ids.append(f"{path.relative_to(tests_dir).as_posix()}::{node.name}")
    return ids


def check_cuda_tests(opts: Options, budget: Budget) -> dict[str, Any]:
    """Run the tests that skip without a GPU; on CUDA none may skip or fail."""
    ids = cuda_test_ids(opts.tests_dir)
    out: dict[str, Any] = {"tests": ids}
    if not ids:
        return {**out, "ok": False, "error": f"no CUDA tests found under {opts.tests_dir}"}
    report = opts.workdir / "cuda_tests.xml"
    report.unlink(missing_ok=True)  # a report from an earlier run must not stand in for this one
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}"]
    command += [str(opts.tests_dir / test_id) for test_id in ids]
    timeout = max(10.0, min(120.0, budget.left() / 3))
    try:
        done = subprocess.run(
            command, cwd=opts.tests_dir.parent, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**out, "ok": False, "error": f"pytest took longer than {timeout:.0f} s"}
    out["pytest_tail"] = done.stdout.strip().splitlines()[-3:]
    if not report.is_file():
        return {**out, "ok": False, "error": (done.stderr.strip().splitlines() or ["pytest failed"])[-1]}
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out.update(counts)
    out["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    out["ok"] = done.returncode == 0 and (opts.device != "cuda" or counts["skipped"] == 0)
    return out


def check_cpu_vs_device(opts: Options, budget: Budget) -> dict[str, Any]:
    """fp32 features of one model per family on the CPU and on the device (TF32 off) within 1e-4."""
    rows: dict[str, Any] = {}
    for family, name in family_models(opts.quick).items():
        if budget.left() < 5:
            rows[family] = {"model": name, "skipped": "time budget"}
            continue
        network = built(name)
        T, size = model_input(name, small=True)
        clips, valid = random_clips(2, T, size)
        want = clip_model(network, "cpu")(clips, valid)[0]
        with no_tf32():
            got = clip_model(network, opts.device)(clips, valid)[0]
        error = relative_l2(got, want)
        rows[family] = {"model": name, "input": [T, size], "relative_l2": error, "ok": error < FP32_TOLERANCE}
    return {"families": rows, "tolerance": FP32_TOLERANCE, "ok": all(r.get("ok") for r in rows.values())}


def check_low_precision(opts: Options, budget: Budget) -> dict[str, Any]:
    """bf16 / fp16 autocast features vs fp32 on the device: lowest per-clip cosine and relative L2."""
    rows: dict[str, Any] = {}
    precisions = ["bf16", "fp16"] if opts.device == "cuda" else ["bf16"]
    for family, name in family_models(opts.quick).items():
        if budget.left() < 5:
            rows[family] = {"model": name, "skipped": "time budget"}
            continue
        network = built(name)
        T, size = model_input(name, small=True)
        clips, valid = random_clips(2, T, size)
        want = clip_model(network, opts.device)(clips, valid)[0]
        row: dict[str, Any] = {"model": name}
        for precision in precisions:
            got = clip_model(network, opts.device, precision=precision)(clips, valid)[0]
            cosine = min_cosine(got, want)
            row[precision] = {
                "min_cosine": cosine,
                "relative_l2": relative_l2(got, want),
                "finite": bool(np.isfinite(got).all()),
                "ok": bool(np.isfinite(got).all()) and cosine >= LOW_PRECISION_COSINE,
            }
        if opts.device != "cuda":
            row["fp16"] = {"skipped": "fp16 autocast is for CUDA devices"}
        row["ok"] = all(row[p]["ok"] for p in precisions)
        rows[family] = row
    return {
        "families": rows,
        "min_cosine_required": LOW_PRECISION_COSINE,
        "ok": all(r.get("ok") for r in rows.values()),
    }


def make_videos(opts: Options, count: int = 4, seconds: float = 4.0) -> list[Path]:
    """`count` names for one generated video at the check's resolution (hard links: separate videos)."""
    first = generated_video(opts.workdir, opts.resolution, 30.0, 2.0 if opts.quick else seconds)
    return [link_copy(first, opts.workdir / f"e2e_{i}{first.suffix}") for i in range(count)]


def extractor(opts: Options, **settings: Any) -> Any:
    """A FeatureExtractor of the e2e model with random weights and process decode workers."""
    workers = 1 if opts.quick else max(1, usable_cpus() - 1)
    base: dict[str, Any] = {
        "device": opts.device,
        "batch_size": 2 if opts.quick else opts.batch_size,
        "decode_workers": workers,
        "decode_backend": "process",
        "fps": 30.0,
        "stride": FRAMES_PER_CLIP,
        "queue_size": 64,
    }
    if opts.quick:
        base["num_frames"] = 8
    return FeatureExtractor(opts.e2e_model, checkpoint="random", **{**base, **settings})


def run_videos(fx: Any, videos: list[Path]) -> dict[str, Any]:
    """Run the videos; features per video, failures per video, clips/s."""
    features: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    started = time.perf_counter()
    for result in fx.extract_many(videos):
        if result.ok:
            features[result.job.key] = result.features
        else:
            errors[result.job.key] = result.error or "?"
    seconds = time.perf_counter() - started
    rows = sum(len(f) for f in features.values())
    return {"features": features, "errors": errors, "seconds": seconds, "clips_per_s": rows / seconds}


def kill_a_busy_worker(fx: Any, stop: threading.Event) -> dict[str, Any]:
    """SIGKILL one decode worker that is inside a video, as soon as one is (the OOM killer's way)."""
    while not stop.is_set():
        pool = fx.engine.last_pool
        try:
            workers = list(pool.workers.values()) if pool else []
        except RuntimeError:  # the supervisor changed the dict meanwhile
            workers = []
        pids = [getattr(w.handle, "pid", None) for w in workers if w.job is not None and w.ready]
        for pid in (p for p in pids if p):
            try:
                os.kill(pid, signal.SIGKILL)
                return {"killed_pid": pid}
            except OSError:  # gone meanwhile
                continue
        time.sleep(0.01)
    return {"killed_pid": None}


def check_e2e(opts: Options, budget: Budget) -> dict[str, Any]:
    """Process decode workers on generated videos, then again with one worker killed mid-video."""
    videos = make_videos(opts)
    fx = extractor(opts)
    clean = run_videos(fx, videos)
    out: dict[str, Any] = {
        "model": opts.e2e_model,
        "resolution": "x".join(map(str, opts.resolution)),
        "videos": len(videos),
        "decode_workers": fx.engine.decode_workers,
        "batch_size": fx.config.hardware.batch_size,
        "clean": {
            "ok_videos": len(clean["features"]),
            "clips_per_s": clean["clips_per_s"],
            "seconds": clean["seconds"],
            "errors": clean["errors"],
        },
    }
    fx.engine.last_pool = None  # the killer waits for this run's pool
    stop = threading.Event()
    killed: dict[str, Any] = {}
    killer = threading.Thread(target=lambda: killed.update(kill_a_busy_worker(fx, stop)), daemon=True)
    killer.start()
    try:
        hurt = run_videos(fx, videos)
    finally:
        stop.set()
        killer.join()
    pool = fx.engine.last_pool
    same = [relative_l2(hurt["features"][k], clean["features"][k]) for k in hurt["features"]]
    out["worker_killed"] = {
        **killed,
        "ok_videos": len(hurt["features"]),
        "errors": hurt["errors"],
        "replaced_workers": getattr(pool, "replaced", None),
        "max_relative_l2_vs_clean": max(same) if same else None,
        "seconds": hurt["seconds"],
    }
    failures_ok = all("SIGKILL" in e for e in hurt["errors"].values()) and len(hurt["errors"]) <= 1
    tolerance = 1e-4 if opts.device == "cpu" else 1e-2  # other batch neighbours; TF32 on the GPU
    out["ok"] = (
        len(clean["features"]) == len(videos)
        and not clean["errors"]
        and killed.get("killed_pid") is not None
        and failures_ok
        and len(hurt["features"]) + len(hurt["errors"]) == len(videos)
        and (not same or max(same) < tolerance)
    )
    return out


class CompileChild:
    """`compile_vs_eager` in a child process: started before the benchmark so that compiling (CPU work
    mostly) overlaps it, and stopped when the budget runs out (compilation cannot be interrupted
    in-process)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.out = opts.workdir / "compile_section.json"
        self.log = opts.workdir / "compile_section.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def command(self, seconds: float) -> list[str]:
        """The child's command line: this module's compile section alone, within `seconds`."""
        opts = self.opts
        command = [sys.executable, "-m", "pipeline.gpu_check", "--only", "compile", "--device", opts.device]
        command += ["--out", str(self.out), "--workdir", str(opts.workdir), "--budget-s", f"{seconds:.0f}"]
        return command + (["--quick"] if opts.quick else [])

    def start(self, seconds: float) -> None:
        """Start the child, allowed `seconds` for its whole section."""
        self.out.unlink(missing_ok=True)
        command = self.command(seconds)
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        with self.log.open("wb") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path}
            )
        self.started = time.monotonic()

    def result(self, budget: Budget) -> dict[str, Any]:
        """The child's compile section, or why there is none (stopped at the end of the budget)."""
        if self.process is None:
            return {"skipped": "time budget", "ok": False}
        try:
            self.process.wait(timeout=max(1.0, budget.left()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            spent = time.monotonic() - self.started
            return {"ok": False, "error": f"stopped after {spent:.0f} s at the end of the time budget"}
        if not self.out.is_file():
            lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.is_file() else []
            return {"ok": False, "error": (lines or ["the compile child wrote no report"])[-1]}
        section = json.loads(self.out.read_text()).get("compile", {"ok": False, "error": "no section"})
        return {**section, "beside_the_benchmark": True}


def check_compile(opts: Options, budget: Budget) -> dict[str, Any]:
    """The compile section in a child process, waited for at once."""
    child = CompileChild(opts)
    if budget.left() >= 10:
        child.start(budget.left())
    return child.result(budget)


def compile_vs_eager(opts: Options) -> dict[str, Any]:
    """End to end with torch.compile against eager: features and clips/s (the first run compiles)."""
    videos = make_videos(opts)[:2]
    workers = 1 if opts.quick else 4  # the benchmark runs beside this: a few decode workers suffice
    plain = extractor(opts, decode_workers=workers)
    run_videos(plain, videos)  # warm-up: cuDNN autotuning, as the compiled run gets in its first run
    eager = run_videos(plain, videos)
    fx = extractor(opts, compile=True, decode_workers=workers)
    first = run_videos(fx, videos)
    second = run_videos(fx, videos)
    diffs = [relative_l2(second["features"][k], eager["features"][k]) for k in second["features"]]
    tolerance = 1e-4 if opts.device == "cpu" else 1e-2  # TF32 and fused kernels on the GPU
    return {
        "model": opts.e2e_model,
        "compiled": fx.engine.model.compiled,
        "eager_clips_per_s": eager["clips_per_s"],
        "compiled_first_run_s": first["seconds"],
        "compiled_clips_per_s": second["clips_per_s"],
        "speedup": second["clips_per_s"] / eager["clips_per_s"],
        "max_relative_l2_vs_eager": max(diffs) if diffs else None,
        "errors": {**first["errors"], **second["errors"]},
        "ok": bool(fx.engine.model.compiled)
        and not first["errors"]
        and not second["errors"]
        and bool(diffs)
        and max(diffs) < tolerance,
    }


def measure_clips_per_s(model: Any, clips: np.ndarray, valid: np.ndarray, repeats: int) -> float:
    """Median clips/s over `repeats` calls after one warm-up call (cuDNN autotuning, compilation)."""
    model(clips, valid)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(clips, valid)  # ends with a copy to the host: synchronous
        times.append(time.perf_counter() - started)
    return len(clips) / statistics.median(times)


def benchmark_models(opts: Options) -> dict[str, str]:
    """Every registered model (quick mode: the tiny ones) -> the model measured for it: the first of the
    models with the same network and input (checkpoints of one architecture for other data sets differ
    in their classifier and weights, which do not change the speed of the features)."""
    names = [n for n in list_models() if n.endswith("_tiny") or not opts.quick]
    first: dict[str, str] = {}
    measured_as = {}
    for name in names:
        spec = get_spec(name)
        network = (spec.arch, spec.num_frames, spec.crop_size, spec.alpha, spec.feature_layers[0])
        key = repr((network, sorted(spec.builder_kwargs.items())))
        measured_as[name] = first.setdefault(key, name)
    return measured_as


def check_benchmark(opts: Options, budget: Budget) -> dict[str, Any]:
    """Model-only clips/s of every model at its own input, batch 16, fp32 / bf16 x channels-last on / off.

    Channels-last on (the default) goes first for every model, then off: what the budget cuts is listed.
    """
    batch = 2 if opts.quick else opts.batch_size
    repeats = 2 if opts.quick else 3
    configs = [(p, True) for p in ("fp32", "bf16")] + [(p, False) for p in ("fp32", "bf16")]
    measured_as = benchmark_models(opts)
    rows: dict[str, dict[str, Any]] = {  # measured with RGB clips: optical-flow models are left out
        name: {} for name, same in measured_as.items() if name == same and get_spec(name).input_channels == 3
    }
    networks: dict[str, Any] = {}  # built once per model (random initialisation of a R101 takes a while)
    for precision, channels_last in configs:
        for name, row in rows.items():
            key = f"{precision}_{'channels_last' if channels_last else 'ncdhw'}"
            if budget.left() < 10:
                row[key] = {"skipped": "time budget"}
                continue
            T, size = model_input(name, small=opts.quick)
            if opts.quick:
                T = min(T, 8)
            clips, valid = random_clips(batch, T, size)
            try:
                network = networks.setdefault(name, built(name))
                model = clip_model(network, opts.device, precision=precision, channels_last=channels_last)
                if opts.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                rate = measure_clips_per_s(model, clips, valid, repeats)
                entry: dict[str, Any] = {"clips_per_s": rate, "input": [T, size]}
                if opts.device == "cuda":
                    entry["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                row[key] = entry
                del model
                if opts.device == "cuda":
                    torch.cuda.empty_cache()
            except Exception as error:  # noqa: BLE001 - one model's failure is recorded, the rest go on
                row[key] = {"error": describe_error(error)}
    done = [r for row in rows.values() for r in row.values()]
    return {
        "batch_size": batch,
        "models": rows,
        "same_network_as": {name: same for name, same in measured_as.items() if name != same},
        "measured": sum("clips_per_s" in r for r in done),
        "skipped": sum("skipped" in r for r in done),
        "ok": bool(done) and all("clips_per_s" in r for r in done),
    }


def check_decode_plan(opts: Options, benchmark: dict[str, Any]) -> dict[str, Any]:
    """Per model: decode workers (1 CPU, 1 FFmpeg thread each) that keep it busy at its best measured rate."""
    video = make_videos(opts, count=1)[0]
    size = 64 if opts.quick else 256
    transform = FrameTransform(mode="square", size=(size, size))
    opener = SourceOpener(fps=30.0, resize=(size, size), threads=1)
    worker_fps = measure_decode(video, opener, transform, 60 if opts.quick else 150, 2)
    rows = {}
    for name, row in benchmark.get("models", {}).items():
        rates = [r["clips_per_s"] for r in row.values() if "clips_per_s" in r]
        if rates:
            plan = decode_workers_needed(max(rates), worker_fps, FRAMES_PER_CLIP, usable_cpus())
            rows[name] = {k: plan[k] for k in ("model_clips_per_s", "decode_workers_needed", "enough_cpus")}
    return {
        "video": "x".join(map(str, opts.resolution)),
        "decode_frames_per_s_per_worker": worker_fps,
        "frames_per_clip": FRAMES_PER_CLIP,
        "cpus": usable_cpus(),
        "models": rows,
        "ok": worker_fps > 0 and bool(rows),
    }


# --- the run ---------------------------------------------------------------------------------------


def run_check(opts: Options) -> dict[str, Any]:
    """Every section in turn, the report rewritten after each; a failing section is recorded, not fatal."""
    opts.workdir.mkdir(parents=True, exist_ok=True)
    budget = Budget(opts.budget_s)
    started = time.monotonic()
    report: dict[str, Any] = {"sections": list(SECTIONS), "ok": False}
    compiling = CompileChild(opts)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "environment": lambda: check_environment(opts),
        "cuda_tests": lambda: check_cuda_tests(opts, budget),
        "cpu_vs_device": lambda: check_cpu_vs_device(opts, budget),
        "low_precision": lambda: check_low_precision(opts, budget),
        "e2e": lambda: check_e2e(opts, budget),
        "benchmark": lambda: check_benchmark(opts, budget),
        "decode_plan": lambda: check_decode_plan(opts, report.get("benchmark", {})),
        "compile": lambda: compile_vs_eager(opts) if opts.only else compiling.result(budget),
    }
    sections = [opts.only] if opts.only else list(SECTIONS)
    report["sections"] = sections
    for name in sections:
        if name == "benchmark" and "compile" in sections and not opts.only and budget.left() >= 10:
            compiling.start(budget.left())  # compiles beside the benchmark
        section_started = time.monotonic()
        log.info("gpu_check: %s", name)
        try:
            result = steps[name]()
        except Exception as error:  # noqa: BLE001 - the report says what broke; the other sections run
            log.exception("gpu_check: %s failed", name)
            result = {"ok": False, "error": describe_error(error)}
        result["seconds"] = round(time.monotonic() - section_started, 1)
        report[name] = result
        report["seconds"] = round(time.monotonic() - started, 1)
        write_report(report, opts.out)
    report["failed_sections"] = [name for name in sections if not report[name].get("ok")]
    report["ok"] = not report["failed_sections"]
    write_report(report, opts.out)
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    """The report as JSON (written whole, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(report, indent=1, default=str) + "\n")
    partial.replace(path)


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny models and inputs (CPU tests)")
    parser.add_argument("--budget-s", type=float, default=250.0, help="time for all sections together")
    parser.add_argument("--workdir", type=Path, help="where generated videos go (default: a temp folder)")
    parser.add_argument("--only", choices=SECTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    opts = Options(device=args.device, quick=args.quick, budget_s=args.budget_s, out=args.out, only=args.only)
    if args.workdir:
        opts.workdir = args.workdir
    return opts


def main(argv: list[str] | None = None) -> int:
    """0 when every section passed, 1 when one failed, 2 when the device is not there."""
    opts = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if opts.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible to torch; nothing was checked", file=sys.stderr)
        write_report({"ok": False, "error": "no CUDA GPU visible to torch"}, opts.out)
        return 2
    report = run_check(opts)
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED: ' + ', '.join(report['failed_sections'])}")
    print(f"gpu_check: report in {opts.out} ({report['seconds']:.0f} s)")
    return 0 if report["ok"] else 1
