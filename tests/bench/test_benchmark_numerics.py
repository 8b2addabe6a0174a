"""The benchmark's own yardsticks: per-row fidelity, the matmul peak, the per-stage profile, bf16 vs fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import hardware
from pipeline.bench import e2e as bench_e2e
from pipeline.bench import layers as layer_profile
from pipeline.bench import model as bench_model
from pipeline.bench import settings as bench_settings
from pipeline.inference import TorchClipModel
from pipeline.models import fused
from pipeline.models.registry import build_model
from pipeline.synth import write_video


def test_fidelity_is_per_row_and_exact_for_equal_rows():
    want = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], np.float32)
    assert bench_model.fidelity(want, want) == {"rows": 3, "min_cosine": 1.0, "max_relative_l2": 0.0}
    got = want.copy()
    got[1] = [0.0, 2.2]  # same direction, 10% longer: cosine 1, relative L2 0.1
    got[2] = [4.0, 3.0]  # same length, turned: cosine 24/25, relative L2 sqrt(2)/5
    result = bench_model.fidelity(got, want)
    assert result["min_cosine"] == pytest.approx(24 / 25)
    assert result["max_relative_l2"] == pytest.approx(np.sqrt(2) / 5)


def test_the_matmul_peak_is_a_positive_rate():
    assert bench_model.measure_matmul_peak(size=128, repeats=2) > 0


def test_stage_profile_covers_every_stage_with_its_flops():
    fx = bench_e2e.make_extractor(
        bench_settings.Settings(model="slowfast_tiny", num_frames=None, sampling_rate=None)
    )
    model = fx.engine.model
    T, size = fx.config.data.num_frames, fx.config.data.resize.size[0]
    rows = bench_model.stage_profile(model, 1, T, size, repeats=1)
    names = [r["stage"] for r in rows]
    assert names[-1] == "(outside stages)" and "s1" in names and "s5" in names
    total = bench_model.gflops_per_clip(model.model, T, size)
    assert total and sum(r["gflop"] for r in rows) == pytest.approx(2 * total, rel=0.02)
    assert all(r["ms"] > 0 for r in rows[:-1])


def test_bf16_is_compared_with_fp32_on_the_same_clips(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: "AMX-BF16")
    video = tmp_path / "v.mp4"
    write_video(video, seconds=1.0, size=(64, 48))
    settings = bench_settings.Settings(
        model="slowfast_tiny", num_frames=None, sampling_rate=None, precision="bf16"
    )
    fx = bench_e2e.make_extractor(settings, stride=4)
    T, size = fx.config.data.num_frames, fx.config.data.resize.size[0]
    result = bench_model.compare_with_fp32(fx, video, 2, T, size, repeats=1)
    assert result["precision"] == "bf16" and result["rows"] == 8  # 30 frames, stride 4, zero padding
    assert 0.99 < result["min_cosine"] < 1.0 and 0 < result["max_relative_l2"] < 0.1  # bf16 really ran
    assert fx.engine.model.precision == "bf16" and torch.get_num_threads() >= 1  # the bf16 model is back


def test_layer_profile_times_every_conv_with_its_flops_and_bound():
    fx = bench_e2e.make_extractor(
        bench_settings.Settings(model="slowfast_tiny", num_frames=None, sampling_rate=None)
    )
    clip_model = fx.engine.model
    assert clip_model.fused_blocks > 0  # profiled as the run executes it: fused
    T, size = fx.config.data.num_frames, fx.config.data.resize.size[0]
    profile = layer_profile.layer_profile(clip_model, 1, T, size, peak_gflop_s=100.0, repeats=1)
    convs = {name: m for name, m in clip_model.model.named_modules() if isinstance(m, nn.Conv3d)}
    assert [row["layer"] for row in profile["convs"]] == list(convs)  # every conv, in forward order
    macs = bench_model.flop_analysis(clip_model.model, T, size).by_module()  # fvcore, independently
    for row in profile["convs"]:
        assert row["gflop"] == pytest.approx(2 * macs[f"inner.{row['layer']}"] / 1e9, rel=1e-6)
        assert row["ms"] > 0 and row["flops_per_byte"] > 0
        balance = profile["machine_balance_flops_per_byte"]
        assert row["bound"] == ("compute" if row["flops_per_byte"] >= balance else "memory")
        assert row["attainable_gflop_s"] <= 100.0
        assert row["narrow"] == (convs[row["layer"]].out_channels < layer_profile.VECTOR_LANES_FP32)
    assert any(row["fused_relu"] for row in profile["convs"])
    assert not any(row["fused_relu"] for row in profile["convs"] if ".branch1" in row["layer"])  # plain
    assert sum(g["convs"] for g in profile["groups"]) == len(convs)
    assert profile["rest_ms"] == pytest.approx(profile["forward_ms"] - profile["convs_ms"])
    assert profile["bandwidth_gb_s"] > 0
    assert clip_model.fused_blocks == sum(getattr(m, "fused", False) for m in clip_model.model.modules())


def test_the_fp32_twin_runs_fused_on_its_own_copy():
    torch.manual_seed(0)
    model = build_model("slowfast_tiny")
    reduced = TorchClipModel(
        model, device=torch.device("cpu"), mean=[0.45] * 3, std=[0.225] * 3, precision="bf16"
    )
    twin = bench_model.fp32_twin(reduced)
    assert reduced.fused_blocks > 0 and twin.fused_blocks > 0 and twin.model is not reduced.model
    own = [m.__dict__.get(fused.WEIGHTS_ATTR) for m in reduced.model.modules() if isinstance(m, nn.Conv3d)]
    copied = [m.__dict__.get(fused.WEIGHTS_ATTR) for m in twin.model.modules() if isinstance(m, nn.Conv3d)]
    assert any(w is not None and w[0].dtype == torch.bfloat16 for w in own)  # the bf16 model keeps its bf16
    assert all(w is None for w in copied)  # the fp32 twin runs its own fp32 weights
