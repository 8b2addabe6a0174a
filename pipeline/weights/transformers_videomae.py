"""Hugging Face `transformers`' VideoMAE checkpoints (`pytorch_model.bin` or `model.safetensors` of
`VideoMAEForVideoClassification`) converted to VideoMAE's own names by a pure key map.

Their names (transformers/models/videomae/modeling_videomae.py): `videomae.embeddings.patch_embeddings.
projection`, per layer `videomae.encoder.layer.N.` + `attention.attention.{query,key,value}` (separate
linears; q and v biases, none on k: `query.bias` / `value.bias` in transformers 5, `q_bias` / `v_bias`
beside bias-free linears in the files written by transformers 4), `attention.output.dense`,
`intermediate.dense`, `output.dense`, `layernorm_before` / `layernorm_after`, then `fc_norm` and
`classifier` (or `videomae.layernorm` without mean pooling). q, k and v are fused into VideoMAE's one
`attn.qkv` weight with `attn.q_bias` / `attn.v_bias`.

Note: transformers builds these LayerNorms with eps 1e-12 (`fc_norm`: 1e-5); the original models and ours
use 1e-6. The weights are the same; the features differ from transformers' by that eps only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from pipeline.weights.formats import KeyFormat, register_format
from pipeline.weights.state import CheckpointError, CheckpointState, short_list
from pipeline.weights.videomae import ARCHS, PRETRAINING_REASON

FAMILY = "Hugging Face transformers VideoMAE weights"

_PREFIX = r"(?:videomae\.)?"
_LAYER = re.compile(_PREFIX + r"encoder\.layer\.(\d+)\.(.+)")
_DETECT = re.compile(
    _PREFIX + r"(?:encoder\.layer\.\d+\.attention\.attention\.|embeddings\.patch_embeddings\.)"
)
# Per-layer parts that rename one to one: transformers name -> VideoMAE name (after `blocks.N.`).
_LAYER_PARTS = {
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "attention.attention.q_bias": "attn.q_bias",
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias",
    "attention.attention.value.bias": "attn.v_bias",
}
_QKV = ("query", "key", "value")
_TOP = {
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HEAD = {
    "fc_norm.weight": "fc_norm.weight",
    "fc_norm.bias": "fc_norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
# VideoMAEForPreTraining's own parts (beside its `videomae.` encoder).
_PRETRAIN = re.compile(r"(?:encoder_to_decoder\.|mask_token$|decoder\.)")


def is_transformers_naming(state: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys are transformers' VideoMAE names."""
    return any(_DETECT.match(k) for k in state)


def transformers_key_map(keys: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """VideoMAE key -> the transformers keys it is made of (three for a fused qkv weight, else one).

    Pure: names only. ValueError listing the keys no rule takes, and for a k bias (VideoMAE has none).
    """
    names: dict[str, tuple[str, ...]] = {}
    unknown: list[str] = []
    qkv: dict[str, dict[str, str]] = {}
    for key in keys:
        bare = key.removeprefix("videomae.")
        if key in _HEAD:
            names[_HEAD[key]] = (key,)
        elif bare in _TOP:
            names[_TOP[bare]] = (key,)
        elif (m := _LAYER.fullmatch(key)) is not None:
            block, part = m.groups()
            if part in _LAYER_PARTS:
                names[f"blocks.{block}.{_LAYER_PARTS[part]}"] = (key,)
            elif (q := re.fullmatch(r"attention\.attention\.(query|key|value)\.weight", part)) is not None:
                qkv.setdefault(block, {})[q.group(1)] = key
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for block, parts in qkv.items():
        if set(parts) != set(_QKV):
            unknown.extend(parts.values())
            continue
        names[f"blocks.{block}.attn.qkv.weight"] = tuple(parts[p] for p in _QKV)
    if unknown:
        raise ValueError(
            f"{len(unknown)} unknown transformers VideoMAE key(s): {short_list(sorted(unknown))}"
        )
    return names


def convert_transformers(path: Path, state: dict[str, torch.Tensor]) -> CheckpointState:
    """A transformers VideoMAE state dict under VideoMAE's names; pre-training files are refused."""
    keys = list(state)
    if any(_PRETRAIN.match(k) for k in keys):
        raise CheckpointError(
            path, "(Hugging Face transformers VideoMAEForPreTraining) " + PRETRAINING_REASON
        )
    if "fc_norm.weight" not in state and not any(k.endswith("layernorm.weight") for k in keys):
        raise CheckpointError(
            path,
            "is a Hugging Face transformers VideoMAEModel backbone without its classification wrapper "
            "(no fc_norm): fine-tuned features need VideoMAEForVideoClassification weights",
        )
    ignored = [
        k for k in keys if re.fullmatch(_PREFIX + r"encoder\.layer\.\d+\.attention\.attention\.key\.bias", k)
    ]
    for key in ignored:  # a k bias can only be zero in a VideoMAE (their reference has none)
        if torch.count_nonzero(state[key]):
            raise CheckpointError(path, f"{key} is non-zero, but VideoMAE's attention has no key bias")
    try:
        names = transformers_key_map(k for k in keys if k not in ignored)
    except ValueError as e:
        raise CheckpointError(path, str(e)) from e
    converted = {
        name: torch.cat([state[k] for k in parts]) if len(parts) > 1 else state[parts[0]]
        for name, parts in names.items()
    }
    return CheckpointState("transformers", converted, tuple(ignored), (), ARCHS, FAMILY)


register_format(KeyFormat("transformers", is_transformers_naming, convert_transformers))
