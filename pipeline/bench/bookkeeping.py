"""What a run's bookkeeping costs at scale (`--bookkeeping N`): a finished run of N videos is fabricated
without running the model on them (the tiny test model's output for one 1 s video, written for each
through the run's own ResultWriter and store), then the commands a user runs are timed as whole processes: the plan
and dry run, consolidation, a rerun with nothing to do, a rerun after `changed` videos (recorded as
failed, retried: the tiny model extracts them), consolidation again, export and inspect; with the files
in the output dir, the bytes each command wrote, and per-video costs.

Sources are hard links to one 1 s 64x48 video (one inode per 50,000 videos). Per-video fixed costs of a first
run (container header, the writer with its fsyncs, a manifest line) are measured on a sample.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.api import compose_config
from pipeline.assemble import as_object, build_engine
from pipeline.bench.measure import MB
from pipeline.engine import VideoJob, VideoResult
from pipeline.run import plan_run
from pipeline.run.results import ResultWriter
from pipeline.run.shards import PROBE_THREADS, work_weights
from pipeline.synth import write_video
from pipeline.videolist import read_video_list
from pipeline.weights import weights_info

VIDEO_SECONDS = 1.0
LINKS_PER_FILE = 50_000
SAMPLE = 500  # videos timed one by one for the per-video costs


@dataclass(frozen=True)
class BookkeepingSettings:
    videos: int
    store: str = "packed"
    changed: int = 1000
    workdir: Path = Path("outputs/bench-bookkeeping")


def overrides(s: BookkeepingSettings, root: Path, out: Path) -> list[str]:
    """The extraction command's settings: the tiny model at 30 fps, stride 16 (rows per 1 s video: 1)."""
    return [
        "model=slowfast_tiny",
        "model.checkpoint=random",
        "data=custom",
        f"data.root={root}",
        "data.fps=30",
        "data.stride=16",
        f"output_dir={out}",
        f"output.store={s.store}",
        "hardware=cpu",
        "hardware.decode_workers=1",
    ]


def make_sources(root: Path, count: int) -> float:
    """`count` hard links to one tiny video and their list; returns the seconds it took."""
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    source = root / "source.mp4"
    if not source.exists():
        write_video(source, seconds=VIDEO_SECONDS, size=(64, 48))
    names = [f"v{i:07d}.mp4" for i in range(count)]
    for number, name in enumerate(names):
        link = root / name
        if not link.exists():
            copy = root / f"source-{number // LINKS_PER_FILE}.mp4"  # a file system caps links per inode
            if not copy.exists():
                shutil.copyfile(source, copy)
            os.link(copy, link)
    (root / "video_list.csv").write_text("".join(f"{name}\n" for name in names))
    return time.perf_counter() - started


def template_output(cfg: Any, video: Path) -> tuple[np.ndarray, np.ndarray]:
    """The features and timestamps the run's model gives the source video: every fabricated video gets
    them (so that videos the model extracts later fit beside them)."""
    engine = build_engine(cfg, weights_info(cfg.model))
    (result,) = engine.run([VideoJob("template", video, video.name)])
    assert result.features is not None and result.timestamps is not None, result.error
    return result.features, result.timestamps


def fabricate(s: BookkeepingSettings, root: Path, out: Path) -> dict[str, Any]:
    """Write a finished run as the extraction would (ResultWriter), `changed` videos recorded as failed;
    the first SAMPLE videos durably (fsync) and timed, the rest without fsync (a million fsyncs would
    take an hour here), then everything synced."""
    cfg = as_object(compose_config("slowfast_tiny", overrides(s, root, out)[1:]))
    features, stamps = template_output(cfg, root / "source.mp4")
    started = time.perf_counter()
    plan = plan_run(cfg)
    (shard,) = plan.shards
    failed = set(range(0, len(shard.entries), max(1, len(shard.entries) // max(1, s.changed)))[: s.changed])
    timings: dict[str, list[float]] = {"durable": [], "not_durable": []}
    for durable in (True, False):
        shard = shard.current()  # the second writer appends after the first one's records
        writer = ResultWriter(shard, durable=durable)
        entries = shard.entries[:SAMPLE] if durable else shard.entries[SAMPLE:]
        offset = 0 if durable else SAMPLE
        for number, entry in enumerate(entries, start=offset):
            job = VideoJob(entry.key, entry.path, entry.rel)
            tick = time.perf_counter()
            if number in failed:
                writer.failed(entry, "fabricated: retried by the 'changed' rerun")
            else:
                result = VideoResult(
                    job, features, None, stamps, None, frames=30, frame_duration=1 / 30, seconds=0.01
                )
                writer.ok(entry, result)
            timings["durable" if durable else "not_durable"].append(time.perf_counter() - tick)
            if number and number % 100_000 == 0:
                print(f"  fabricated {number}/{len(shard.entries)} videos", file=sys.stderr, flush=True)
        writer.close()
    os.sync()
    return {
        "seconds": time.perf_counter() - started,
        "writer_ms_per_video_durable": 1000 * float(np.median(timings["durable"])),
        "writer_ms_per_video_no_fsync": 1000 * float(np.median(timings["not_durable"] or [0.0])),
        "failed": len(failed),
        "shape": features.shape,
    }


def tree(out: Path) -> tuple[int, int]:
    """(files, bytes) under a folder."""
    files = size = 0
    for folder, _, names in os.walk(out):
        for name in names:
            files += 1
            try:
                size += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return files, size


def timed(command: list[str], cwd: Path, out: Path) -> dict[str, Any]:
    """Run a command as a user would: wall seconds, its peak RSS, exit status, and what it changed in the
    output dir (files, bytes)."""
    before = tree(out)
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty command never blocks on it
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        error = log.read().decode(errors="replace")
    after = tree(out)
    return {
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "returncode": process.returncode,
        "files_added": after[0] - before[0],
        "bytes_added": after[1] - before[1],
        "error_tail": error[-600:] if process.returncode else "",
    }


def header_probe_ms(root: Path, count: int) -> dict[str, float]:
    """Reading container headers for the shard plan's weights: ms per video, serial and in threads."""
    entries = read_video_list(root / "video_list.csv", root, None)[:count]
    result = {}
    for threads in (1, PROBE_THREADS):
        started = time.perf_counter()
        work_weights(entries, threads)
        result[f"threads_{threads}"] = 1000 * (time.perf_counter() - started) / max(1, len(entries))
    return result


def bench_bookkeeping(s: BookkeepingSettings) -> dict[str, Any]:
    """Fabricate, then time each command (see the module docstring)."""
    work = s.workdir.resolve() / f"{s.store}-{s.videos}"
    root, out = work / "videos", work / "out"
    report: dict[str, Any] = {"videos": s.videos, "store": s.store, "changed": s.changed}
    exported = work / "opentad"
    for old in (out, exported):
        if old.exists():
            subprocess.run(["rm", "-rf", str(old)], check=True)
    report["make_sources_s"] = make_sources(root, s.videos)
    report["fabricate"] = fabricate(s, root, out)
    report["shape"] = list(report["fabricate"].pop("shape"))
    python = [sys.executable, "-m"]
    extract = [*python, "pipeline.extract", *overrides(s, root, out)]
    steps = {
        "dry_run": [*extract, "dry_run=true"],
        "consolidate_first": [*python, "pipeline.consolidate", str(out)],
        "rerun_nothing_to_do": [*extract, "output.retry_failed=false"],
        "rerun_changed": extract,
        "consolidate_nothing_to_do": [*python, "pipeline.consolidate", str(out)],
        "export_opentad_first": [*python, "pipeline.export", "--format", "opentad", str(out), str(exported)],
        "export_opentad_again": [*python, "pipeline.export", "--format", "opentad", str(out), str(exported)],
        "inspect": [*python, "pipeline.inspect", str(out)],
    }
    report["steps"] = {}
    for name, command in steps.items():
        print(f"  {name} ...", file=sys.stderr, flush=True)
        report["steps"][name] = timed(command, work, out)
    files, size = tree(out)
    report["output_files"], report["output_mb"] = files, size / MB
    report["files_per_1000_videos"] = 1000 * files / s.videos
    report["header_probe_ms_per_video"] = header_probe_ms(root, min(s.videos, 2000))
    return report


def print_bookkeeping(report: dict[str, Any]) -> None:
    """One line per command, then the output dir and the per-video costs."""
    n = report["videos"]
    fab = report["fabricate"]
    print(
        f"bookkeeping: {n} videos, store={report['store']}, features {report['shape']} float32 each, "
        f"{report['changed']} changed"
    )
    print(
        f"  fabricated in {fab['seconds']:.1f} s; the writer per video: {fab['writer_ms_per_video_durable']:.2f} ms "
        f"(with its fsync), {fab['writer_ms_per_video_no_fsync']:.3f} ms without"
    )
    for name, step in report["steps"].items():
        status = "" if step["returncode"] == 0 else f"  EXIT {step['returncode']}: {step['error_tail']!r}"
        print(
            f"  {name:26s} {step['seconds']:8.1f} s  {1e6 * step['seconds'] / n:8.1f} us/video  peak RSS "
            f"{step['peak_rss_mb']:7.0f} MB  +{step['files_added']} files, {step['bytes_added'] / MB:+.1f} MB{status}"
        )
    noop, changed = report["steps"]["rerun_nothing_to_do"], report["steps"]["rerun_changed"]
    print(
        f"  rerun after {report['changed']} changed / nothing to do: x{changed['seconds'] / noop['seconds']:.2f}"
    )
    print(
        f"  output dir: {report['output_files']} files ({report['files_per_1000_videos']:.1f} per 1000 videos), "
        f"{report['output_mb']:.0f} MB"
    )
    probe = report["header_probe_ms_per_video"]
    print(
        "  shard plan's header probe: "
        + ", ".join(f"{k.replace('_', ' ')}: {v:.2f} ms/video" for k, v in probe.items())
    )
