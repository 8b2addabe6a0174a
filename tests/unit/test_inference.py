"""Model fast paths against plain fp32 NCDHW: batch norms folded into convs, channels_last_3d, bf16
autocast, torch.compile (and its fallback), inference_mode; the GPU paths run only where a GPU is visible."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, ModelConfig
from pipeline.hardware import cpu_native_bf16
from pipeline.inference import (
    DeviceError,
    TorchClipModel,
    default_channels_last,
    fold_batch_norms,
    load_model,
)
from pipeline.models import fused
from pipeline.models.base import VideoModel
from pipeline.models.fused import FusableBlock
from pipeline.models.registry import build_model, get_spec
from pipeline.weights import WeightsInfo
from tests.helpers import clips_of

MEAN, STD = [0.45] * 3, [0.225] * 3
CPU = torch.device("cpu")
FAST_TOL = 1e-5  # relative L2 for exact rewrites; measured ~1-5e-7 (only the order of float sums changes)
BF16_TOL = 3e-2  # relative L2; measured 3-4e-3 on the full models (bf16 keeps 8 bits of mantissa)

# (model, T, size): the tiny test models and full-width models at a small input (fast, same kernels)
MODELS = [
    ("slowfast_tiny", 8, 64),
    ("slow_tiny", 8, 64),
    ("slowfast_r50", 8, 64),
    ("i3d_nln_r50", 8, 64),
    ("x3d_xs", 4, 96),
]


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def trained_looking(model: nn.Module) -> nn.Module:
    """Batch norm statistics and affines moved off their initial values (so that folding them matters),
    mildly: zero-initialised residual norms stay zero and activations keep their scale."""
    generator = torch.Generator().manual_seed(1)

    def uniform(like: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(like.shape, generator=generator) * (high - low) + low

    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm3d)):
            norm.running_mean.copy_(uniform(norm.running_mean, -0.1, 0.1))
            norm.running_var.copy_(uniform(norm.running_var, 0.8, 1.25))
            norm.weight.mul_(uniform(norm.weight, 0.8, 1.2))
            norm.bias.add_(uniform(norm.bias, -0.1, 0.1))
    return model


def clip_model(name: str, device: torch.device = CPU, **kwargs) -> TorchClipModel:
    torch.manual_seed(0)
    return TorchClipModel(trained_looking(build_model(name)), device=device, mean=MEAN, std=STD, **kwargs)


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def reference(request):
    """(model name, clips, valid, fp32 NCDHW features, tolerance for exact rewrites).

    The tolerance is FAST_TOL, or 10x the plain model's own change between batch sizes 1 and 2 when that
    is larger: randomly initialised non-local blocks saturate their softmax and amplify any rounding
    (i3d_nln_r50: ~1e-5 from the batch size alone).
    """
    name, T, size = request.param
    clips, valid = clips_of(2, T, size, seed=7, padded=2)
    plain = clip_model(name, channels_last=False, fold_bn=False)
    assert not plain.channels_last and not plain.folded_norms and plain.model.training is False
    want = plain(clips, valid)[0]
    floor = relative_l2(plain(clips[:1], valid[:1])[0], want[:1])
    return name, clips, valid, want, max(FAST_TOL, 10 * floor)


@pytest.mark.parametrize("fast_path", ["default", "channels_last", "fold_bn", "unfused"])
def test_exact_fast_paths_equal_plain_fp32_ncdhw(reference, fast_path):
    name, clips, valid, want, tolerance = reference
    options = {
        "default": {},
        "channels_last": {"fold_bn": False},
        "fold_bn": {"channels_last": False},
        "unfused": {"fuse": False},
    }
    fast = clip_model(name, **options[fast_path])
    norms = sum(isinstance(m, nn.BatchNorm3d) for m in build_model(name).modules())
    assert fast.channels_last == (fast_path != "fold_bn")
    assert fast.folded_norms == (norms if fast_path != "channels_last" else 0)  # every norm follows a conv
    # conv + ReLU fusion: every ResNet block once its norms are folded; X3D's blocks have none
    fusable = (
        sum(isinstance(m, FusableBlock) for m in fast.model.modules()) if not name.startswith("x3d") else 0
    )
    assert fast.fused_blocks == (fusable if fast_path in ("default", "fold_bn") else 0)
    got = fast(clips, valid)[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert relative_l2(got, want) < tolerance


class ConvUsedTwice(VideoModel):
    """A conv whose output feeds a batch norm and is also used as it is: folding would change it."""

    def __init__(self) -> None:
        super().__init__(get_spec("slow_tiny"))
        self.conv = nn.Conv3d(3, 4, 1)
        self.bn = nn.BatchNorm3d(4)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        y = self.conv(inputs[0])
        return (self.bn(y) + y).mean(dim=(2, 3, 4))


def test_folding_is_checked_and_refused_when_it_changes_features(caplog):
    model = trained_looking(ConvUsedTwice()).eval()
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        kept, folded = fold_batch_norms(model)
    assert kept is model and folded == 0
    assert "batch norm folding changed slow_tiny's features" in caplog.text


def test_fusion_falls_back_when_the_fused_op_fails_or_differs(monkeypatch, caplog):
    clips, valid = clips_of(2, 8, 64, seed=7, padded=2)
    want = clip_model("slowfast_tiny", fuse=False)(clips, valid)[0]

    def unsupported(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mkldnn: this build cannot")

    def wrong(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(nn.functional.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding) + 1)

    for replacement, message in (
        (unsupported, "fusion unavailable"),
        (wrong, "fusion changed slowfast_tiny"),
    ):
        monkeypatch.setattr(fused, "conv_relu", replacement)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
            fast = clip_model("slowfast_tiny")
        assert fast.folded_norms > 0 and fast.fused_blocks == 0, message
        assert not any(getattr(m, "fused", False) for m in fast.model.modules())
        assert message in caplog.text
        assert relative_l2(fast(clips, valid)[0], want) < FAST_TOL


def test_fusion_for_cpu_eager_fp32_and_channels_last_bf16():
    assert clip_model("slow_tiny").fused_blocks > 0
    bf16 = clip_model("slow_tiny", precision="bf16")  # emulated where the CPU has no bf16: slow, still right
    assert bf16.fused_blocks > 0
    convs = [m for m in bf16.model.modules() if isinstance(m, nn.Conv3d) and fused.WEIGHTS_ATTR in m.__dict__]
    assert convs and all(c.__dict__[fused.WEIGHTS_ATTR][0].dtype == torch.bfloat16 for c in convs)
    assert all(c.weight.dtype == torch.float32 for c in convs)  # the module's own weights stay fp32
    shortcuts = [m for n, m in bf16.model.named_modules() if n.endswith(".branch1")]
    assert shortcuts and not any(fused.WEIGHTS_ATTR in m.__dict__ for m in shortcuts)  # they run autocast
    # oneDNN fuses the residual add in bf16 only in channels-last memory; inductor fuses by itself
    assert clip_model("slow_tiny", precision="bf16", channels_last=False).fused_blocks == 0
    assert clip_model("slow_tiny", compile=True).fused_blocks == 0


def test_bf16_fusion_is_close_to_bf16_autocast_and_to_fp32():
    clips, valid = clips_of(2, 8, 64, seed=7, padded=2)
    want = clip_model("slowfast_r50", fuse=False)(clips, valid)[0]
    autocast = clip_model("slowfast_r50", precision="bf16", fuse=False)
    fast = clip_model("slowfast_r50", precision="bf16")
    assert autocast.fused_blocks == 0 and fast.fused_blocks > 0
    got, plain_bf16 = fast(clips, valid)[0], autocast(clips, valid)[0]
    assert relative_l2(got, plain_bf16) < BF16_TOL and relative_l2(got, want) < BF16_TOL


def test_folding_leaves_the_callers_model_alone():
    model = trained_looking(build_model("slowfast_tiny"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = TorchClipModel(model, device=CPU, mean=MEAN, std=STD)
    assert fast.folded_norms > 0 and fast.model is not model
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_autocast_on_cpu_is_close_to_fp32(reference):
    name, clips, valid, want, tolerance = reference
    if name.endswith("_tiny") or tolerance > FAST_TOL:
        pytest.skip("bf16 checked on the full-width models whose random weights do not amplify rounding")
    got = clip_model(name, precision="bf16")(clips, valid)[0]
    assert got.dtype == np.float32
    error = relative_l2(got, want)
    assert 0 < error < BF16_TOL  # > 0: autocast really ran in bf16


def test_channels_last_is_the_default_on_cpu_and_gpu():
    assert default_channels_last(CPU) and default_channels_last(torch.device("cuda"))


def test_fp16_needs_a_gpu():
    with pytest.raises(RuntimeError, match="fp16 needs a CUDA device"):
        clip_model("slowfast_tiny", precision="fp16")


def test_an_unusable_device_setting_is_a_config_error():
    """The app prints a ConfigError as one line; DeviceError stays a RuntimeError for older callers."""
    with pytest.raises(DeviceError, match="hardware.precision=fp16") as caught:
        clip_model("slowfast_tiny", precision="fp16")
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, RuntimeError)


@pytest.mark.parametrize(
    ("name", "layer", "message"),
    [
        ("nosuch", None, "model.name: unknown model 'nosuch'"),
        ("slowfast_tiny", "conv_5", "model.feature_layer: 'conv_5' is not a feature layer of slowfast_tiny"),
    ],
)
def test_a_model_config_naming_nothing_registered_is_a_config_error(name, layer, message):
    config = ModelConfig(name=name, arch="slowfast", checkpoint="random", feature_layer=layer)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_model(config, WeightsInfo(None, None, True), need_head=False, seed=0)


def test_batches_run_in_inference_mode():
    model = clip_model("slowfast_tiny")
    seen: list[bool] = []
    model.model.s1.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    model(*clips_of(2, 8, 64, seed=7, padded=2))
    assert seen == [True]  # the stem ran once, under inference_mode


def test_a_failing_compile_falls_back_to_eager(monkeypatch, caplog):
    clips, valid = clips_of(2, 8, 64, seed=7, padded=2)
    want = clip_model("slowfast_tiny", fuse=False)(clips, valid)[0]  # compile=True leaves fusion to inductor

    def broken_compile(function, **kwargs):
        def compiled(*args, **kw):
            from torch._dynamo.exc import BackendCompilerFailed  # how a compiler failure arrives

            inner = RuntimeError("inductor: no working C++ compiler\nsecond line")
            raise BackendCompilerFailed(lambda *a: None, inner, None)

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = clip_model("slowfast_tiny", compile=True)
    assert model.compiled
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        got = model(clips, valid)[0]
    assert not model.compiled
    assert "torch.compile failed (inductor: no working C++ compiler); running eagerly" in caplog.text
    assert np.array_equal(got, want)


@pytest.mark.slow
def test_compiled_model_equals_eager():
    """About a minute on 2 CPU cores (inductor compiles C++); the benchmark measures its speed."""
    clips, valid = clips_of(2, 8, 64, seed=7, padded=2)
    want = clip_model("slowfast_tiny", channels_last=False, fold_bn=False)(clips, valid)[0]
    model = clip_model("slowfast_tiny", compile=True)
    got = model(clips, valid)[0]
    assert model.compiled
    assert relative_l2(got, want) < FAST_TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-2), ("bf16", 3e-2), ("fp16", 1e-2)])
def test_gpu_paths_match_cpu_fp32(precision, tolerance):
    """Pinned staging, non-blocking copies, cudnn.benchmark and autocast on the GPU vs fp32 on the CPU
    (fp32 on a GPU may use TF32 convolutions, hence 1e-2)."""
    clips, valid = clips_of(2, 8, 64, seed=7, padded=2)
    want = clip_model("slowfast_r50", channels_last=False, fold_bn=False)(clips, valid)[0]
    gpu = clip_model("slowfast_r50", precision=precision, device=torch.device("cuda"))
    for _ in range(2):  # the second call reuses the pinned buffer
        got = gpu(clips, valid)[0]
        assert relative_l2(got, want) < tolerance
    assert torch.backends.cudnn.benchmark


def gapped_convs(model: nn.Module) -> list[str]:
    """Dense, non-pointwise convs with a stride larger than their kernel in some dimension: the shape whose
    AMX bf16 kernel corrupts memory in oneDNN 3.12 (depthwise and 1x1x1 convs use other kernels)."""
    return [
        name
        for name, conv in model.named_modules()
        if isinstance(conv, nn.Conv3d)
        and conv.groups == 1
        and tuple(conv.kernel_size) != (1, 1, 1)
        and any(s > k for s, k in zip(conv.stride, conv.kernel_size, strict=True))
    ]


def test_every_gapped_conv_of_the_zoo_runs_in_fp32_under_cpu_bf16():
    from pipeline.models.registry import list_models
    from pipeline.models.resnet3d import FastToSlowFusion

    found = {}
    for name in list_models():
        if name.startswith("mvitv2_l"):  # 2.8 TFLOPs per clip; its convs are those of mvitv2_b
            continue
        if get_spec(name).arch == "videomae":  # one conv, the patch embedding: kernel = stride (ViT-g: 1B)
            continue
        model = build_model(name)
        modules = dict(model.named_modules())
        for conv_name in gapped_convs(model):
            parent = modules[conv_name.rsplit(".", 1)[0]]
            assert isinstance(parent, FastToSlowFusion) and parent.fp32_under_cpu_bf16, (name, conv_name)
            found[name] = conv_name
    assert "slowfast_r50_4x16" in found and "slowfast_r50" not in found


def test_a_gapped_lateral_conv_computes_in_fp32_under_cpu_bf16_autocast():
    from pipeline.models.resnet3d import FastToSlowFusion

    torch.manual_seed(0)
    fusion = FastToSlowFusion(dim_fast=8, channel_ratio=2, kernel=5, alpha=8).eval()
    seen: list[torch.dtype] = []
    fusion.conv_f2s.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    slow, fast = torch.randn(1, 16, 4, 8, 8), torch.randn(1, 8, 32, 8, 8)
    with torch.inference_mode():
        want = fusion([slow, fast])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fusion([slow.bfloat16(), fast.bfloat16()])[0]
    assert seen == [torch.float32, torch.float32] and got.dtype == torch.bfloat16
    assert relative_l2(got.float().numpy(), want.numpy()) < BF16_TOL


def test_slowfast_4x16_in_bf16_on_cpu_runs_and_matches_fp32():
    """In a child process: oneDNN's heap corruption aborts the interpreter rather than raising."""
    if not cpu_native_bf16():
        pytest.skip("this CPU has no native bf16 (the run is refused there)")
    code = (
        "import numpy as np, torch\n"
        "from pipeline.inference import TorchClipModel\n"
        "from pipeline.models.registry import build_model\n"
        "torch.manual_seed(0)\n"
        "model = build_model('slowfast_r50_4x16')\n"
        "clips = np.random.default_rng(0).integers(0, 256, (2, 32, 128, 128, 3), dtype=np.uint8)\n"
        "valid = np.ones((2, 32), dtype=bool)\n"
        "out = [TorchClipModel(model, device=torch.device('cpu'), mean=[0.45] * 3, std=[0.225] * 3,\n"
        "                      precision=p)(clips, valid)[0] for p in ('bf16', 'fp32')]\n"
        "print(float(np.linalg.norm(out[0] - out[1]) / np.linalg.norm(out[1])))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < BF16_TOL
