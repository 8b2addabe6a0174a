"""Load PySlowFast checkpoints (PyTorch .pyth or Caffe2 .pkl) into our models, strictly.

The format is sniffed from the file's bytes, never its extension; a PyTorch file whose keys use
pytorchvideo's names (`blocks.0.multipathway_blocks.0.conv.weight`, ...) is renamed to PySlowFast's.
Caffe2 pickles are read by a restricted unpickler that only rebuilds numpy arrays, so a crafted file
cannot run code; PyTorch files go through ``torch.load(weights_only=True)``. Every backbone tensor must be filled: there is no fallback
to random weights. The classifier (``head.projection*``) may be skipped when the caller does not need it.
Training extras PySlowFast-style files carry (``optimizer_state``, ``epoch``, ``cfg``, an EMA copy of the
weights under an ``ema`` prefix, non-tensor entries of ``model_state``) are not loaded and are named in one
log line; any other key the model lacks is an error.
"""

from __future__ import annotations

import logging
import pickle
import pickletools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError, describe_error
from pipeline.outputs import file_sha256

__all__ = [
    "CheckpointError",
    "CheckpointState",
    "LoadReport",
    "caffe2_to_pyslowfast",
    "file_sha256",
    "is_head_key",
    "is_training_extra",
    "load_checkpoint",
    "pytorchvideo_arch",
    "pytorchvideo_key_map",
    "pytorchvideo_temporal_pool",
    "read_state_dict",
    "sniff_format",
    "summarize_ignored",
]

log = logging.getLogger(__name__)

# torch.save's legacy (non-zip) format starts with this number, pickled.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_HEAD_PREFIX = "head.projection"
_SNIFF_MAX_OPS = 10_000
_SNIFF_MAX_BYTES = 16 << 20
_LIST_LIMIT = 8


class CheckpointError(PipelineError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"checkpoint {path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[Path, str]]:
        """Pickle by (path, reason) so the error survives a trip between processes."""
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class LoadReport:
    """What load_checkpoint put into the model."""

    path: Path
    format: str  # "pytorch" | "caffe2" | "pytorchvideo"
    sha256: str
    n_loaded: int
    ignored: tuple[str, ...]  # checkpoint entries not loaded (optimizer blobs, skipped head, ...)
    missing_head: bool  # the model's classifier was not filled from the checkpoint


class CheckpointState(NamedTuple):
    """A checkpoint's tensors under PySlowFast names, before matching them to a model."""

    format: str
    state: dict[str, torch.Tensor]
    ignored: tuple[str, ...]
    # Model attributes the weights need that the keys cannot show, e.g. (("temporal_pool", 2),).
    requires: tuple[tuple[str, object], ...] = ()


# --------------------------------------------------------------------------- format sniffing


def _archive_kind(head: bytes) -> str | None:
    """Name of the compressed/archive format the header shows, or None."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def _pickle_ops(f: BinaryIO) -> Iterator[tuple[str, Any]]:
    """Opcodes of the pickle stream f (no objects are built), skipping PROTO/FRAME."""
    for opcode, arg, _pos in pickletools.genops(f):
        if opcode.name not in ("PROTO", "FRAME"):
            yield opcode.name, arg


def sniff_format(path: Path | str) -> str:
    """'pytorch' or 'caffe2', judged from the file's bytes; anything else raises CheckpointError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from e
    if not head:
        raise CheckpointError(path, "is empty")
    if head.startswith(b"PK\x03\x04"):
        return "pytorch"
    kind = _archive_kind(head)
    if kind is not None:
        raise CheckpointError(path, f"is a {kind} archive, unpack it first")
    if head[0] != 0x80 and head[:1] not in (b"(", b"}", b"]", b"c"):
        raise CheckpointError(path, "is not a PyTorch or Caffe2 checkpoint (unknown file format)")
    with open(path, "rb") as f:
        try:
            ops = _pickle_ops(f)
            first, arg = next(ops)
            if first == "LONG1" and arg == _TORCH_LEGACY_MAGIC:
                return "pytorch"
            # Caffe2 files are a pickled dict with a 'blobs' key: look for that key near the start.
            for n, (_op, arg) in enumerate(ops):
                if isinstance(arg, str | bytes) and arg in ("blobs", b"blobs"):
                    return "caffe2"
                if n > _SNIFF_MAX_OPS or f.tell() > _SNIFF_MAX_BYTES:
                    break
        except StopIteration:
            raise CheckpointError(path, "is truncated (pickle stream ends early)") from None
        except ValueError as e:  # pickletools: unknown opcode, or the stream ends inside the pickle
            if "unknown" in str(e):
                raise CheckpointError(
                    path, "is not a PyTorch or Caffe2 checkpoint (unknown file format)"
                ) from e
            raise CheckpointError(path, "is truncated (pickle stream ends early)") from e
    raise CheckpointError(path, "is a pickle but not a Caffe2 checkpoint (no 'blobs' dict)")


# --------------------------------------------------------------------------- PyTorch files


def _weights_only_reason(error: Exception) -> str:
    """The informative line of torch's long weights-only refusal message."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _read_pytorch(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Model state of a torch.save file (keys without a DataParallel 'module.' prefix) and what was left.

    The second item names the entries not taken: top-level keys beside 'model_state' / 'state_dict'
    (optimizer_state, epoch, cfg, ...) and non-tensor entries inside it. A bare dict must hold only tensors.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            path, f"refused by torch.load(weights_only=True): {_weights_only_reason(e)}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(path, f"is truncated or corrupt ({describe_error(e, with_class=False)})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    left: list[str] = []
    wrapped = False
    for key in ("model_state", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            left = [str(k) for k in obj if k != key]
            obj, wrapped = obj[key], True
            break
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            if wrapped:
                left.append(str(key))
                continue
            raise CheckpointError(
                path,
                f"entry {key!r} is a {type(value).__name__}, not a tensor "
                "(expected 'model_state', 'state_dict' or a bare state dict)",
            )
        name = str(key).removeprefix("module.")
        if name in state:
            raise CheckpointError(path, f"holds {name!r} twice (with and without 'module.')")
        state[name] = value
    if not state:
        raise CheckpointError(path, "holds no tensors")
    return state, left


# --------------------------------------------------------------------------- Caffe2 files


def _numpy_multiarray() -> Any:
    """numpy's multiarray module (numpy._core in numpy 2, numpy.core before)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a Caffe2 pickle may name: what rebuilding numpy arrays and scalars needs."""
    multiarray = _numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') under protocol 2 (re-saved Caffe2 files).
    import _codecs

    allowed[("_codecs", "encode")] = _codecs.encode
    return allowed


class _BlobUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except those numpy array reconstruction needs."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only allow-listed globals; anything else is refused."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _read_caffe2(path: Path) -> dict[str, Any]:
    """The 'blobs' dict of a Caffe2 pickle, read without running code from the file."""
    try:
        with open(path, "rb") as f:
            obj = _BlobUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused global"):
            raise CheckpointError(path, f"unsafe Caffe2 pickle: {e}") from e
        raise CheckpointError(path, f"is truncated or corrupt ({e})") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise CheckpointError(path, f"is truncated or corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("blobs"), dict):
        raise CheckpointError(path, "is a pickle but not a Caffe2 checkpoint (no 'blobs' dict)")
    return obj["blobs"]


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


def _convert_caffe2(path: Path, blobs: dict[str, Any]) -> CheckpointState:
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
        raise CheckpointError(path, f"{len(unknown)} unknown Caffe2 blob(s): {_short_list(unknown)}")
    if not state:
        raise CheckpointError(path, "holds no model blobs")
    return CheckpointState("caffe2", state, tuple(ignored))


# --------------------------------------------------------------------------- pytorchvideo files

# pytorchvideo's hub models (pytorchvideo/models/{resnet,slowfast,x3d}.py, v0.1.5) name their parameters
# by position in `Net.blocks`: the stem is blocks.0, then one block per residual stage (plus a parameter-
# free pool block after res2 in C2D / I3D), then the head. These are renamed to PySlowFast's names.
_PTV_SUPPORTED = ("slowfast", "resnet", "x3d")
_PTV_ARCH_NAMES = {
    "slowfast": "SlowFast",
    "resnet": "ResNet (Slow / C2D / I3D)",
    "x3d": "X3D",
    "mvit": "MViT / vision transformer",
    "r2plus1d": "R(2+1)D",
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
        raise ValueError(f"{len(unknown)} unknown pytorchvideo key(s): {_short_list(unknown)}")
    return names


def pytorchvideo_temporal_pool(keys: Iterable[str]) -> int:
    """2 when a pool block sits between res2 and res3 (pytorchvideo's C2D / I3D `stage1_pool`), else 1."""
    stage_blocks = sorted(_ptv_stages(list(keys)))
    return 2 if stage_blocks[1] - stage_blocks[0] > 1 else 1


def _identity_bn(state: dict[str, torch.Tensor], module: str, channels: int, like: torch.Tensor) -> None:
    """Add an exact identity BatchNorm (weight 1, bias 0, mean 0, var 1 - eps) under `module`."""
    from pipeline.models.layers import BN_EPS

    state[f"{module}.weight"] = torch.ones(channels, dtype=like.dtype)
    state[f"{module}.bias"] = torch.zeros(channels, dtype=like.dtype)
    state[f"{module}.running_mean"] = torch.zeros(channels, dtype=like.dtype)
    state[f"{module}.running_var"] = torch.full((channels,), 1.0 - BN_EPS, dtype=like.dtype)


def _convert_pytorchvideo(path: Path, state: dict[str, torch.Tensor]) -> CheckpointState:
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
    return CheckpointState("pytorchvideo", converted, (), requires)


def _check_requirements(path: Path, checkpoint: CheckpointState, model: nn.Module) -> None:
    """CheckpointError when the model lacks an attribute value the weights were trained with."""
    for attribute, value in checkpoint.requires:
        have = getattr(model, attribute, None)
        if have is not None and have != value:
            raise CheckpointError(
                path,
                f"was trained with {attribute}={value} but {type(model).__name__} "
                f"{getattr(getattr(model, 'spec', None), 'name', '')!s} has {attribute}={have} "
                "(pytorchvideo's C2D / I3D pool time by 2 after res2, PySlowFast's C2D 'nopool' does not)",
            )


# --------------------------------------------------------------------------- loading


def read_state_dict(path: Path | str) -> CheckpointState:
    """Sniff and read a checkpoint; tensors keyed by PySlowFast names (no model needed)."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "pytorch":
        state, left = _read_pytorch(path)
        if pytorchvideo_arch(state) is not None:
            return _convert_pytorchvideo(path, state)._replace(ignored=tuple(left))
        return CheckpointState("pytorch", state, tuple(left))
    return _convert_caffe2(path, _read_caffe2(path))


def is_head_key(key: str) -> bool:
    """True for the classifier's keys (head.projection, head.projection_verb, ...), not X3D's lin_5."""
    return key.startswith(_HEAD_PREFIX)


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
    return ", ".join(named[:_LIST_LIMIT]) + (
        f" (+{len(named) - _LIST_LIMIT} more)" if len(named) > _LIST_LIMIT else ""
    )


def _short_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f" (+{len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else "")


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
    _check_requirements(path, checkpoint, model)
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
            elif is_head_key(key) and not require_head:
                head_problem = True
            else:
                unexpected.append(key)
            continue
        target = model_state[key]
        value = _fit_shape(value, target.shape, pad)
        if value.shape != target.shape:
            if is_head_key(key) and not require_head:
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
        if is_head_key(key) and not require_head:
            head_problem = True
        else:
            missing.append(key)

    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_short_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_short_list(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_short_list(mismatched)}")
        hint = ""
        if len(to_load) < len(model_state) // 2:
            hint = " (is it a checkpoint for a different architecture?)"
        raise CheckpointError(path, f"does not fit {type(model).__name__}{hint}: " + "; ".join(parts))

    if head_problem:  # all or nothing: a partly loaded classifier is worse than none
        skipped = sorted(k for k in to_load if is_head_key(k))
        skipped += sorted(k for k in state if is_head_key(k) and k not in to_load)
        for key in skipped:
            to_load.pop(key, None)
        ignored.extend(dict.fromkeys(skipped))
    has_head = any(is_head_key(k) for k in model_state)
    missing_head = has_head and not any(is_head_key(k) for k in to_load)

    result = model.load_state_dict(to_load, strict=False)
    leftover = [
        k for k in result.missing_keys if not k.endswith("num_batches_tracked") and not is_head_key(k)
    ]
    if leftover or result.unexpected_keys:  # cannot happen after the checks above; never load partially
        raise CheckpointError(path, f"load_state_dict left {_short_list(leftover + result.unexpected_keys)}")

    report = LoadReport(
        path=path,
        format=fmt,
        sha256=file_sha256(path),
        n_loaded=len(to_load),
        ignored=tuple(ignored),
        missing_head=missing_head,
    )
    extras = [k for k in ignored if not k.endswith("num_batches_tracked") and not is_head_key(k)]
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
