"""The prepared GPU check (pipeline.bench.gpu_check) run on the CPU: tiny models, a tiny budget, every section in
the JSON report; without CUDA the GPU mode refuses and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.bench import gpu_check
from pipeline.bench.gpu_check import SECTIONS, Budget, Options, cuda_test_ids, run_check

REPO = Path(__file__).resolve().parents[2]


def test_cuda_tests_are_found_by_their_cuda_check() -> None:
    ids = cuda_test_ids(REPO / "tests")
    assert "unit/test_inference.py::test_gpu_paths_match_cpu_fp32" in ids
    assert "unit/test_transforms.py::test_normalize_clips_on_device" in ids
    assert "unit/test_inference.py::test_batches_run_in_inference_mode" not in ids
    assert "bench/test_gpu_check.py::test_without_cuda_the_gpu_check_refuses" not in ids  # skips *with* a GPU


def test_quick_cpu_check_writes_every_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # compilation itself is checked by tests/test_fast_paths.py (a minute here): the compile section runs
    # in this process (not in a child beside the benchmark) with torch.compile standing in as the identity
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: function)
    started: list[float] = []

    class InProcess(gpu_check.CompileChild):
        def start(self, seconds: float) -> None:
            started.append(seconds)

        def result(self, budget: Budget) -> dict:
            return gpu_check.compile_vs_eager(self.opts)

    monkeypatch.setattr(gpu_check, "CompileChild", InProcess)
    out = tmp_path / "report.json"
    opts = Options(device="cpu", quick=True, budget_s=600, out=out, workdir=tmp_path / "work")
    report = run_check(opts)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report, default=str))
    assert written["sections"] == list(SECTIONS)
    for name in SECTIONS:
        assert written[name]["ok"], (name, written[name])
        assert written[name]["seconds"] >= 0
    assert written["ok"] and written["failed_sections"] == []
    families = written["cpu_vs_device"]["families"]
    assert {"slowfast", "slow"} <= set(families)
    assert all(row["model"].endswith("_tiny") for row in families.values())
    assert written["cpu_vs_device"]["families"]["slowfast"]["relative_l2"] < 1e-4
    assert written["low_precision"]["families"]["slow"]["fp16"] == {
        "skipped": "fp16 autocast is for CUDA devices"
    }
    e2e = written["e2e"]
    assert e2e["clean"]["ok_videos"] == 4 and e2e["worker_killed"]["killed_pid"]
    assert e2e["worker_killed"]["replaced_workers"] >= 1
    assert e2e["worker_killed"]["ok_videos"] + len(e2e["worker_killed"]["errors"]) == 4
    models = written["benchmark"]["models"]
    assert {"slow_tiny", "slowfast_tiny"} <= set(models)
    assert all(name.endswith("_tiny") for name in models)
    assert set(models["slow_tiny"]) == {
        "fp32_channels_last",
        "bf16_channels_last",
        "fp32_ncdhw",
        "bf16_ncdhw",
    }
    plan = written["decode_plan"]["models"]["slowfast_tiny"]
    assert plan["decode_workers_needed"] >= 1
    assert written["compile"]["compiled"] and written["compile"]["max_relative_l2_vs_eager"] < 1e-4
    assert (
        len(started) == 1 and 0 < started[0] < 600
    )  # started once, before the benchmark, with what was left


def test_compile_section_stops_at_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = Options(device="cpu", quick=True, out=tmp_path / "r.json", workdir=tmp_path)
    slow_child = [sys.executable, "-c", "import time; time.sleep(120)"]  # a compile slower than the budget
    monkeypatch.setattr(gpu_check.CompileChild, "command", lambda self, seconds: slow_child)
    result = gpu_check.check_compile(opts, Budget(12))
    assert not result["ok"]
    assert result["error"].startswith("stopped after") and "at the end of the time budget" in result["error"]


def test_no_budget_left_skips_and_says_so(tmp_path: Path) -> None:
    opts = Options(device="cpu", quick=True, out=tmp_path / "r.json", workdir=tmp_path)
    result = gpu_check.check_benchmark(opts, Budget(0))
    assert not result["ok"] and result["measured"] == 0 and result["skipped"] == 4 * len(result["models"])


def test_models_of_one_network_are_measured_once() -> None:
    from pipeline.models.registry import get_spec, list_models

    measured_as = gpu_check.benchmark_models(Options(quick=False))
    assert set(measured_as) == set(list_models())
    assert (
        measured_as["slowfast_r50"] == "slowfast_r50" and measured_as["i3d_nln_r50"] != measured_as["i3d_r50"]
    )
    for name, same in measured_as.items():
        a, b = get_spec(name), get_spec(same)
        assert (a.arch, a.num_frames, a.crop_size, a.alpha) == (b.arch, b.num_frames, b.crop_size, b.alpha)
        assert dict(a.builder_kwargs) == dict(b.builder_kwargs)
        assert measured_as[same] == same  # measured itself
    assert len(set(measured_as.values())) < len(measured_as)  # e.g. the EPIC checkpoint of SlowFast R50


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_gpu_check_refuses(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.gpu_check", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2
    assert "no CUDA GPU is visible to torch; nothing was checked" in done.stderr
    assert json.loads(out.read_text()) == {"ok": False, "error": "no CUDA GPU visible to torch"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_script_refuses_without_cuda(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "report.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode != 0
    assert "no CUDA GPU" in done.stderr
    assert (
        not (tmp_path / "report.json").exists()
        or not json.loads((tmp_path / "report.json").read_text())["ok"]
    )
