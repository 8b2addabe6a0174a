"""VideoMAE / VideoMAE V2's own checkpoints (their `modeling_finetune.py` names, which our `videomae` models
share): recognised by their keys so that they meet only a videomae model, and refused in one line when they
are pre-training checkpoints (an encoder-decoder: no fine-tuned `fc_norm`, no classifier).

PySlowFast's MViT also has `patch_embed.proj.weight` and `blocks.N.attn.qkv.weight`; VideoMAE's blocks have
separate `attn.q_bias` / `attn.v_bias` (a bias-free qkv linear), its pooled norm is `fc_norm`, and it has no
`cls_token`, `norm_stem` or `rel_pos_*`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.models.videomae import sinusoid_table
from pipeline.weights.formats import KeyFormat, register_format
from pipeline.weights.state import CheckpointError, CheckpointState

FAMILY = "VideoMAE ViT weights"
ARCHS = ("videomae",)

_QV_BIAS = re.compile(r"(?:encoder\.)?blocks\.\d+\.attn\.[qv]_bias")
_BLOCK_QKV = re.compile(r"blocks\.\d+\.attn\.qkv\.weight")
_MVIT_ONLY = ("cls_token", "norm_stem.", "pos_embed_spatial", "pos_embed_temporal", "head.projection.")
# Keys only VideoMAE's pre-training model has (modeling_pretrain.py: PretrainVisionTransformer).
_PRETRAIN_KEYS = ("mask_token", "encoder_to_decoder.weight")
_PRETRAIN_PREFIXES = ("encoder.", "decoder.")
_COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper, as their fine-tuning script strips it


def is_videomae_naming(state: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys are VideoMAE's (fine-tuned or pre-training), from the keys alone."""
    keys = [k.removeprefix(_COMPILED_PREFIX) for k in state]
    if any(_QV_BIAS.fullmatch(k) for k in keys):
        return True
    if any(k.startswith(_MVIT_ONLY) or ".rel_pos_" in k for k in keys):
        return False
    # A ViT without q / v biases (qkv_bias=False): the mean-pooling norm still tells it from an MViT.
    return (
        "fc_norm.weight" in keys
        and "patch_embed.proj.weight" in keys
        and any(_BLOCK_QKV.fullmatch(k) for k in keys)
    )


def is_pretraining(keys: list[str]) -> bool:
    """True for a pre-training checkpoint: encoder/decoder, or a backbone with neither fc_norm nor head."""
    if any(k in _PRETRAIN_KEYS or k.startswith(_PRETRAIN_PREFIXES) for k in keys):
        return True
    return "fc_norm.weight" not in keys and "head.weight" not in keys


PRETRAINING_REASON = (
    "is a VideoMAE pre-training checkpoint (masked-autoencoder encoder/decoder, no fine-tuned fc_norm or "
    "classifier); fine-tuned features need a fine-tuned checkpoint (e.g. the *_ft / distilled files of "
    "the model zoo)"
)


def _drop_fixed_pos_embed(path: Path, state: dict[str, torch.Tensor], ignored: list[str]) -> None:
    """Their position table is fixed; a saved copy of it is ignored, a learned one is refused."""
    value = state.pop("pos_embed", None)
    if value is None:
        return
    if value.dim() == 3 and value.shape[0] == 1:
        table = sinusoid_table(value.shape[1], value.shape[2])
        if torch.allclose(value.float(), table, atol=1e-5):
            ignored.append("pos_embed")
            return
    raise CheckpointError(
        path,
        f"holds a learned pos_embed {tuple(value.shape)} (use_learnable_pos_emb); this extractor's VideoMAE "
        "models use the fixed sine-cosine table",
    )


def convert_videomae(path: Path, state: dict[str, torch.Tensor]) -> CheckpointState:
    """VideoMAE's names are ours: strip torch.compile's prefix, check it is fine-tuned, drop a fixed table."""
    state = {k.removeprefix(_COMPILED_PREFIX): v for k, v in state.items()}
    if is_pretraining(list(state)):
        raise CheckpointError(path, PRETRAINING_REASON)
    ignored: list[str] = []
    _drop_fixed_pos_embed(path, state, ignored)
    return CheckpointState("videomae", state, tuple(ignored), (), ARCHS, FAMILY)


register_format(KeyFormat("videomae", is_videomae_naming, convert_videomae))
