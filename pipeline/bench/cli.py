"""Throughput benchmark: model-only, decode-only and end-to-end clips/s, peak memory, GFLOPs, transfer.

    python -m pipeline.benchmark                         # SlowFast R50, EPIC setting, generated 1080p30 video
    python -m pipeline.benchmark --video my.mp4 --json   # a user's file, machine-readable
    python -m pipeline.benchmark --all-models            # clips/s, GFLOPs, GFLOP/s vs the matmul peak
    python -m pipeline.benchmark --many-short 200        # 200 videos of 2 s at 320x240
    python -m pipeline.benchmark --minutes 60 --stride 120 --resolution 320x240   # RSS vs video length
    python -m pipeline.benchmark --vs-seed               # whole-process time vs the old extractor's algorithm
    python -m pipeline.benchmark --flow --video clip.mp4 # TV-L1 optical flow pairs/s per core at 340x256

Everything runs in one process (the RSS-vs-length mode starts one fresh process per video length) with
random weights (speed does not depend on their values). Rates are medians of repeated measurements:
shared machines are noisy. GFLOPs are fvcore's, which counts one multiply-add as one flop (= GMACs).
On a GPU node decoding decides throughput: `node` in the report gives the decode workers (one CPU each)
that keep the model busy, from the model's clips/s and one single-threaded worker's decode rate, both
measured in the same run (`--node-cpus N` plans for a node with N CPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.bench.bookkeeping import BookkeepingSettings, bench_bookkeeping, print_bookkeeping
from pipeline.bench.decode import (
    bottleneck,
    cpu_budget,
    measure_decode,
    measure_ffmpeg_cli,
    measure_transfer,
    node_decode_plan,
)
from pipeline.bench.e2e import bench_rss, make_extractor, measure_e2e, measure_e2e_interleaved
from pipeline.bench.flow import THUMOS14_FRAMES, bench_flow, print_flow
from pipeline.bench.layers import layer_profile
from pipeline.bench.media import generated_video, link_copy
from pipeline.bench.model import (
    achieved,
    compare_with_fp32,
    efficiency,
    gflops_per_clip,
    matmul_peaks,
    measure_model,
    plain_model,
)
from pipeline.bench.report import print_report
from pipeline.bench.settings import Settings
from pipeline.bench.transport import bench_transport, print_transport
from pipeline.bench.vs_seed import SEED_DEFAULTS, bench_vs_seed, cpu_header, print_seed_report
from pipeline.decode import SourceOpener
from pipeline.hardware import cpu_native_bf16, usable_cpus
from pipeline.models.registry import get_spec, list_models
from pipeline.transforms import FrameTransform

log = logging.getLogger(__name__)


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


def bench_all_models(
    s: Settings, fidelity_video: Path | None = None, names: list[str] | None = None
) -> list[dict[str, Any]]:
    """Model-only clips/s (configured fast paths) and GFLOPs per registered model at its own setting, its
    achieved GFLOP/s against the fp32 and bf16 matmul peaks measured in the same run (before and after the
    models, the better of each: `matmul_peaks`); with a reduced precision also its speed-up and fidelity
    against fp32 (`compare_with_fp32`). By default only models of RGB clips (an optical-flow stream needs
    flow input, not made here)."""
    peaks = matmul_peaks(s.device)
    rows = []
    for name in names or [n for n in list_models() if get_spec(n).input_channels == 3]:
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
                "precision": s.precision,
                "arch_options": dict(s.arch_options),
                # the process's peak so far (before the fp32 comparison's copy): one model per run = its own
                "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        if fidelity_video is not None:
            rows[-1]["vs_fp32"] = compare_with_fp32(fx, fidelity_video, s.batch_size, T, size, s.repeats)
        log.info("%s: %.3f clips/s", name, rate)
        del fx
    again = matmul_peaks(s.device)
    peaks = {k: max(v, again.get(k, 0.0)) for k, v in peaks.items()}
    for row in rows:
        row.update(matmul_peak_gflop_s=peaks, **achieved(row["gflops_per_clip"], row["clips_per_s"], peaks))
    return rows


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
    p.add_argument(
        "--arch-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model.arch_options for the models measured, e.g. depth=2 (a ViT's blocks are alike: time and "
        "weights grow linearly with depth)",
    )
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
        help="whole-process time of the old extractor's algorithm (pipeline.bench.seed_baseline) vs pipeline.extract",
    )
    p.add_argument(
        "--seed-impl",
        default="auto",
        choices=["auto", "pyslowfast", "ours"],
        help="with --vs-seed: the seed's model (auto: PySlowFast 1.0's when importable)",
    )
    p.add_argument("--probe-e2e", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layers", action="store_true", help="time every conv alone against its roofline bound")
    p.add_argument(
        "--transport",
        action="store_true",
        help="the clip hand-over of uint8 and float recipes (decode + resize CPU per frame, clip bytes, "
        "slots, worker memory) and their end-to-end difference",
    )
    p.add_argument(
        "--bookkeeping",
        type=int,
        default=0,
        metavar="N",
        help="fabricate a finished run of N videos and time plan, dry run, reruns, consolidate, export, inspect",
    )
    p.add_argument("--store", default="packed", choices=["packed", "files"], help="with --bookkeeping")
    p.add_argument(
        "--changed", type=int, default=1000, help="with --bookkeeping: videos the second rerun redoes"
    )
    p.add_argument(
        "--flow",
        action="store_true",
        help="TV-L1 optical flow: pairs/s per core at 340x256 (dense_flow's settings and OpenCV's CPU "
        "defaults), the flow source's fields/s, and what --flow-frames frames cost (default video: a "
        "generated 320x180 one; real footage gives truer figures)",
    )
    p.add_argument("--flow-pairs", type=int, default=10, help="with --flow: frame pairs per measurement")
    p.add_argument(
        "--flow-frames",
        type=int,
        default=THUMOS14_FRAMES,
        help="with --flow: frames of the data set to cost (default: THUMOS14 val + test, ~2 M)",
    )
    p.add_argument(
        "--no-fidelity",
        action="store_true",
        help="--all-models with --precision bf16/fp16: leave out the comparison with fp32 on a generated 10 s video "
        "(19 clips in both precisions per model; long for the largest models)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = p.parse_args(argv)
    args.resolution = tuple(int(v) for v in args.resolution.lower().split("x"))
    defaults: dict[str, Any] = {"seconds": 20.0, "stride": 16, "batch_size": 4, "repeats": 5}
    if args.vs_seed:
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
        arch_options=dict(arch_option(text) for text in args.arch_option),
    )


def arch_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE of --arch-option, the value read as YAML (2 -> int, 0.5 -> float, true -> bool)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--arch-option: expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


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
        report["machine"] = {**cpu_header(), "native_bf16": cpu_native_bf16()}
        report["peak_rss_mb_process_lifetime"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if not args.json:
            peaks = report["models"][0]["matmul_peak_gflop_s"] if report["models"] else {}
            print(
                f"{report['machine']['cpu']} (native bf16: {report['machine']['native_bf16']}), "
                f"{torch.get_num_threads()} torch threads; matmul peaks measured in this run: "
                + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
                + f"; peak RSS {report['peak_rss_mb_process_lifetime']:.0f} MB"
            )
            for row in report["models"]:
                options = "".join(f" {k}={v}" for k, v in row["arch_options"].items())
                line = (
                    f"{row['model'] + options:22s} {row['num_frames']:3d}x{row['sampling_rate']:<2d} {row['input_size']:4d}px  "
                    f"{row['gflops_per_clip'] or 0:7.1f} GFLOPs  {row['clips_per_s']:7.3f} clips/s"
                )
                if "achieved_gflop_s" in row:
                    line += f"  {row['achieved_gflop_s']:6.0f} GFLOP/s = " + ", ".join(
                        f"{100 * row[f'share_of_{k}_peak']:.0f}% of {k}" for k in peaks
                    )
                if v := row.get("vs_fp32"):
                    line += (
                        f"  fp32 {v['fp32_clips_per_s']:.3f} -> x{v['speedup']:.2f}  min cosine "
                        f"{v['min_cosine']:.6f}  max rel L2 {v['max_relative_l2']:.1e} ({v['rows']} rows)"
                    )
                print(line)
    elif args.bookkeeping:
        report = bench_bookkeeping(
            BookkeepingSettings(
                args.bookkeeping,
                store=args.store,
                changed=min(args.changed, args.bookkeeping),
                workdir=args.workdir / "bookkeeping",
            )
        )
        if not args.json:
            print_bookkeeping(report)
    elif args.flow:
        video = args.video or generated_video(args.workdir, (320, 180), args.video_fps, 10.0)
        report = bench_flow(video, args.flow_pairs, max(1, args.repeats // 2), args.flow_frames)
        if not args.json:
            print_flow(report)
    elif args.transport:
        video = args.video or generated_video(args.workdir, args.resolution, args.video_fps, args.seconds)
        report = bench_transport(s, video, args.decode_frames, max(2, args.repeats // 2))
        if not args.json:
            print_transport(report)
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
    """The video whose clips compare a reduced precision with fp32: 10 s of 640x360 (None for fp32 or
    --no-fidelity)."""
    if s.precision == "fp32" or args.no_fidelity:
        return None
    return generated_video(args.workdir, (640, 360), args.video_fps, 10.0)
