"""Strict loading: every parameter of the model filled from the checkpoint, or one CheckpointError.

There is no fallback to random weights. The classifier (``head.projection*``) may be skipped when the
caller does not need it. Training extras (``optimizer_state``, ``epoch``, ``cfg``, an EMA copy of the
weights under an ``ema`` prefix, non-tensor entries of the model state) are not loaded and are named in
one log line; any other key the model lacks is an error, and so are weights of another architecture.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.outputs import file_sha256
from pipeline.weights.caffe2 import convert_caffe2
from pipeline.weights.files import read_caffe2_blobs, read_pytorch, read_safetensors, sniff_format
from pipeline.weights.formats import convert_state
from pipeline.weights.state import LIST_LIMIT, CheckpointError, CheckpointState, short_list

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("head.projection",)  # the classifier's parameters, unless a model names its own


@dataclass(frozen=True)
class LoadReport:
    """What load_checkpoint put into the model."""

    path: Path
    format: str  # "pytorch" | "safetensors" | "caffe2" | a registered foreign naming ("pytorchvideo", ...)
    sha256: str
    n_loaded: int
    ignored: tuple[str, ...]  # checkpoint entries not loaded (optimizer blobs, skipped head, ...)
    missing_head: bool  # the model's classifier was not filled from the checkpoint


def _check_arch(path: Path, checkpoint: CheckpointState, model: nn.Module) -> None:
    """CheckpointError when the keys show weights of another architecture than the model's."""
    spec = getattr(model, "spec", None)
    arch = getattr(spec, "arch", None)
    if spec is None or not checkpoint.archs or arch is None or arch in checkpoint.archs:
        return
    what = checkpoint.family or f"{checkpoint.format} weights"
    raise CheckpointError(
        path,
        f"holds {what} (for arch {', '.join(checkpoint.archs)}), but model {spec.name} is arch {arch}",
    )


# Why a required model attribute matters, for its error line.
REQUIREMENT_HINTS = {
    "temporal_pool": "pytorchvideo's C2D / I3D pool time by 2 after res2, PySlowFast's C2D 'nopool' does not",
    "in_channels": "3 input channels: an RGB model; 2: an optical-flow (x, y) model",
}


def _check_requirements(path: Path, checkpoint: CheckpointState, model: nn.Module) -> None:
    """CheckpointError when the model lacks an attribute value the weights were trained with."""
    for attribute, value in checkpoint.requires:
        have = getattr(model, attribute, None)
        if have is not None and have != value:
            what = f"holds {checkpoint.family}, " if checkpoint.family else ""
            hint = REQUIREMENT_HINTS.get(attribute)
            raise CheckpointError(
                path,
                f"{what}was trained with {attribute}={value} but {type(model).__name__} "
                f"{getattr(getattr(model, 'spec', None), 'name', '')!s} has {attribute}={have}"
                + (f" ({hint})" if hint else ""),
            )


def read_state_dict(path: Path | str) -> CheckpointState:
    """Sniff and read a checkpoint; tensors keyed by our parameter names (no model needed)."""
    path = Path(path)
    container = sniff_format(path)
    if container == "caffe2":
        return convert_caffe2(path, read_caffe2_blobs(path))
    if container == "safetensors":
        return convert_state(path, read_safetensors(path), [], "safetensors")
    state, left = read_pytorch(path)
    return convert_state(path, state, left)


def is_head_key(key: str, prefixes: tuple[str, ...] = HEAD_PREFIXES) -> bool:
    """True for the classifier's keys (head.projection, head.projection_verb, ...), not X3D's lin_5.

    A model whose classifier has other names says so in its `head_prefixes` (e.g. Inception-I3D's
    `logits.`); `load_checkpoint` passes them here.
    """
    return key.startswith(prefixes)


_TRAINING_EXTRA = re.compile(r"(?:^|_)ema(?:$|_)|^optim|^scaler|^(?:lr_)?sched", re.IGNORECASE)


def is_training_extra(key: str, model_modules: set[str]) -> bool:
    """A state key that holds training state, not weights: its first name part is an EMA copy
    (`model_ema.`, `ema.`), optimizer, scaler or scheduler, and no module of the model is called that."""
    first = key.split(".", 1)[0]
    return first not in model_modules and bool(_TRAINING_EXTRA.search(first))


def summarize_ignored(keys: list[str] | tuple[str, ...]) -> str:
    """One line naming ignored entries, grouped by their first name part: 'model_ema.* (397), epoch, cfg'."""
    groups: dict[str, int] = {}
    for key in keys:
        first, dot, _ = key.partition(".")
        group = f"{first}.*" if dot else "Caffe2 momentum blobs" if "momentum" in key else first
        groups[group] = groups.get(group, 0) + 1
    named = [f"{group} ({n})" if n > 1 else group for group, n in groups.items()]
    return ", ".join(named[:LIST_LIMIT]) + (
        f" (+{len(named) - LIST_LIMIT} more)" if len(named) > LIST_LIMIT else ""
    )


def _fit_shape(value: torch.Tensor, shape: torch.Size, pad: bool) -> torch.Tensor:
    """value, with trailing 1-dims added when pad is set and it has fewer dims than shape."""
    if pad and value.dim() < len(shape):
        value = value.reshape(tuple(value.shape) + (1,) * (len(shape) - value.dim()))
    return value


def _shape_str(shape: torch.Size | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def load_checkpoint(path: Path | str, model: nn.Module, *, require_head: bool) -> LoadReport:
    """Fill every backbone tensor of model from the checkpoint at path; raise CheckpointError otherwise."""
    path = Path(path)
    if not getattr(model, "caffe2_weights", True) and sniff_format(path) == "caffe2":
        raise CheckpointError(
            path,
            f"is a Caffe2 .pkl, but {type(model).__name__} weights exist only as PyTorch .pyth files "
            "(PySlowFast's model zoo; model_state)",
        )
    checkpoint = read_state_dict(path)
    fmt, state, ignored_blobs = checkpoint.format, checkpoint.state, checkpoint.ignored
    _check_arch(path, checkpoint, model)
    _check_requirements(path, checkpoint, model)
    heads: tuple[str, ...] = tuple(getattr(model, "head_prefixes", HEAD_PREFIXES))

    def is_head(key: str) -> bool:
        return is_head_key(key, heads)

    model_state = model.state_dict()
    pad = fmt == "caffe2"

    ignored = list(ignored_blobs)
    model_modules = {key.split(".", 1)[0] for key in model_state}
    to_load: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    head_problem = False

    for key, value in state.items():
        if key not in model_state:
            if key.endswith("num_batches_tracked") or is_training_extra(key, model_modules):
                ignored.append(key)
            elif is_head(key) and not require_head:
                head_problem = True
            else:
                unexpected.append(key)
            continue
        target = model_state[key]
        value = _fit_shape(value, target.shape, pad)
        if value.shape != target.shape:
            if is_head(key) and not require_head:
                head_problem = True
            else:
                mismatched.append(
                    f"{key}: checkpoint {_shape_str(value.shape)} vs model {_shape_str(target.shape)}"
                )
            continue
        to_load[key] = value
    for key in model_state:
        if key in to_load or key in state or key.endswith("num_batches_tracked"):
            continue  # a key of the checkpoint that did not load is a shape mismatch (or a skipped head)
        if is_head(key) and not require_head:
            head_problem = True
        else:
            missing.append(key)

    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {short_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {short_list(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {short_list(mismatched)}")
        hint = ""
        if len(to_load) < len(model_state) // 2:
            hint = " (is it a checkpoint for a different architecture?)"
        what = f"does not fit {type(model).__name__}{hint}"
        if all(is_head(k) for k in missing + unexpected + [m.split(":", 1)[0] for m in mismatched]):
            what = (
                f"its classifier does not fit {type(model).__name__} "
                f"{getattr(getattr(model, 'spec', None), 'name', '')!s} "
                "(the backbone fits: features load without logits)"
            )
        raise CheckpointError(path, f"{what}: " + "; ".join(parts))

    if head_problem:  # all or nothing: a partly loaded classifier is worse than none
        skipped = sorted(k for k in to_load if is_head(k))
        skipped += sorted(k for k in state if is_head(k) and k not in to_load)
        for key in skipped:
            to_load.pop(key, None)
        ignored.extend(dict.fromkeys(skipped))
    has_head = any(is_head(k) for k in model_state)
    missing_head = has_head and not any(is_head(k) for k in to_load)

    result = model.load_state_dict(to_load, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith("num_batches_tracked") and not is_head(k)]
    if leftover or result.unexpected_keys:  # cannot happen after the checks above; never load partially
        raise CheckpointError(path, f"load_state_dict left {short_list(leftover + result.unexpected_keys)}")

    report = LoadReport(
        path=path,
        format=fmt,
        sha256=file_sha256(path),
        n_loaded=len(to_load),
        ignored=tuple(ignored),
        missing_head=missing_head,
    )
    extras = [k for k in ignored if not k.endswith("num_batches_tracked") and not is_head(k)]
    log.info(
        "loaded %d tensors from %s (%s, sha256 %s)%s%s",
        report.n_loaded,
        path,
        fmt,
        report.sha256[:12],
        ", classifier not loaded" if missing_head else "",
        f"; not used: {summarize_ignored(extras)}" if extras else "",
    )
    return report
