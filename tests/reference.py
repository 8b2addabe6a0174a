"""Reference models from the test-only PyPI package slowfast==1.0 (PySlowFast, Dec 2019).

`reference_model(arch, num_frames, crop, ...)` builds their network with our chosen options and returns it
with `features_fn(inputs) -> (features, logits)`, read by a hook on `head.projection` (their eval forward
ends in a softmax). Tests call `require_reference()` first: it skips when slowfast is not importable, and
fails instead under CI=true. `pyslowfast_source()` finds PySlowFast master (../shared/pyslowfast).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from pipeline.bench.seed_baseline import PYSLOWFAST_ARCH, import_pyslowfast

STUB_DIR = Path(__file__).parent / "reference_stub"
REPO_ROOT = Path(__file__).resolve().parent.parent
# PySlowFast GitHub master, beside the checkout (also in CI); PYSLOWFAST_SRC may point elsewhere.
PYSLOWFAST_ENV = "PYSLOWFAST_SRC"
DEFAULT_PYSLOWFAST = REPO_ROOT.parent / "shared" / "pyslowfast"

# Our arch name -> PySlowFast 1.0 MODEL.ARCH (our "c2d" is their "c2d_nopool"): one map with the benchmark's
ARCH_TO_REFERENCE = PYSLOWFAST_ARCH

FeaturesFn = Callable[[Sequence[Tensor]], tuple[Tensor, Tensor]]


def _import_reference() -> tuple[bool, str]:
    """Try importing slowfast==1.0 (with a detectron2 stand-in where it is absent); (ok, reason)."""
    try:
        import_pyslowfast()
        import slowfast.config.defaults  # noqa: F401
    except Exception as exc:  # any import-time failure means "no reference here"
        return False, f"slowfast==1.0 reference not importable: {type(exc).__name__}: {exc}"
    return True, ""


def in_ci() -> bool:
    """True when the CI variable says so (CI=true / 1 / yes): a missing reference then fails the test."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """pytest.skip(reason) on a developer machine; pytest.fail(reason) in CI, where no reference may skip."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: reference tests must run)")
    pytest.skip(reason)


def require_reference() -> None:
    """Skip (fail under CI=true) with the reason when the slowfast==1.0 reference cannot be imported."""
    ok, reason = _import_reference()
    if not ok:
        skip_or_fail(reason)


def pyslowfast_source() -> Path:
    """PySlowFast master: $PYSLOWFAST_SRC, else ../shared/pyslowfast from the repo root; skip/fail if absent."""
    configured = os.environ.get(PYSLOWFAST_ENV)
    source = Path(configured).expanduser() if configured else DEFAULT_PYSLOWFAST
    if not (source / "slowfast" / "models" / "video_model_builder.py").is_file():
        how = (
            f"${PYSLOWFAST_ENV}={configured}"
            if configured
            else f"{DEFAULT_PYSLOWFAST} (set ${PYSLOWFAST_ENV})"
        )
        skip_or_fail(f"PySlowFast master not found at {how}")
    return source


def reference_cfg(
    arch: str,
    num_frames: int,
    crop: int,
    *,
    depth: int = 50,
    width_per_group: int = 64,
    alpha: int = 4,
    beta_inv: int = 8,
    fusion_kernel: int = 5,
    fusion_conv_channel_ratio: int = 2,
    num_block_temp_kernel: Sequence[Sequence[int]] | None = None,
    nonlocal_location: Sequence[Sequence[Sequence[int]]] | None = None,
    nonlocal_instantiation: str = "softmax",
    num_classes: int = 400,
) -> Any:
    """Their config for `arch` (one of their MODEL.ARCH names), like their configs/Kinetics/c2 files."""
    require_reference()
    from slowfast.config.defaults import get_cfg

    cfg = get_cfg()
    pathways = 2 if arch == "slowfast" else 1
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    cfg.NUM_GPUS = 0
    cfg.MODEL.ARCH = arch
    cfg.MODEL.NUM_CLASSES = num_classes
    cfg.DATA.NUM_FRAMES = num_frames
    cfg.DATA.CROP_SIZE = crop
    cfg.DATA.INPUT_CHANNEL_NUM = [3] * pathways
    cfg.RESNET.DEPTH = depth
    cfg.RESNET.WIDTH_PER_GROUP = width_per_group
    cfg.RESNET.NUM_GROUPS = 1
    cfg.RESNET.NUM_BLOCK_TEMP_KERNEL = [
        list(stage) for stage in (num_block_temp_kernel or [[n] * pathways for n in blocks])
    ]
    cfg.RESNET.SPATIAL_STRIDES = [[1] * pathways] + [[2] * pathways] * 3
    cfg.RESNET.SPATIAL_DILATIONS = [[1] * pathways] * 4
    cfg.NONLOCAL.LOCATION = [
        [list(p) for p in stage] for stage in (nonlocal_location or [[[]] * pathways] * 4)
    ]
    cfg.NONLOCAL.GROUP = [[1] * pathways] * 4
    cfg.NONLOCAL.INSTANTIATION = nonlocal_instantiation
    cfg.SLOWFAST.ALPHA = alpha
    cfg.SLOWFAST.BETA_INV = beta_inv
    cfg.SLOWFAST.FUSION_KERNEL_SZ = fusion_kernel
    cfg.SLOWFAST.FUSION_CONV_CHANNEL_RATIO = fusion_conv_channel_ratio
    return cfg


def reference_model(
    arch: str, num_frames: int, crop: int, **cfg_options: Any
) -> tuple[nn.Module, FeaturesFn]:
    """Their model in eval mode (random init) and features_fn(inputs) -> (pooled features, logits)."""
    cfg = reference_cfg(arch, num_frames, crop, **cfg_options)
    from slowfast.models.video_model_builder import ResNetModel, SlowFastModel

    model = (SlowFastModel if arch == "slowfast" else ResNetModel)(cfg).eval()

    def features_fn(inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        out = module_outputs(model, inputs, ["head.projection"], with_input=True)
        features, logits = out["head.projection:input"], out["head.projection"]
        return features.reshape(features.shape[0], -1), logits.reshape(logits.shape[0], -1)

    return model, features_fn


def reference_options(arch: str, builder_kwargs: Mapping[str, Any], alpha: int | None) -> dict[str, Any]:
    """Translate our spec's arch options into reference_cfg keywords."""
    kw = dict(builder_kwargs)
    unsupported = {"blocks", "num_groups", "temporal_pool"} & set(kw)
    if unsupported:
        raise ValueError(f"no slowfast==1.0 equivalent for options {sorted(unsupported)}")
    options: dict[str, Any] = {}
    for key in (
        "depth",
        "width_per_group",
        "num_block_temp_kernel",
        "nonlocal_location",
        "nonlocal_instantiation",
    ):
        if key in kw:
            options[key] = kw[key]
    if arch == "slowfast":
        options.update(
            alpha=alpha,
            beta_inv=kw.get("beta_inv", 8),
            fusion_kernel=kw.get("fusion_kernel", 5),
            fusion_conv_channel_ratio=kw.get("fusion_conv_channel_ratio", 2),
        )
    return options


def reference_for_spec(
    name: str, num_frames: int | None = None, crop: int | None = None
) -> tuple[nn.Module, FeaturesFn]:
    """Their model matching our registered model `name` (num_classes must be an int)."""
    from pipeline.models.registry import get_spec

    spec = get_spec(name)
    if not isinstance(spec.num_classes, int):
        raise ValueError(f"model {name!r}: slowfast==1.0 has no multi-head equivalent")
    options = reference_options(spec.arch, spec.builder_kwargs, spec.alpha)
    return reference_model(
        ARCH_TO_REFERENCE[spec.arch],
        num_frames or spec.num_frames,
        crop or spec.crop_size,
        num_classes=spec.num_classes,
        **options,
    )


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN affine/statistics and conv/linear biases non-trivial random values (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.02)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.02)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            elif isinstance(m, nn.Conv3d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.02)
    return model


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """||actual - expected|| / ||expected||."""
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-12))


def module_outputs(
    model: nn.Module, inputs: Sequence[Tensor], names: Sequence[str], *, with_input: bool = False
) -> dict[str, Any]:
    """One forward of `model(list(inputs))`; the outputs (and, with_input, first inputs as
    "<name>:input") of the named submodules, e.g. "s5" or "head.projection"."""
    seen: dict[str, Any] = {}

    def keep(value: Any) -> Any:
        return [t.detach().clone() for t in value] if isinstance(value, list) else value.detach().clone()

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            seen[name] = keep(output)
            if with_input:
                seen[f"{name}:input"] = keep(args[0])

        return hook

    handles = [model.get_submodule(name).register_forward_hook(make_hook(name)) for name in names]
    try:
        with torch.no_grad():
            model(list(inputs))
    finally:
        for handle in handles:
            handle.remove()
    return seen
