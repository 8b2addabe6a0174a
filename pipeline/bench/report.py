"""The benchmark's human-readable report."""

from __future__ import annotations

from typing import Any

from pipeline.bench.layers import print_layer_profile


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
