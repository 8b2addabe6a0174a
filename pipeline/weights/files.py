"""Checkpoint files as bytes: which container a file is (sniffed from its bytes, never its name), and
reading it without running code from it.

PyTorch files go through ``torch.load(weights_only=True)``; Caffe2 pickles through a restricted unpickler
that only rebuilds numpy arrays, so a crafted file cannot run code; safetensors files hold no code at all.
"""

from __future__ import annotations

import argparse
import os
import pickle
import pickletools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pipeline.errors import describe_error
from pipeline.weights.state import CheckpointError

# torch.save's legacy (non-zip) format starts with this number, pickled.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_SNIFF_MAX_OPS = 10_000
_SNIFF_MAX_BYTES = 16 << 20
# The dicts a training script wraps its model state in (PySlowFast, torchvision-style scripts, DeiT/
# VideoMAE-style `model` / `module`); the first present one that is a mapping is the state.
STATE_WRAPPERS = ("model_state", "state_dict", "model", "module")
# Plain-data classes a training script saves beside the weights, allowed to torch's weights-only unpickler:
# DeiT / VideoMAE-style and torchvision-reference-style scripts (TSP's train.py) save their command line as
# `args` (an argparse.Namespace: it only gets attributes set from the pickle, nothing is called).
SAFE_GLOBALS: list[Any] = [argparse.Namespace]
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit on its JSON header


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


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= min(size - 8, _SAFETENSORS_MAX_HEADER)


def sniff_format(path: Path | str) -> str:
    """'pytorch', 'safetensors' or 'caffe2', judged from the file's bytes; else CheckpointError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from e
    if not head:
        raise CheckpointError(path, "is empty")
    if head.startswith(b"PK\x03\x04"):
        return "pytorch"
    if _is_safetensors(head, size):
        return "safetensors"
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


def read_pytorch(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Model state of a torch.save file (keys without a DataParallel 'module.' prefix) and what was left.

    The second item names the entries not taken: top-level keys beside 'model_state' / 'state_dict'
    (optimizer_state, epoch, cfg, ...) and non-tensor entries inside it. A bare dict must hold only tensors.
    """
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
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
    for key in STATE_WRAPPERS:
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


# --------------------------------------------------------------------------- safetensors files


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (e.g. a Hugging Face `model.safetensors`), on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(path, f"is a truncated or corrupt safetensors file ({e})") from e
    if not state:
        raise CheckpointError(path, "holds no tensors")
    return state


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


def read_caffe2_blobs(path: Path) -> dict[str, Any]:
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
