"""Our VideoMAE models equal VideoMAE V2's `modeling_finetune.py` (tests/videomae_reference.py) on the same
random weights and clip: forward_features and logits within 1e-4 (relative L2), for every size at full width
and reduced depth, ViT-B at full depth, layer scale and the no-mean-pooling variant; the size constants of
our registry equal their builders' arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pipeline.models import build_model, get_spec
from pipeline.models.videomae import VideoMAEConfig
from pipeline.weights import load_checkpoint
from tests.reference import relative_error
from tests.videomae_reference import builder_arguments, import_finetune_reference

RTOL = 1e-4
# Our model of each size, and their registered builder of that size.
SIZES = {
    "videomae_s_k400": "vit_small_patch16_224",
    "videomae_b_k400": "vit_base_patch16_224",
    "videomae_l_k400": "vit_large_patch16_224",
    "videomae_h_k400": "vit_huge_patch16_224",
    "videomaev2_g_k710": "vit_giant_patch14_224",
}


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial values for every parameter (their init leaves q/v biases and the head at zero)."""
    g = torch.Generator().manual_seed(seed)
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if id(p) in norm_weights:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(("gamma_1", "gamma_2")):
                p.copy_(0.5 + 0.2 * noise)
            else:
                p.copy_(0.02 * noise)
    return model


def reference_model(builder: str, **overrides: Any) -> nn.Module:
    """Their VisionTransformer as their builder makes it, with overrides (depth, sizes), in eval mode."""
    ref = import_finetune_reference()
    kwargs = {**builder_arguments(builder), **overrides}
    return ref.VisionTransformer(**kwargs).eval()


def compare(
    ours_name: str, theirs: nn.Module, tmp_path: Path, frames: int, size: int, seed: int = 0, **overrides: Any
) -> tuple[float, float]:
    """Load their random state into ours (through our checkpoint loader) and compare one clip."""
    randomize_(theirs, seed)
    path = tmp_path / f"{ours_name}.pth"
    torch.save({"model": theirs.state_dict(), "epoch": 3}, path)
    ours = build_model(ours_name, **overrides)
    report = load_checkpoint(path, ours, require_head=True)
    assert report.format == "videomae" and not report.missing_head and report.ignored == ("epoch",)
    clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        want = theirs.forward_features(clip)
        want_logits = theirs.head(want)
        got = ours.forward_features(ours.pathways(clip))
        got_logits = ours.logits(got)
    assert got.shape == want.shape and got_logits.shape == want_logits.shape
    return relative_error(got, want), relative_error(got_logits, want_logits)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_size_constants_are_their_builders(name: str) -> None:
    """embed dim, depth, heads, MLP ratio (ViT-g: 48/11), patch, q/v bias and LayerNorm eps per size."""
    theirs = builder_arguments(SIZES[name])
    ours = VideoMAEConfig.from_kwargs(dict(get_spec(name).builder_kwargs))
    assert (ours.patch_size, ours.embed_dim, ours.depth, ours.num_heads) == (
        theirs["patch_size"],
        theirs["embed_dim"],
        theirs["depth"],
        theirs["num_heads"],
    )
    assert ours.mlp_ratio == theirs["mlp_ratio"] and ours.qkv_bias == theirs["qkv_bias"]
    assert ours.norm_eps == theirs["norm_layer"].keywords["eps"] == 1e-6
    assert ours.init_values == 0.0 and "init_values" not in theirs  # no layer scale in the released models
    assert get_spec(name).feature_dim == theirs["embed_dim"]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_size_at_full_width_and_two_blocks(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    assert (spec.num_frames, spec.crop_size) == (16, 224)
    theirs = reference_model(
        SIZES[name], depth=2, num_classes=spec.num_classes, all_frames=16, tubelet_size=2, img_size=224
    )
    err, err_logits = compare(name, theirs, tmp_path, 16, 224, depth=2)
    assert err < RTOL and err_logits < RTOL, (err, err_logits)


def test_vit_b_at_full_depth(tmp_path: Path) -> None:
    """The whole ViT-B (12 blocks) on one 16 x 224 x 224 clip."""
    theirs = reference_model("vit_base_patch16_224", num_classes=400, all_frames=16, tubelet_size=2)
    err, err_logits = compare("videomae_b_k400", theirs, tmp_path, 16, 224, seed=3)
    assert err < RTOL and err_logits < RTOL, (err, err_logits)


def test_layer_scale(tmp_path: Path) -> None:
    """init_values > 0: gamma_1 / gamma_2 scale both branches (their Block, same parameter names)."""
    theirs = reference_model(
        "vit_small_patch16_224", depth=2, num_classes=400, all_frames=4, img_size=64, init_values=0.1
    )
    assert "blocks.1.gamma_2" in theirs.state_dict()
    spec = {"num_frames": 4, "crop_size": 64}
    err, err_logits = compare(
        "videomae_s_k400", theirs, tmp_path, 4, 64, seed=5, depth=2, init_values=0.1, **spec
    )
    assert err < RTOL and err_logits < RTOL, (err, err_logits)


def test_without_mean_pooling(tmp_path: Path) -> None:
    """use_mean_pooling=False: their feature is `norm` of the first token (there is no cls token)."""
    theirs = reference_model(
        "vit_small_patch16_224", depth=1, num_classes=7, all_frames=4, img_size=32, use_mean_pooling=False
    )
    err, err_logits = compare(
        "videomae_s_k400",
        theirs,
        tmp_path,
        4,
        32,
        seed=7,
        depth=1,
        num_classes=7,
        num_frames=4,
        crop_size=32,
        use_mean_pooling=False,
        feature_layers=("norm",),
    )
    assert err < RTOL and err_logits < RTOL, (err, err_logits)


def test_position_table_is_theirs_and_not_in_their_state_dict() -> None:
    ref = import_finetune_reference()
    theirs = reference_model("vit_giant_patch14_224", depth=1, num_classes=710)
    assert "pos_embed" not in theirs.state_dict()  # a plain tensor attribute, not saved
    ours = build_model("videomaev2_g_k710", depth=1)
    assert "pos_embed" not in ours.state_dict() and ours.pos_embed.shape == (1, 8 * 16 * 16, 1408)
    assert torch.equal(ours.pos_embed, theirs.pos_embed)
    assert torch.equal(build_model("videomae_tiny").pos_embed, ref.get_sinusoid_encoding_table(8, 32))
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
