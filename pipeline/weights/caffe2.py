"""Caffe2 `.pkl` checkpoints of PySlowFast's model zoo: blob names mapped to PySlowFast's parameter names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.weights.state import CheckpointError, CheckpointState, short_list

_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_CONV = {"w": "weight", "b": "bias"}
_BN_SUFFIX = r"_bn_(?P<bn>s|b|rm|riv)"
_CONV_SUFFIX = r"_(?P<conv>w|b)"
_BRANCH = {"1": "branch1", "2a": "branch2.a", "2b": "branch2.b", "2c": "branch2.c"}


def _pathway(m: re.Match[str]) -> int:
    return 1 if m.group("t") else 0


# (pattern for the module part, function building the PySlowFast module name). Each pattern is tried
# with a BN suffix and a conv suffix; a BN module name gets ".bn"-style names from the caller's table.
_MODULE_RULES: list[tuple[str, Any, Any]] = [
    # lateral fusion after the stem (fast -> slow), then after stage S's last block
    (r"t_pool1_subsample", "s1_fuse.bn", "s1_fuse.conv_f2s"),
    (
        r"t_res(?P<s>\d+)_\d+_branch2c_bn_subsample",
        lambda m: f"s{m['s']}_fuse.bn",
        lambda m: f"s{m['s']}_fuse.conv_f2s",
    ),
    # stem: conv1 (or res_conv1) + res_conv1_bn, "t_" = fast pathway
    (
        r"(?P<t>t_)?res_conv1",
        lambda m: f"s1.pathway{_pathway(m)}_stem.bn",
        lambda m: f"s1.pathway{_pathway(m)}_stem.conv",
    ),
    (r"(?P<t>t_)?conv1", None, lambda m: f"s1.pathway{_pathway(m)}_stem.conv"),
    # bottleneck blocks
    (
        r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch(?P<br>1|2a|2b|2c)",
        lambda m: f"s{m['s']}.pathway{_pathway(m)}_res{m['i']}.{_BRANCH[m['br']]}_bn",
        lambda m: f"s{m['s']}.pathway{_pathway(m)}_res{m['i']}.{_BRANCH[m['br']]}",
    ),
    # non-local blocks (slow pathway only): theta/phi/g/out convs, then bn
    (
        r"nonlocal_conv(?P<s>\d+)_(?P<i>\d+)",
        lambda m: f"s{m['s']}.pathway0_nonlocal{m['i']}.bn",
        None,
    ),
    (
        r"nonlocal_conv(?P<s>\d+)_(?P<i>\d+)_(?P<op>theta|phi|g|out)",
        None,
        lambda m: f"s{m['s']}.pathway0_nonlocal{m['i']}.conv_{m['op']}",
    ),
    (r"pred", None, "head.projection"),
]

_COMPILED_RULES = [
    (
        re.compile(pattern + _BN_SUFFIX) if bn is not None else None,
        re.compile(pattern + _CONV_SUFFIX) if conv is not None else None,
        bn,
        conv,
    )
    for pattern, bn, conv in _MODULE_RULES
]


def _is_ignored_blob(name: str) -> bool:
    """Optimizer state and bookkeeping blobs that hold no model weights."""
    return "momentum" in name or name in ("lr", "model_iter")


def caffe2_to_pyslowfast(name: str) -> str | None:
    """PySlowFast state-dict key for a Caffe2 blob name; None for optimizer blobs; ValueError if unknown."""
    if _is_ignored_blob(name):
        return None
    for bn_re, conv_re, bn, conv in _COMPILED_RULES:
        if bn_re is not None and (m := bn_re.fullmatch(name)):
            module = bn(m) if callable(bn) else bn
            return f"{module}.{_BN[m['bn']]}"
        if conv_re is not None and (m := conv_re.fullmatch(name)):
            module = conv(m) if callable(conv) else conv
            return f"{module}.{_CONV[m['conv']]}"
    raise ValueError(f"unknown Caffe2 blob {name!r}")


def convert_caffe2(path: Path, blobs: dict[str, Any]) -> CheckpointState:
    """Caffe2 blobs renamed to PySlowFast keys, as tensors."""
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for blob, value in blobs.items():
        blob = str(blob)
        try:
            key = caffe2_to_pyslowfast(blob)
        except ValueError:
            unknown.append(blob)
            continue
        if key is None:
            ignored.append(blob)
            continue
        if not isinstance(value, np.ndarray) or value.dtype.hasobject:
            raise CheckpointError(path, f"blob {blob!r} is a {type(value).__name__}, not a numeric array")
        if key in state:
            raise CheckpointError(path, f"blobs {source[key]!r} and {blob!r} both map to {key!r}")
        state[key] = torch.from_numpy(value.astype(value.dtype.newbyteorder("="), copy=True))
        source[key] = blob
    if unknown:
        raise CheckpointError(path, f"{len(unknown)} unknown Caffe2 blob(s): {short_list(unknown)}")
    if not state:
        raise CheckpointError(path, "holds no model blobs")
    return CheckpointState("caffe2", state, tuple(ignored))
