"""--all-models: each model's achieved GFLOP/s against the fp32 and bf16 matmul peaks of the same run, and
--arch-option (a reduced depth) reaching the measured model."""

from __future__ import annotations

import pytest

from pipeline.bench import cli as bench_cli
from pipeline.bench import model as bench_model
from pipeline.bench.settings import Settings, settings_args
from pipeline.models import build_model


def test_all_models_reports_gflops_against_both_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_model, "cpu_native_bf16", lambda: "AVX512-BF16")
    peaks = iter([{"fp32": 100.0, "bf16": 300.0}, {"fp32": 120.0, "bf16": 250.0}])  # before, after
    monkeypatch.setattr(bench_cli, "matmul_peaks", lambda device: next(peaks))
    settings = Settings(model="videomae_tiny", num_frames=None, sampling_rate=None, batch_size=1, repeats=1)
    settings.arch_options = {"depth": 1}
    (row,) = bench_cli.bench_all_models(settings, names=["videomae_tiny"])
    assert row["arch_options"] == {"depth": 1} and row["precision"] == "fp32"
    assert row["matmul_peak_gflop_s"] == {"fp32": 120.0, "bf16": 300.0}  # the better of before and after
    one = bench_model.gflops_per_clip(build_model("videomae_tiny", depth=1), 4, 32)
    assert row["gflops_per_clip"] == one < bench_model.gflops_per_clip(build_model("videomae_tiny"), 4, 32)
    assert row["achieved_gflop_s"] == pytest.approx(2 * row["gflops_per_clip"] * row["clips_per_s"])
    assert row["share_of_fp32_peak"] == pytest.approx(row["achieved_gflop_s"] / 120.0)
    assert row["share_of_bf16_peak"] == pytest.approx(row["achieved_gflop_s"] / 300.0)
    assert row["peak_rss_mb_so_far"] > 0


def test_the_bf16_peak_is_left_out_where_bf16_is_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_model, "cpu_native_bf16", lambda: None)
    assert set(bench_model.matmul_peaks()) == {"fp32"}
    monkeypatch.setattr(bench_model, "cpu_native_bf16", lambda: "AMX-BF16")
    monkeypatch.setattr(bench_model, "measure_matmul_peak", lambda dtype=None, device="cpu": 1.0)
    assert set(bench_model.matmul_peaks()) == {"fp32", "bf16"}


def test_arch_options_on_the_command_line() -> None:
    args = bench_cli.parse_args(
        ["--all-models", "--arch-option", "depth=2", "--arch-option", "mlp_ratio=2.5"]
    )
    settings = bench_cli.settings_of(args)
    assert settings.arch_options == {"depth": 2, "mlp_ratio": 2.5}
    flags = settings_args(settings)
    assert flags[-4:] == ["--arch-option", "depth=2", "--arch-option", "mlp_ratio=2.5"]
    assert bench_cli.settings_of(bench_cli.parse_args(flags)).arch_options == settings.arch_options
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench_cli.settings_of(bench_cli.parse_args(["--arch-option", "depth"]))
