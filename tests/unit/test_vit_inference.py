"""TorchClipModel on a ViT (VideoMAE) does no pointless work: no batch norm to fold (no copy of the model, no
probe clip), no conv + ReLU block to fuse (no probe clip either), and the clip's layout does not change its
features; and the FLOP count includes attention's two matrix products, which fvcore leaves out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.bench.model import attention_macs, flop_analysis, gflops_per_clip, stage_profile
from pipeline.inference import TorchClipModel
from pipeline.models import build_model
from tests.helpers import clips_of

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_a_vit_is_taken_as_it_is() -> None:
    torch.manual_seed(0)
    model = build_model("videomae_tiny")
    calls: list[int] = []
    model.patch_embed.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    clip_model = TorchClipModel(model, device=torch.device("cpu"), mean=IMAGENET[0], std=IMAGENET[1])
    assert clip_model.model is model  # not a folded copy
    assert (clip_model.folded_norms, clip_model.fused_blocks) == (0, 0)
    assert calls == []  # no probe clip ran through it
    clips, valid = clips_of(rows=3, T=4, size=32, padded=0)
    features, _ = clip_model(clips, valid)
    assert calls == [3] and features.shape == (3, 32)


@pytest.mark.parametrize("precision", ["fp32"])
def test_the_clip_layout_does_not_change_a_vits_features(precision: str) -> None:
    """channels_last_3d (the CPU default) only changes the patch embedding's memory order: the features
    equal the contiguous layout's within float32 rounding."""
    torch.manual_seed(0)
    model = build_model("videomae_tiny")
    clips, valid = clips_of(rows=2, T=4, size=32, padded=0)
    rows = {}
    for layout in (True, False):
        clip_model = TorchClipModel(
            model, device=torch.device("cpu"), mean=IMAGENET[0], std=IMAGENET[1], channels_last=layout
        )
        rows[layout], _ = clip_model(clips, valid)
    error = np.linalg.norm(rows[True] - rows[False]) / np.linalg.norm(rows[False])
    assert error < 1e-5


def test_attention_is_counted_as_its_two_matrix_products() -> None:
    """videomae_tiny at 4 x 32 x 32: 2 x 2 x 2 = 8 tokens (tubelet 2, patch 16), 2 heads of 16 channels, 2 blocks; the handle
    adds heads x L^2 x head_dim multiply-adds for q k^T and as many for the weights times v, per block."""
    model = build_model("videomae_tiny")
    analysis = flop_analysis(model, 4, 32)
    assert analysis is not None
    per_op = analysis.by_operator()
    heads, tokens, head_dim, blocks = 2, 8, 16, 2
    assert per_op["scaled_dot_product_attention"] == blocks * 2 * heads * tokens**2 * head_dim
    assert "aten::scaled_dot_product_attention" not in analysis.unsupported_ops()
    # the linears: qkv (3 C^2), proj (C^2), MLP (8 C^2) per token and block; the patch embedding; fc_norm
    dim = 32
    linears = blocks * tokens * 12 * dim * dim
    assert per_op["linear"] == linears
    assert gflops_per_clip(model, 4, 32) == pytest.approx(analysis.total() / 1e9)


def test_the_attention_handle_on_cross_attention_shapes() -> None:
    """Queries (B, h, L, E), keys (B, h, S, E), values (B, h, S, Ev): B h L S (E + Ev) multiply-adds."""

    class Value:
        def __init__(self, *shape: int) -> None:
            self.shape = shape

        def type(self) -> Value:
            return self

        def sizes(self) -> tuple[int, ...]:
            return self.shape

    inputs = [Value(2, 3, 5, 8), Value(2, 3, 7, 8), Value(2, 3, 7, 4)]
    assert attention_macs(inputs, []) == 2 * 3 * 5 * 7 * (8 + 4)


def test_the_stage_profile_times_a_vits_blocks_one_by_one() -> None:
    torch.manual_seed(0)
    clip_model = TorchClipModel(
        build_model("videomae_tiny"), device=torch.device("cpu"), mean=IMAGENET[0], std=IMAGENET[1]
    )
    rows = stage_profile(clip_model, 1, 4, 32, repeats=1)
    names = [r["stage"] for r in rows]
    assert names == ["patch_embed", "blocks.0", "blocks.1", "fc_norm", "(outside stages)"]
    total = gflops_per_clip(clip_model.model, 4, 32)
    assert total and sum(r["gflop"] for r in rows) == pytest.approx(2 * total, rel=0.01)
