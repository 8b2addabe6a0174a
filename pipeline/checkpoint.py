"""Load PySlowFast checkpoints (PyTorch .pyth or Caffe2 .pkl) into our models, strictly.

The format is sniffed from the file's bytes, never its extension. Caffe2 pickles are read by a
restricted unpickler that only rebuilds numpy arrays, so a crafted file cannot run code; PyTorch files
go through ``torch.load(weights_only=True)``. Every backbone tensor must be filled: there is no fallback
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from torch import nn

from pipeline.errors import describe_error
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


class CheckpointError(Exception):
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
    format: str  # "pytorch" | "caffe2"
    sha256: str
    n_loaded: int
    ignored: tuple[str, ...]  # checkpoint entries not loaded (optimizer blobs, skipped head, ...)
    missing_head: bool  # the model's classifier was not filled from the checkpoint


class CheckpointState(NamedTuple):
    """A checkpoint's tensors under PySlowFast names, before matching them to a model."""

    format: str
    state: dict[str, torch.Tensor]
    ignored: tuple[str, ...]


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


# --------------------------------------------------------------------------- loading


def read_state_dict(path: Path | str) -> CheckpointState:
    """Sniff and read a checkpoint; tensors keyed by PySlowFast names (no model needed)."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "pytorch":
        state, left = _read_pytorch(path)
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
    fmt, state, ignored_blobs = read_state_dict(path)
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
