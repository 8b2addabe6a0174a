"""pytorchvideo's hub checkpoints: parameter names (`blocks.0.multipathway_blocks.0.conv.weight`, ...)
mapped to PySlowFast's, for the families we have a model for; the others are refused by name."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from pipeline.models.layers import BN_EPS
from pipeline.weights.formats import KeyFormat, register_format
from pipeline.weights.state import CheckpointError, CheckpointState, short_list

# --------------------------------------------------------------------------- pytorchvideo files

# pytorchvideo's hub models (pytorchvideo/models/{resnet,slowfast,x3d}.py, v0.1.5) name their parameters
# by position in `Net.blocks`: the stem is blocks.0, then one block per residual stage (plus a parameter-
# free pool block after res2 in C2D / I3D), then the head. These are renamed to PySlowFast's names.
_PTV_SUPPORTED = ("slowfast", "resnet", "x3d")
# The architectures (ModelSpec.arch) each supported pytorchvideo family's weights fill.
_PTV_ARCHS = {"slowfast": ("slowfast",), "resnet": ("slow", "c2d", "i3d"), "x3d": ("x3d",)}
_PTV_ARCH_NAMES = {
    "slowfast": "SlowFast",
    "resnet": "ResNet (Slow / C2D / I3D)",
    "x3d": "X3D",
    "mvit": "MViT / vision transformer",
    "r2plus1d": "R(2+1)D-50 (bottleneck blocks)",
    "csn": "CSN (channel-separated ResNet)",
    "audio_visual_slowfast": "audio-visual SlowFast",
}
_PTV_STEM = re.compile(r"blocks\.0\.(?:multipathway_blocks\.\d+\.)?(?:conv|norm)\.")
_PTV_TRANSFORMER_PREFIXES = ("cls_positional_encoding.", "patch_embed.patch_model.")
_PTV_PATHWAY = re.compile(r"blocks\.\d+\.multipathway_blocks\.(\d+)\.")
_PTV_STAGE = re.compile(r"blocks\.(\d+)\.(?:multipathway_blocks\.\d+\.)?res_blocks\.")
# Parts of a residual block: pytorchvideo name -> PySlowFast name (X3D's norm_b is Sequential(BN, SE)).
_PTV_BLOCK_PARTS = [
    (re.compile(r"branch1_conv\.(\w+)"), r"branch1.\1"),
    (re.compile(r"branch1_norm\.(\w+)"), r"branch1_bn.\1"),
    (re.compile(r"branch2\.conv_([abc])\.(\w+)"), r"branch2.\1.\2"),
    (re.compile(r"branch2\.norm_([abc])\.(\w+)"), r"branch2.\1_bn.\2"),
    (re.compile(r"branch2\.norm_b\.0\.(\w+)"), r"branch2.b_bn.\1"),
    (re.compile(r"branch2\.norm_b\.1\.block\.0\.(\w+)"), r"branch2.se.fc1.\1"),
    (re.compile(r"branch2\.norm_b\.1\.block\.2\.(\w+)"), r"branch2.se.fc2.\1"),
]
_PTV_X3D_STEM = {"conv.conv_t": "conv_xy", "conv.conv_xy": "conv", "norm": "bn"}  # conv_t is their 1x3x3
_PTV_X3D_HEAD = {"pool.pre_conv": "conv_5", "pool.pre_norm": "conv_5_bn", "pool.post_conv": "lin_5"}
_PTV_FUSION = {"conv_fast_to_slow": "conv_f2s", "norm": "bn"}


def pytorchvideo_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The pytorchvideo network family a state dict's keys show, or None when it is not pytorchvideo's naming.

    Families: slowfast, resnet (Slow / C2D / I3D), x3d, and ones we have no model for: mvit, r2plus1d,
    csn, audio_visual_slowfast.
    """
    keys = list(state)
    if any(k.startswith(_PTV_TRANSFORMER_PREFIXES) for k in keys):
        return "mvit"
    if (
        not keys
        or not all(k.startswith("blocks.") for k in keys)
        or not any(_PTV_STEM.match(k) for k in keys)
    ):
        return None
    pathways = {int(m.group(1)) for k in keys if (m := _PTV_PATHWAY.match(k))}
    if pathways:
        return "slowfast" if len(pathways) == 2 else "audio_visual_slowfast"
    if any(".branch2.conv_b.conv_t." in k for k in keys):
        return "r2plus1d"
    if any(k.startswith("blocks.0.conv.conv_t.") or ".pool.pre_conv." in k for k in keys):
        return "x3d"
    for key, value in state.items():
        if (
            key.endswith(".branch2.conv_b.weight")
            and value.dim() == 5
            and value.shape[1] == 1 < value.shape[0]
        ):
            return "csn"  # depthwise 3x3x3 conv_b
    return "resnet"


def _ptv_block_part(rest: str) -> str | None:
    """PySlowFast name of a residual block's parameter (the part after `res_blocks.N.`), or None."""
    for pattern, replacement in _PTV_BLOCK_PARTS:
        if pattern.fullmatch(rest):
            return pattern.sub(replacement, rest)
    return None


def _ptv_stages(keys: list[str]) -> dict[int, int]:
    """Block index -> PySlowFast stage number (2..5) of the four residual stages."""
    indices = sorted({int(m.group(1)) for k in keys if (m := _PTV_STAGE.match(k))})
    if len(indices) != 4:
        raise ValueError(f"expected 4 residual stages, found {len(indices)} (blocks {indices})")
    return {b: stage for stage, b in enumerate(indices, start=2)}


def _ptv_name(key: str, arch: str, stages: dict[int, int]) -> str | None:
    """PySlowFast name of one pytorchvideo key (None when no rule matches)."""
    if m := re.fullmatch(r"blocks\.(\d+)\.(?:multipathway_blocks\.(\d+)\.)?res_blocks\.(\d+)\.(.+)", key):
        block, pathway, index, rest = m.groups()
        part = _ptv_block_part(rest)
        if part is None or int(block) not in stages:
            return None
        return f"s{stages[int(block)]}.pathway{pathway or 0}_res{index}.{part}"
    if m := re.fullmatch(r"blocks\.\d+\.proj\.(weight|bias)", key):
        return f"head.projection.{m.group(1)}"
    if arch == "slowfast":
        if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.(\d+)\.(conv|norm)\.(\w+)", key):
            return f"s1.pathway{m[1]}_stem.{'bn' if m[2] == 'norm' else 'conv'}.{m[3]}"
        if m := re.fullmatch(r"blocks\.(\d+)\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)", key):
            stage = 1 if m[1] == "0" else stages.get(int(m[1]))
            return None if stage is None else f"s{stage}_fuse.{_PTV_FUSION[m[2]]}.{m[3]}"
        return None
    if arch == "x3d":
        if m := re.fullmatch(r"blocks\.0\.(conv\.conv_t|conv\.conv_xy|norm)\.(\w+)", key):
            return f"s1.pathway0_stem.{_PTV_X3D_STEM[m[1]]}.{m[2]}"
        if m := re.fullmatch(r"blocks\.\d+\.(pool\.pre_conv|pool\.pre_norm|pool\.post_conv)\.(\w+)", key):
            return f"head.{_PTV_X3D_HEAD[m[1]]}.{m[2]}"
        return None
    if m := re.fullmatch(r"blocks\.0\.(conv|norm)\.(\w+)", key):
        return f"s1.pathway0_stem.{'bn' if m[1] == 'norm' else 'conv'}.{m[2]}"
    return None


def pytorchvideo_key_map(keys: Iterable[str], arch: str) -> dict[str, str]:
    """pytorchvideo key -> PySlowFast key for every key of one checkpoint; ValueError listing unknown keys.

    arch is pytorchvideo_arch's answer (slowfast, resnet or x3d). Pure: names only, no tensors.
    """
    if arch not in _PTV_SUPPORTED:
        raise ValueError(f"no key map for pytorchvideo arch {arch!r}; known: {', '.join(_PTV_SUPPORTED)}")
    keys = list(keys)
    stages = _ptv_stages(keys)
    names: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        name = _ptv_name(key, arch, stages)
        if name is None:
            unknown.append(key)
        else:
            names[key] = name
    if unknown:
        raise ValueError(f"{len(unknown)} unknown pytorchvideo key(s): {short_list(unknown)}")
    return names


def pytorchvideo_temporal_pool(keys: Iterable[str]) -> int:
    """2 when a pool block sits between res2 and res3 (pytorchvideo's C2D / I3D `stage1_pool`), else 1."""
    stage_blocks = sorted(_ptv_stages(list(keys)))
    return 2 if stage_blocks[1] - stage_blocks[0] > 1 else 1


def _identity_bn(state: dict[str, torch.Tensor], module: str, channels: int, like: torch.Tensor) -> None:
    """Add an exact identity BatchNorm (weight 1, bias 0, mean 0, var 1 - eps) under `module`."""
    state[f"{module}.weight"] = torch.ones(channels, dtype=like.dtype)
    state[f"{module}.bias"] = torch.zeros(channels, dtype=like.dtype)
    state[f"{module}.running_mean"] = torch.zeros(channels, dtype=like.dtype)
    state[f"{module}.running_var"] = torch.full((channels,), 1.0 - BN_EPS, dtype=like.dtype)


def convert_pytorchvideo(path: Path, state: dict[str, torch.Tensor]) -> CheckpointState:
    """A pytorchvideo state dict renamed to PySlowFast keys; an architecture we lack is refused by name."""
    arch = pytorchvideo_arch(state)
    assert arch is not None
    if arch not in _PTV_SUPPORTED:
        supported = ", ".join(_PTV_ARCH_NAMES[a] for a in _PTV_SUPPORTED)
        raise CheckpointError(
            path,
            f"is a pytorchvideo {_PTV_ARCH_NAMES[arch]} checkpoint; this extractor has no such model "
            f"(pytorchvideo checkpoints it reads: {supported})",
        )
    try:
        names = pytorchvideo_key_map(state, arch)
    except ValueError as e:
        raise CheckpointError(path, f"pytorchvideo {_PTV_ARCH_NAMES[arch]} checkpoint: {e}") from e
    converted = {names[key]: value for key, value in state.items()}
    if arch == "x3d":
        # pytorchvideo's X3D has no BN on a strided shortcut that keeps the channel count (res2's first
        # block); PySlowFast's has one: an identity BN there computes exactly what pytorchvideo does.
        for key, value in list(converted.items()):
            if (
                key.endswith(".branch1.weight")
                and key.replace(".branch1.weight", ".branch1_bn.weight") not in converted
            ):
                _identity_bn(converted, key.removesuffix(".weight") + "_bn", value.shape[0], value)
    requires: tuple[tuple[str, object], ...] = ()
    if arch == "resnet":
        requires = (("temporal_pool", pytorchvideo_temporal_pool(state)),)
    return CheckpointState(
        "pytorchvideo",
        converted,
        (),
        requires,
        _PTV_ARCHS[arch],
        f"pytorchvideo {_PTV_ARCH_NAMES[arch]} weights",
    )


register_format(
    KeyFormat("pytorchvideo", lambda state: pytorchvideo_arch(state) is not None, convert_pytorchvideo)
)
