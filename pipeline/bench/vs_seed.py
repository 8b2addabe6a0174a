"""Whole-process time against the old extractor's algorithm: `python -m pipeline.benchmark --vs-seed`.

Each side runs as its own process from a fresh interpreter, timed from start to exit (imports, model
build, checkpoint load, decoding, inference, writing), on the same video and the same random `.pyth`:
the seed (`python -m pipeline.bench.seed_baseline`, PySlowFast's model when slowfast==1.0 is importable) and
our pipeline (`python -m pipeline.extract` with centred windows, zero padding and the square resize,
everything else default). They take turns; medians are reported, with CPU seconds, peak memory and the
relative L2 between their features (they compute the same thing).
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.bench.measure import MB, pss_bytes
from pipeline.bench.media import generated_video
from pipeline.bench.model import fidelity
from pipeline.bench.seed_baseline import pyslowfast_unavailable
from pipeline.hardware import CPUINFO, cpu_flags, default_threads, usable_cpus
from pipeline.models.registry import build_model, get_spec

log = logging.getLogger(__name__)

# The sparse setting: 30 s of 1080p30, T=32 consecutive frames, one row per 32 frames.
SEED_DEFAULTS: dict[str, Any] = {"seconds": 30.0, "stride": 32, "repeats": 2}
SIDES = ("seed", "ours")


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_header() -> dict[str, Any]:
    """The machine in a report: CPU model, its AVX-512 / AMX flags, usable CPUs and torch threads."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")))
    return {"cpu": cpu_model_name(), "avx512_amx_flags": flags, "cpus": usable_cpus()}


def write_random_checkpoint(model: str, path: Path, seed: int = 0) -> Path:
    """A PySlowFast-format `.pyth` ({"model_state": ...}, PySlowFast's key names) of random weights for
    `model`: its own seeded initialisation, batch-norm statistics and biases drawn away from identity."""
    torch.manual_seed(seed)
    network = build_model(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.02)
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.02)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state": network.state_dict()}, path)
    return path


def descendants(pid: int) -> list[int]:
    """pid and all its live descendants (via /proc/<pid>/task/*/children)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                queue += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def run_process(command: list[str], cwd: Path, sample_every_s: float = 0.5) -> dict[str, Any]:
    """Run a command to its exit: wall seconds, CPU seconds and the largest single process's peak RSS
    (wait4's rusage: the process and the descendants it waited for), and the peak PSS of its whole process
    tree sampled every `sample_every_s` (decode workers included). Output goes to files in cwd."""
    cwd.mkdir(parents=True, exist_ok=True)
    peak_pss = 0
    with open(cwd / "stdout.txt", "wb") as out, open(cwd / "stderr.txt", "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak_pss
            while not stop.wait(sample_every_s):
                peak_pss = max(peak_pss, sum(pss_bytes(p) for p in descendants(process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            stop.set()
            sampler.join()
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if process.returncode:
        tail = (cwd / "stderr.txt").read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{command[2]} exited with {process.returncode}:\n" + "\n".join(tail))
    return {
        "wall_s": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss * 1024 / MB,  # kB on Linux
        "peak_pss_tree_mb": peak_pss / MB,
    }


def seed_command(
    video: Path, checkpoint: Path, out: Path, impl: str, model: str, T: int, tau: int, stride: int, size: int
) -> list[str]:
    """The seed baseline's command line."""
    return [
        sys.executable,
        "-m",
        "pipeline.bench.seed_baseline",
        "--video",
        str(video),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--model",
        model,
        "--num-frames",
        str(T),
        "--sampling-rate",
        str(tau),
        "--stride",
        str(stride),
        "--size",
        str(size),
        "--model-impl",
        impl,
    ]


def ours_command(
    video_list: Path,
    root: Path,
    checkpoint: Path,
    out: Path,
    batch_size: int | None,
    model: str,
    T: int,
    tau: int,
    stride: int,
    size: int,
) -> list[str]:
    """Our pipeline's command line: the seed's windows and resize, every other setting its default."""
    command = [
        sys.executable,
        "-m",
        "pipeline.extract",
        f"model={model}",
        f"model.checkpoint={checkpoint}",
        "data=custom",
        f"data.root={root}",
        f"data.video_list={video_list}",
        "data.window=centered",
        "data.pad=zero",
        f"data.num_frames={T}",
        f"data.sampling_rate={tau}",
        f"data.stride={stride}",
        "data.resize.mode=square",
        f"data.resize.size=[{size},{size}]",
        f"output_dir={out}",
        "output.hdf5=false",
    ]
    if batch_size:
        command.append(f"hardware.batch_size={batch_size}")
    return command


def choose_seed_impl(model: str, requested: str) -> tuple[str, str | None]:
    """The seed's model implementation and, when PySlowFast's could not be used, why."""
    if requested == "ours":
        return "ours", None
    reason = pyslowfast_unavailable(get_spec(model))
    if reason is None:
        return "pyslowfast", None
    if requested == "pyslowfast":
        raise RuntimeError(f"--seed-impl pyslowfast: {reason}")
    return "ours", f"{reason}; the seed runs our model in plain mode (fp32 NCDHW, unfolded batch norms)"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of wall and CPU seconds, the largest peaks, and every run."""
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_pss_tree_mb": max(r["peak_pss_tree_mb"] for r in runs),
        "runs": runs,
    }


def bench_vs_seed(
    model: str = "slowfast_r50",
    video: Path | None = None,
    *,
    workdir: Path,
    resolution: tuple[int, int] = (1920, 1080),
    video_fps: float = 30.0,
    seconds: float = SEED_DEFAULTS["seconds"],
    num_frames: int | None = 32,
    sampling_rate: int | None = 1,
    stride: int = SEED_DEFAULTS["stride"],
    size: int | None = None,
    batch_size: int | None = None,
    repeats: int = SEED_DEFAULTS["repeats"],
    seed_impl: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Whole-process wall time of the seed's algorithm and of our pipeline on one video, alternating
    (seed, ours) `repeats` times; the report has medians, seed/ours, CPU seconds, peak memory, row counts
    and the relative L2 of our features against the seed's. None for T, tau or size: the model's own."""
    video = (video or generated_video(workdir, resolution, video_fps, seconds)).resolve()
    spec = get_spec(model)
    size, num_frames = size or spec.crop_size, num_frames or spec.num_frames
    sampling_rate = sampling_rate or spec.sampling_rate
    impl, note = choose_seed_impl(model, seed_impl)
    if note:
        log.warning("seed baseline: %s", note)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    features: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="vs-seed-") as scratch:
        tmp = Path(scratch)
        checkpoint = write_random_checkpoint(model, tmp / f"{model}_random.pyth", seed)
        video_list = tmp / "video_list.csv"
        video_list.write_text(video.name + "\n")
        clip_setting = (model, num_frames, sampling_rate, stride, size)
        commands = {  # each run's outputs go to out/ in its own fresh folder (our pipeline resumes otherwise)
            "seed": seed_command(video, checkpoint, Path("out/features.npy"), impl, *clip_setting),
            "ours": ours_command(
                video_list, video.parent, checkpoint, Path("out"), batch_size, *clip_setting
            ),
        }
        for repeat in range(repeats):
            for side in SIDES:
                log.info("%s run %d/%d ...", side, repeat + 1, repeats)
                run_dir = tmp / f"{side}_{repeat}"
                run = run_process(commands[side], run_dir)
                log.info("%s: %.1f s wall, %.1f CPU s", side, run["wall_s"], run["cpu_s"])
                runs[side].append(run)
                written = sorted(
                    (run_dir / "out").glob("features.npy" if side == "seed" else "features/*.npy")
                )
                if len(written) != 1:
                    raise RuntimeError(
                        f"{side}: expected one features file under {run_dir / 'out'}, found {written}"
                    )
                features[side] = np.load(written[0])
    seed_rows, our_rows = len(features["seed"]), len(features["ours"])
    same_shape = features["seed"].shape == features["ours"].shape
    report: dict[str, Any] = {
        **cpu_header(),
        "torch_threads": default_threads(),
        "model": model,
        "video": str(video),
        "num_frames": num_frames,
        "sampling_rate": sampling_rate,
        "stride": stride,
        "size": size,
        "batch_size": batch_size,
        "repeats": repeats,
        "seed_model_impl": impl,
        "seed_note": note,
        "commands": {side: " ".join(command[1:]) for side, command in commands.items()},
        "seed": {**summarize(runs["seed"]), "rows": seed_rows},
        "ours": {**summarize(runs["ours"]), "rows": our_rows},
        "same_rows": seed_rows == our_rows,
    }
    report["seed_over_ours"] = report["seed"]["wall_s"] / report["ours"]["wall_s"]
    report["cpu_seed_over_ours"] = report["seed"]["cpu_s"] / report["ours"]["cpu_s"]
    if same_shape:
        a, b = features["ours"].astype(np.float64), features["seed"].astype(np.float64)
        report["relative_l2"] = float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-30)
        report["per_row"] = fidelity(features["ours"], features["seed"])
    else:
        report["relative_l2"] = None
        log.warning("seed and ours differ in shape: %s vs %s", features["seed"].shape, features["ours"].shape)
    return report


def print_seed_report(report: dict[str, Any]) -> None:
    """Human-readable summary of bench_vs_seed's report."""
    flags = " ".join(report["avx512_amx_flags"]) or "none"
    print(
        f"CPU: {report['cpu']} ({report['cpus']} usable CPUs, {report['torch_threads']} torch threads); "
        f"AVX-512/AMX flags: {flags}"
    )
    print(
        f"model {report['model']}: T={report['num_frames']} tau={report['sampling_rate']} stride={report['stride']} "
        f"{report['size']}x{report['size']} fp32, our batch size {report['batch_size'] or 'default'}; "
        f"video {report['video']}"
    )
    if report["seed_note"]:
        print(f"  note: {report['seed_note']}")
    seed_model = {"pyslowfast": "PySlowFast 1.0 model", "ours": "our model, plain"}[report["seed_model_impl"]]
    for side, label in (("seed", f"seed ({seed_model})"), ("ours", "ours")):
        r = report[side]
        print(
            f"  {label:30s} {r['wall_s']:8.1f} s wall (median of {len(r['runs'])}), {r['cpu_s']:8.1f} CPU s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB (largest process), tree PSS {r['peak_pss_tree_mb']:.0f} MB, "
            f"{r['rows']} rows"
        )
    print(f"  seed/ours: x{report['seed_over_ours']:.2f} wall, x{report['cpu_seed_over_ours']:.2f} CPU s")
    for side in SIDES:
        print(f"  {side} command: python {report['commands'][side]}")
    if report["relative_l2"] is None:
        print(f"  WARNING: different outputs: {report['seed']['rows']} vs {report['ours']['rows']} rows")
    else:
        print(
            f"  same features: relative L2 {report['relative_l2']:.2e} over {report['ours']['rows']} rows "
            f"(max per row {report['per_row']['max_relative_l2']:.2e})"
        )
