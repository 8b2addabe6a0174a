"""The GPU path's first-day failures, checked on the CPU: FLOP counter input device, fixed batch shapes,
native bf16 only, compile fallback for compile errors only, no CUDA call on CPU runs, out-of-memory hint,
per-job CPU shares, and the non-local block's fp16 overflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.api import compose_config
from pipeline.assemble import as_object
from pipeline.bench import model as bench_model
from pipeline.config import ConfigError
from pipeline.hardware import CPU_SHARE_ENV, decoder_threads, split_cpus, usable_cpus
from pipeline.inference import (
    BatchMemoryError,
    DeviceError,
    check_cuda_precision,
    is_compile_error,
    padded_rows,
)
from pipeline.launch import ShardTask
from pipeline.models.registry import build_model
from pipeline.models.resnet3d import NonLocal
from pipeline.run import environment_record, finish_run
from pipeline.synth import write_video
from tests.helpers import clips_of, run_config, tiny_clip_model

MEAN, STD = [0.45] * 3, [0.225] * 3
CPU = torch.device("cpu")


# --- FLOP counter: its input on the model's device ------------------------------------------------


class Seen(Exception):
    """Raised by a stand-in pathways() once it has recorded its input."""


def test_flop_counter_builds_its_input_on_the_models_device(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("slowfast_tiny").to("meta")  # like a CUDA model: a CPU input would not match it
    seen: list[torch.device] = []

    def pathways(clips: torch.Tensor) -> list[torch.Tensor]:
        seen.append(clips.device)
        raise Seen

    monkeypatch.setattr(model, "pathways", pathways)
    with pytest.raises(Seen):
        bench_model.gflops_per_clip(model, 8, 64)
    assert seen == [torch.device("meta")]
    assert bench_model.flop_input(model, 8, 64).shape == (1, 3, 8, 64, 64)


def test_flop_count_on_cpu_is_unchanged() -> None:
    from fvcore.nn import FlopCountAnalysis

    model = build_model("slowfast_tiny").eval()

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *pathways: torch.Tensor) -> torch.Tensor:
            return self.inner.forward_features(list(pathways))

    with torch.inference_mode():  # the count as it was made before: a CPU clip through a CPU model
        analysis = FlopCountAnalysis(Features().eval(), tuple(model.pathways(torch.zeros(1, 3, 8, 64, 64))))
        want = analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).total() / 1e9
    assert bench_model.gflops_per_clip(model, 8, 64) == pytest.approx(want, rel=1e-9)
    assert want > 0


# --- fixed batch shapes ---------------------------------------------------------------------------


def test_padding_is_for_gpus_unless_asked() -> None:
    assert padded_rows(torch.device("cuda"), 16, 3, None) == 48
    assert padded_rows(CPU, 16, 3, None) is None
    assert padded_rows(CPU, 4, 1, True) == 4
    assert padded_rows(torch.device("cuda"), 16, 1, False) is None
    assert padded_rows(torch.device("cuda"), None, 1, None) is None  # no batch size known: no padding


def test_partial_batches_are_padded_to_one_shape_and_trimmed() -> None:
    padded = tiny_clip_model(batch_size=3, crops=2, pad_batches=True)
    plain = tiny_clip_model()
    shapes: list[tuple[int, ...]] = []
    padded.model.s1.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0][0].shape)))
    for rows in (1, 2, 5, 6):
        clips, valid = clips_of(rows)
        got, _ = padded(clips, valid)
        want, _ = plain(clips, valid)
        assert got.shape == want.shape == (rows, want.shape[1])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert {shape[0] for shape in shapes} == {6}, shapes  # the model saw batch_size x crops rows only


def test_padded_logits_are_trimmed_too() -> None:
    model = tiny_clip_model(batch_size=4, pad_batches=True, logits=True)
    clips, valid = clips_of(3)
    features, logits = model(clips, valid)
    assert features.shape[0] == 3 and logits is not None and logits["logits"].shape[0] == 3


def test_cpu_runs_are_not_padded() -> None:
    model = tiny_clip_model(batch_size=4, crops=1)
    assert model.pad_to is None
    shapes: list[int] = []
    model.model.s1.register_forward_pre_hook(lambda _m, args: shapes.append(args[0][0].shape[0]))
    model(*clips_of(1))
    assert shapes == [1]


# --- bf16 only where the GPU has it natively ------------------------------------------------------


def test_bf16_emulation_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # an old GPU: bf16 only through emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    with pytest.raises(DeviceError, match="^hardware.precision=bf16: this GPU has no native bf16") as caught:
        check_cuda_precision("bf16")
    assert isinstance(caught.value, ConfigError) and "\n" not in str(caught.value)
    assert asked == [False]
    check_cuda_precision("fp32")
    check_cuda_precision("fp16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    check_cuda_precision("bf16")


# --- compile fallback only for compile errors -------------------------------------------------------


def compile_raising(error: BaseException):
    def fake_compile(function, **kwargs):
        def compiled(*args, **kw):
            raise error

        return compiled

    return fake_compile


def dynamo_failure(inner: Exception) -> Exception:
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed(lambda *a: None, inner, None)


def test_compile_errors_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.exc import Unsupported
    from torch._inductor.exc import CppCompileError

    clips, valid = clips_of(2)
    want = tiny_clip_model(fuse=False)(clips, valid)[0]  # compile=True leaves conv + ReLU fusion to inductor
    for error in (
        dynamo_failure(RuntimeError("no C++ compiler")),
        CppCompileError(["g++"], "g++: not found"),
        Unsupported("data-dependent control flow"),
    ):
        monkeypatch.setattr(torch, "compile", compile_raising(error))
        model = tiny_clip_model(compile=True)
        assert model.compiled
        got = model(clips, valid)[0]
        assert not model.compiled, type(error)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), BatchMemoryError),
        ("wrapped oom", BatchMemoryError),  # out of memory inside compilation is still out of memory
        (RuntimeError("CUDA error: device-side assert triggered"), RuntimeError),
        (ValueError("a bug of ours"), ValueError),
    ],
)
def test_other_errors_propagate(
    monkeypatch: pytest.MonkeyPatch, error: BaseException | str, raised: type[BaseException]
) -> None:
    if error == "wrapped oom":
        error = dynamo_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert isinstance(error, BaseException)
    monkeypatch.setattr(torch, "compile", compile_raising(error))
    model = tiny_clip_model(compile=True, batch_size=2)
    with pytest.raises(raised) as caught:
        model(*clips_of(2))
    assert raised is BatchMemoryError or caught.value is error
    assert model.compiled  # no silent switch to eager mode
    assert not is_compile_error(error)


# --- no CUDA call on a CPU run ---------------------------------------------------------------------


def forbid_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda(*args: object, **kwargs: object) -> None:
        raise AssertionError("a CUDA call on a CPU run")

    for name in ("is_available", "get_device_name", "device_count", "current_device", "init"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)


def test_cpu_environment_record_makes_no_cuda_call(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_cuda(monkeypatch)
    record = environment_record("cpu")
    assert record["cuda"] is None and record["torch"] == torch.__version__


def test_cuda_environment_record_names_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    assert environment_record("cuda")["cuda"] == "GPU 1"


def test_a_cpu_run_and_its_record_make_no_cuda_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = tmp_path / "videos"
    write_video(root / "v.mp4", seconds=1.0, size=(64, 48))
    (root / "video_list.csv").write_text("v.mp4\n")
    out = tmp_path / "out"
    cfg = as_object(
        compose_config(
            "slowfast_tiny",
            ["model.checkpoint=random", f"data.root={root}", f"output_dir={out}", "output.hdf5=false"],
        )
    )
    forbid_cuda(monkeypatch)
    summary = run_config(cfg)
    assert summary.ok == 1
    finish_run(cfg, out, [summary], None, None)
    (record_file,) = (out / "runs").glob("*.json")
    assert json.loads(record_file.read_text())["environment"]["cuda"] is None


# --- out of memory: one line naming batch_size and crops ---------------------------------------------


def test_out_of_memory_names_batch_size_crops_and_the_effective_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_clip_model(batch_size=16, crops=3)

    def out_of_memory(pathways: list[torch.Tensor]) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")

    monkeypatch.setattr(model, "_forward_features", out_of_memory)
    with pytest.raises(BatchMemoryError) as caught:
        model(*clips_of(48))
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and "\n" not in message
    assert message.startswith("hardware.batch_size=16 x 3 crop(s) (data.crops) = 48 clips per model call")
    assert "try hardware.batch_size=8" in message and "Tried to allocate 20.00 GiB" in message


def test_out_of_memory_at_batch_size_one_suggests_something_else(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_clip_model(batch_size=1)
    monkeypatch.setattr(model, "_forward_features", _raise_oom)
    with pytest.raises(BatchMemoryError, match="hardware.batch_size=1 x 1 crop.* data.crops=1"):
        model(*clips_of(1))


def _raise_oom(pathways: list[torch.Tensor]) -> torch.Tensor:
    raise torch.OutOfMemoryError("out of memory")


# --- each local job's share of the CPUs ---------------------------------------------------------------


def test_split_cpus_gives_each_job_a_disjoint_share() -> None:
    assert split_cpus(list(range(16)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert split_cpus([3, 1, 2, 0, 4], 2) == [[0, 1], [2, 3]]  # sorted; the remainder stays unused
    assert split_cpus([0, 1], 3) == [[0], [1], [0]]  # more jobs than CPUs: one each, shared
    with pytest.raises(ValueError):
        split_cpus([], 1)


def test_decoder_threads_keep_workers_within_the_share() -> None:
    assert decoder_threads(16, 4) == 4
    assert decoder_threads(16, 0) == 1  # one worker per CPU
    assert decoder_threads(8, 3) == 2
    assert decoder_threads(2, 1) == 2
    assert decoder_threads(4, 16) == 1  # more workers than CPUs (the engine clamps them to 4)


def test_a_job_takes_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: list[list[int]] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: pinned.append(list(cpus)))
    monkeypatch.setenv(CPU_SHARE_ENV, "")  # the task sets it in this process; restored afterwards
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")  # a whole node's allocation, shared by the jobs

    def report(cfg: object, shard: int, num_shards: int) -> int:
        return usable_cpus()

    task = ShardTask(report).with_cpus([4, 5, 6, 7])
    assert task(None, 0, 2) == 4  # type: ignore[arg-type]
    assert pinned == [[4, 5, 6, 7]]
    monkeypatch.setenv(CPU_SHARE_ENV, "")
    assert ShardTask(report)(None, 0, 1) == 64  # type: ignore[arg-type]  # no share: nothing changes


# --- the non-local block in fp16 --------------------------------------------------------------------


def test_non_local_block_does_not_overflow_under_fp16_autocast() -> None:
    torch.manual_seed(0)
    block = NonLocal(64, 32, (1, 2, 2), "softmax").eval()
    x = torch.randn(1, 64, 2, 8, 8) * 100  # large activations: theta^T phi exceeds fp16's 65504
    with torch.no_grad():
        want = block(x)
        theta = block.conv_theta(x).flatten(2)
        phi = block.conv_phi(F.max_pool3d(x, (1, 2, 2), (1, 2, 2))).flatten(2)
        assert torch.isinf(torch.bmm(theta.half().transpose(1, 2), phi.half())).any()  # the old order
        with torch.autocast("cpu", dtype=torch.float16):
            got = block(x)
    assert torch.isfinite(got).all()
    assert float((got.float() - want).norm() / want.norm()) < 1e-2


@pytest.mark.parametrize("instantiation", ["softmax", "dot_product"])
def test_non_local_block_in_fp32_equals_the_reference(instantiation: str) -> None:
    torch.manual_seed(0)
    block = NonLocal(16, 8, (1, 2, 2), instantiation).eval()
    x = torch.randn(2, 16, 2, 6, 6)
    with torch.no_grad():
        got = block(x)
        theta = block.conv_theta(x).flatten(2)
        pooled = F.max_pool3d(x, (1, 2, 2), (1, 2, 2))
        phi, g = block.conv_phi(pooled).flatten(2), block.conv_g(pooled).flatten(2)
        affinity = torch.bmm(theta.transpose(1, 2), phi)
        if instantiation == "softmax":
            affinity = torch.softmax(affinity * 8**-0.5, dim=2)
        else:
            affinity = affinity / affinity.shape[2]
        y = torch.bmm(g, affinity.transpose(1, 2)).view(2, 8, 2, 6, 6)
        want = x + block.bn(block.conv_out(y))
    assert torch.equal(got, want)


def test_out_of_memory_stops_a_run_as_one_expected_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipeline.api import FeatureExtractor
    from pipeline.extract import EXPECTED_ERRORS

    video = tmp_path / "v.mp4"
    write_video(video, seconds=1.0, size=(64, 48))
    fx = FeatureExtractor("slowfast_tiny", checkpoint="random", batch_size=2, num_frames=8)
    monkeypatch.setattr(fx.engine.model, "_forward_features", _raise_oom)
    with pytest.raises(BatchMemoryError) as caught:  # not one failed video: every batch would fail alike
        fx.extract(video)
    assert isinstance(caught.value, EXPECTED_ERRORS)
    assert str(caught.value).startswith("hardware.batch_size=2 x 1 crop(s) (data.crops) = ")
