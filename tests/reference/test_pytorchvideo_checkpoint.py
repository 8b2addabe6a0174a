"""pytorchvideo-named checkpoints: key families, the rename to PySlowFast names, strict loading, and equality
of our models with pytorchvideo==0.1.5's hub models on random weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.models import build_model, get_spec
from pipeline.models.resnet3d import window_average
from pipeline.weights import CheckpointError, load_checkpoint, read_state_dict
from pipeline.weights.pytorchvideo import pytorchvideo_arch, pytorchvideo_key_map, pytorchvideo_temporal_pool
from tests.pytorchvideo_reference import pytorchvideo_hub
from tests.reference import randomize_, relative_error

RTOL = 1e-4


def _state(*keys: str) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(1) for k in keys}


SLOWFAST_KEYS = [
    "blocks.0.multipathway_blocks.0.conv.weight",
    "blocks.0.multipathway_blocks.1.norm.running_var",
    "blocks.0.multipathway_fusion.conv_fast_to_slow.weight",
    "blocks.3.multipathway_fusion.norm.bias",
    "blocks.1.multipathway_blocks.0.res_blocks.0.branch1_conv.weight",
    "blocks.1.multipathway_blocks.1.res_blocks.0.branch1_norm.num_batches_tracked",
    "blocks.2.multipathway_blocks.0.res_blocks.3.branch2.conv_a.weight",
    "blocks.3.multipathway_blocks.1.res_blocks.22.branch2.norm_b.running_mean",
    "blocks.4.multipathway_blocks.0.res_blocks.2.branch2.norm_c.weight",
    "blocks.6.proj.weight",
]
SLOWFAST_NAMES = [
    "s1.pathway0_stem.conv.weight",
    "s1.pathway1_stem.bn.running_var",
    "s1_fuse.conv_f2s.weight",
    "s4_fuse.bn.bias",
    "s2.pathway0_res0.branch1.weight",
    "s2.pathway1_res0.branch1_bn.num_batches_tracked",
    "s3.pathway0_res3.branch2.a.weight",
    "s4.pathway1_res22.branch2.b_bn.running_mean",
    "s5.pathway0_res2.branch2.c_bn.weight",
    "head.projection.weight",
]
# C2D / I3D: a parameter-free pool block (blocks.2) after res2 shifts the later stages and the head.
POOLED_RESNET_KEYS = [
    "blocks.0.conv.weight",
    "blocks.0.norm.bias",
    "blocks.1.res_blocks.0.branch1_conv.weight",
    "blocks.3.res_blocks.0.branch2.conv_b.weight",
    "blocks.4.res_blocks.5.branch2.norm_a.weight",
    "blocks.5.res_blocks.2.branch2.conv_c.weight",
    "blocks.6.proj.bias",
]
POOLED_RESNET_NAMES = [
    "s1.pathway0_stem.conv.weight",
    "s1.pathway0_stem.bn.bias",
    "s2.pathway0_res0.branch1.weight",
    "s3.pathway0_res0.branch2.b.weight",
    "s4.pathway0_res5.branch2.a_bn.weight",
    "s5.pathway0_res2.branch2.c.weight",
    "head.projection.bias",
]
X3D_KEYS = [
    "blocks.0.conv.conv_t.weight",  # pytorchvideo's conv_t is the 1x3x3 spatial conv
    "blocks.0.conv.conv_xy.weight",  # and conv_xy the depthwise temporal one
    "blocks.0.norm.weight",
    "blocks.1.res_blocks.0.branch2.norm_b.0.running_var",
    "blocks.1.res_blocks.0.branch2.norm_b.1.block.0.weight",
    "blocks.2.res_blocks.2.branch2.norm_b.1.block.2.bias",
    "blocks.3.res_blocks.0.branch1_norm.weight",
    "blocks.4.res_blocks.1.branch2.conv_b.weight",
    "blocks.5.pool.pre_conv.weight",
    "blocks.5.pool.pre_norm.running_mean",
    "blocks.5.pool.post_conv.weight",
    "blocks.5.proj.weight",
]
X3D_NAMES = [
    "s1.pathway0_stem.conv_xy.weight",
    "s1.pathway0_stem.conv.weight",
    "s1.pathway0_stem.bn.weight",
    "s2.pathway0_res0.branch2.b_bn.running_var",
    "s2.pathway0_res0.branch2.se.fc1.weight",
    "s3.pathway0_res2.branch2.se.fc2.bias",
    "s4.pathway0_res0.branch1_bn.weight",
    "s5.pathway0_res1.branch2.b.weight",
    "head.conv_5.weight",
    "head.conv_5_bn.running_mean",
    "head.lin_5.weight",
    "head.projection.weight",
]


@pytest.mark.parametrize(
    ("arch", "keys", "names"),
    [
        ("slowfast", SLOWFAST_KEYS, SLOWFAST_NAMES),
        ("resnet", POOLED_RESNET_KEYS, POOLED_RESNET_NAMES),
        ("x3d", X3D_KEYS, X3D_NAMES),
    ],
)
def test_key_map_table(arch: str, keys: list[str], names: list[str]) -> None:
    assert pytorchvideo_arch(_state(*keys)) == arch
    assert pytorchvideo_key_map(keys, arch) == dict(zip(keys, names, strict=True))


def test_temporal_pool_is_read_from_the_block_layout() -> None:
    assert pytorchvideo_temporal_pool(POOLED_RESNET_KEYS) == 2
    # Slow R50: no pool block, so the stages are blocks 1-4 and the head blocks.5.
    shift = {"0": "0", "1": "1", "3": "2", "4": "3", "5": "4", "6": "5"}
    slow = [re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{shift[m[1]]}.", k) for k in POOLED_RESNET_KEYS]
    assert pytorchvideo_temporal_pool(slow) == 1
    assert pytorchvideo_key_map(slow, "resnet") == dict(zip(slow, POOLED_RESNET_NAMES, strict=True))


def test_unknown_keys_are_listed() -> None:
    keys = [
        *SLOWFAST_KEYS,
        "blocks.2.multipathway_blocks.0.res_blocks.0.branch2.conv_d.weight",
        "blocks.5.extra",
    ]
    with pytest.raises(ValueError, match=r"2 unknown pytorchvideo key\(s\): .*conv_d.weight, blocks.5.extra"):
        pytorchvideo_key_map(keys, "slowfast")
    with pytest.raises(ValueError, match="expected 4 residual stages, found 3"):
        pytorchvideo_key_map([k for k in SLOWFAST_KEYS if not k.startswith("blocks.4.")], "slowfast")


@pytest.mark.parametrize(
    "state",
    [
        _state("s1.pathway0_stem.conv.weight", "head.projection.weight"),  # PySlowFast names
        _state(
            "patch_embed.proj.weight", "blocks.0.norm1.weight", "head.projection.weight"
        ),  # PySlowFast MViT
        _state("blocks.0.norm1.weight", "blocks.0.attn.qkv.weight"),  # no pytorchvideo stem
        {},
    ],
)
def test_other_namings_are_not_pytorchvideo(state: dict[str, torch.Tensor]) -> None:
    assert pytorchvideo_arch(state) is None


def _csn_state() -> dict[str, torch.Tensor]:
    state = _state(*POOLED_RESNET_KEYS)
    state["blocks.1.res_blocks.0.branch2.conv_b.weight"] = torch.zeros(64, 1, 3, 3, 3)
    return state


@pytest.mark.parametrize(
    ("state", "arch", "named"),
    [
        (_state("cls_positional_encoding.cls_token", "blocks.0.attn.qkv.weight"), "mvit", "MViT"),
        (
            _state(*POOLED_RESNET_KEYS, "blocks.1.res_blocks.0.branch2.conv_b.conv_t.weight"),
            "r2plus1d",
            r"R\(2\+1\)D",
        ),
        (_csn_state(), "csn", "CSN"),
        (
            _state(*SLOWFAST_KEYS, "blocks.0.multipathway_blocks.2.conv.weight"),
            "audio_visual_slowfast",
            "audio",
        ),
    ],
)
def test_architecture_we_lack_is_refused_by_name(tmp_path: Path, state, arch: str, named: str) -> None:
    assert pytorchvideo_arch(state) == arch
    path = tmp_path / "weights.bin"
    torch.save({"model_state": state}, path)
    with pytest.raises(
        CheckpointError, match=rf"is a pytorchvideo {named}.* checkpoint; this extractor has no"
    ):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match=f"pytorchvideo {named}"):
        load_checkpoint(path, build_model("slowfast_tiny"), require_head=False)


# --------------------------------------------------------------------------- against pytorchvideo 0.1.5

# (pytorchvideo hub module, builder, our model, our build options, frames); reduced 64x64 input.
HUB_CASES = [
    ("slowfast", "slowfast_r50", "slowfast_r50", {}, 8),
    ("slowfast", "slowfast_r101", "slowfast_r101_8x8", {}, 8),
    ("slowfast", "slowfast_16x8_r101_50_50", "slowfast_r101_16x8", {}, 8),
    ("resnet", "slow_r50", "slow_r50_8x8", {}, 4),
    ("resnet", "c2d_r50", "c2d_r50", {"temporal_pool": 2}, 4),
    ("resnet", "i3d_r50", "i3d_r50", {}, 4),
    ("x3d", "x3d_xs", "x3d_xs", {}, 4),
    ("x3d", "x3d_l", "x3d_l", {}, 4),
]


def _global_head_pool(model: nn.Module, family: str) -> None:
    """Replace their fixed-size head pooling by a global average so any input size works."""
    head_pool = model.blocks[5]
    if family == "slowfast":
        head_pool.pool = nn.ModuleList([nn.AdaptiveAvgPool3d(1), nn.AdaptiveAvgPool3d(1)])
    elif family == "x3d":
        head_pool.pool.pool = nn.AdaptiveAvgPool3d(1)
    else:
        model.blocks[-1].pool = nn.AdaptiveAvgPool3d(1)


def _their_features(model: nn.Module, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features entering their classifier, their logits), read by a hook on the head's `proj`."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen["features"], seen["logits"] = args[0].detach().clone(), out.detach().clone()

    handle = model.blocks[-1].proj.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(list(inputs) if len(inputs) > 1 else inputs[0])  # their forward rewrites the list
    finally:
        handle.remove()
    batch = inputs[0].shape[0]
    return seen["features"].reshape(batch, -1), seen["logits"].reshape(batch, -1)


@pytest.mark.parametrize(("family", "builder", "ours_name", "options", "frames"), HUB_CASES)
def test_hub_model_equals_ours(
    tmp_path: Path, family: str, builder: str, ours_name: str, options: dict, frames: int
) -> None:
    hub = pytorchvideo_hub()
    theirs = randomize_(getattr(hub[family], builder)(pretrained=False), seed=3).eval()
    _global_head_pool(theirs, family)
    their_state = theirs.state_dict()
    if builder == "slowfast_r101":  # the Ego4D features' model, as documented (issue 14)
        assert sum(p.numel() for p in theirs.parameters()) == 62_826_968
        assert len(their_state) == 1274
    path = tmp_path / f"{builder}.pyth"
    torch.save({"model_state": their_state, "epoch": 1}, path)

    ours = build_model(ours_name, **options)
    report = load_checkpoint(path, ours, require_head=True)
    assert report.format == "pytorchvideo"
    assert not report.missing_head
    filled = (
        4 if family == "x3d" else 0
    )  # the identity BN on res2's first shortcut (see pipeline/weights/pytorchvideo.py)
    assert report.n_loaded == len(their_state) + filled

    clips = torch.randn(2, 3, frames, 64, 64, generator=torch.Generator().manual_seed(4))
    inputs = ours.pathways(clips)
    ref_features, ref_logits = _their_features(theirs, inputs)
    with torch.inference_mode():
        features = ours.forward_features(inputs)
        logits = ours.logits(features)
    assert features.shape == ref_features.shape
    assert relative_error(features, ref_features) < RTOL
    assert relative_error(logits, ref_logits) < RTOL


def test_pytorchvideo_c2d_refused_by_a_model_without_temporal_pool(tmp_path: Path) -> None:
    theirs = pytorchvideo_hub()["resnet"].c2d_r50(pretrained=False)
    path = tmp_path / "C2D_8x8_R50.pyth"
    torch.save({"model_state": theirs.state_dict()}, path)
    with pytest.raises(CheckpointError, match="trained with temporal_pool=2 .* c2d_r50 has temporal_pool=1"):
        load_checkpoint(path, build_model("c2d_r50"), require_head=False)


# --------------------------------------------------------------------------- pool_7x7: pytorchvideo's head pooling


def test_window_average_equals_stride_one_avg_pool_then_mean() -> None:
    x = torch.randn(2, 5, 3, 8, 9, generator=torch.Generator().manual_seed(5))
    expected = nn.AvgPool3d((3, 7, 7), stride=1)(x).flatten(2).mean(dim=2)
    assert torch.allclose(window_average(x, 7), expected, rtol=1e-6, atol=1e-7)
    # windows overlap: the centre weighs more than in the global mean
    assert relative_error(window_average(x, 7), x.mean(dim=(2, 3, 4))) > 1e-2
    small = x[..., :7, :7]
    assert torch.allclose(window_average(small, 7), small.mean(dim=(2, 3, 4)), rtol=1e-6, atol=1e-7)
    assert torch.allclose(window_average(x[..., :4, :4], 7), x[..., :4, :4].mean(dim=(2, 3, 4)), atol=1e-7)


class _Ego4dFeatures(nn.Module):
    """What Ego4D puts in place of the head (its `GetFv`): the mean of PoolConcatPathway's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], -1).mean(dim=2)


def test_ego4d_model_entry_equals_pytorchvideo_with_ego4d_head(tmp_path: Path) -> None:
    """slowfast_r101_pytorchvideo's default layer = Ego4D's feature of pytorchvideo's slowfast_r101 (256 crop)."""
    hub = pytorchvideo_hub()["slowfast"]
    spec = get_spec("slowfast_r101_pytorchvideo")
    assert spec.zoo_url == hub.checkpoint_paths["slowfast_r101"]
    assert spec.default_feature_layer == "pool_7x7"
    # 4 frames instead of 32 to keep it quick: their head pool's time kernel shrinks with it (1 slow, 4 fast)
    theirs = hub.slowfast_r101(pretrained=False, head_pool_kernel_sizes=((1, 7, 7), (4, 7, 7)))
    theirs = randomize_(theirs, seed=6).eval()
    path = tmp_path / "SLOWFAST_8x8_R101.pyth"
    torch.save({"model_state": theirs.state_dict()}, path)
    theirs.blocks[6] = _Ego4dFeatures()

    ours = build_model("slowfast_r101_pytorchvideo")
    load_checkpoint(path, ours, require_head=False)
    clips = torch.randn(1, 3, 4, 256, 256, generator=torch.Generator().manual_seed(7))
    inputs = ours.pathways(clips)
    res5: list[torch.Tensor] = []
    handle = ours.s5.register_forward_hook(lambda _m, _a, out: res5.extend(out))
    try:
        with torch.inference_mode():
            expected = theirs(list(inputs))
            features = ours.forward_features(inputs)
    finally:
        handle.remove()
    plain = torch.cat([t.mean(dim=(2, 3, 4)) for t in res5], dim=1)
    assert features.shape == expected.shape == (1, 2304)
    assert relative_error(features, expected) < RTOL
    assert relative_error(plain, expected) > 10 * RTOL  # the global mean is not Ego4D's feature
