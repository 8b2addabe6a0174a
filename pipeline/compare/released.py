"""Read released features ("theirs") in the layouts temporal action detection trainers read.

THEIRS is a folder of per-video files or one file:
- `<id>.npy`: a (rows, dim) array (ActionFormer's THUMOS / ActivityNet / Ego4D loaders, OpenTAD's
  `LoadFeats` feat_format npy);
- `<id>.npz` with a `feats` array (ActionFormer's EPIC loader, OpenTAD npz; a `features` array, or the
  only array of the archive, is taken too);
- `<id>.pt` / `.pth`: a torch tensor (Ego4D's released features, one file per video uid; OpenTAD pt), read
  with `torch.load(weights_only=True)`;
- `<id>.pkl` / `.pickle`: a pickled array (TSP's per-video output) or a dict holding `feats`;
- one `.h5` / `.hdf5`: one dataset per video id (TSP's merged file, ActionFormer's ActivityNet hdf5
  reader), or our own consolidated layout (`<key>/features`);
- one `.pkl` / `.pt` / `.npy` holding a dict {id: array} (a merged release).
All those trainers store rows first, (T, C), and transpose to (C, T) when they load. `orient` keeps that
reading unless the array's first axis has our feature dim (or its second our row count) and the other
does not: then it was stored (C, T) and is transposed, and the note says which rule decided.

Pickles go through an unpickler that only rebuilds numpy arrays, dicts, lists, numbers and strings; one
that would import anything else (run code) is refused. `.npy` object arrays are read the same way.
Ids: a file's stem or a dataset's name; `id_prefix` ("v_", ActivityNet) is removed from names that start
with it, so they meet `pipeline.export`'s ids. Every unreadable file, unusable array or name clash is one
line in `problems`; the other videos are still read.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.consolidate import open_dataset
from pipeline.errors import PipelineError

SUFFIXES = {
    ".npy": "npy",
    ".npz": "npz",
    ".pt": "pt",
    ".pth": "pt",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".h5": "h5",
    ".hdf5": "h5",
}
CONTAINERS = ("h5",)  # in a folder, these hold several videos each
ARRAY_KEYS = ("feats", "features")  # the array of a per-video dict / npz, in this order
METADATA_SUFFIXES = (".json", ".txt", ".md", ".yaml", ".yml", ".csv", ".log")  # skipped silently
ROW_TOLERANCE = 2  # rows that may differ when the row count decides the orientation


class ReleaseError(PipelineError, ValueError):
    """THEIRS cannot be read at all (no such path, no feature file)."""


class BadFile(Exception):
    """One file or array of a release cannot be used; its message is the report's line."""


@dataclass
class TheirVideo:
    """One released video: its id, where it comes from and how to load its array."""

    id: str
    name: str  # as stored (file stem or dataset name, prefix kept)
    source: str  # file[:dataset] for the report
    layout: str
    load: Callable[[], np.ndarray]  # raises BadFile


@dataclass
class Release:
    """Every video found in THEIRS, and one line per problem."""

    path: Path
    layout: str
    videos: dict[str, TheirVideo] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- safe pickles -------------------------------------------------------------------------------


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What rebuilding numpy arrays, numpy scalars and ordered dicts needs, and nothing else."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # bytes under protocol 2
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for package in ("numpy.core", "numpy._core"):  # _frombuffer: protocol 5
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Refuses every global but those of `_allowed_globals`: a pickle that would run code stops here."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise BadFile(
                f"refused: the pickle would load {module}.{name} (only numpy arrays, dicts, lists, "
                "numbers and strings are read)"
            ) from None


def safe_unpickle(f: Any) -> Any:
    """Unpickle an open binary file through the restricted unpickler; BadFile when refused or broken."""
    try:
        return _SafeUnpickler(f, encoding="latin1").load()
    except BadFile:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as e:
        raise BadFile(f"not a readable pickle ({type(e).__name__}: {e})") from e


# --- file readers (each returns an array or a {name: array} dict) -------------------------------


def _read_npy(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = header(f)
        except ValueError as e:
            raise BadFile(f"not a .npy file ({e})") from e
        if dtype.hasobject:  # a pickled object (np.save of a dict): the safe unpickler
            obj = safe_unpickle(f)
            if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
                return obj.item()
            return obj
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise BadFile(f"unreadable .npy ({e})") from e


def _read_npz(path: Path) -> Any:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            for key in ARRAY_KEYS:
                if key in names:
                    return archive[key]
            if len(names) == 1:
                return archive[names[0]]
    except (ValueError, zipfile.BadZipFile, OSError) as e:
        raise BadFile(f"unreadable .npz ({type(e).__name__}: {e})") from e
    raise BadFile(f"no 'feats' array in the .npz (it holds {', '.join(names) or 'nothing'})")


def _to_numpy(value: Any) -> Any:
    """torch tensors (any dtype) to numpy, recursively through dicts and lists."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16,):
            value = value.float()
        return value.numpy()
    if isinstance(value, Mapping):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v) for v in value)
    return value


def _read_pt(path: Path) -> Any:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise BadFile(f"refused by torch.load(weights_only=True): {reason}") from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise BadFile(f"unreadable torch file ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return _to_numpy(obj)


def _read_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return safe_unpickle(f)


READERS: dict[str, Callable[[Path], Any]] = {
    "npy": _read_npy,
    "npz": _read_npz,
    "pt": _read_pt,
    "pickle": _read_pickle,
}


# --- arrays -------------------------------------------------------------------------------------


def check_array(value: Any) -> np.ndarray:
    """A usable feature array: numeric, rank 2 or 3, at least one row; BadFile says why not."""
    if isinstance(value, Mapping):
        for key in ARRAY_KEYS:
            if key in value:
                return check_array(value[key])
        arrays = [v for v in value.values() if isinstance(v, np.ndarray)]
        if len(arrays) == 1:
            return check_array(arrays[0])
        raise BadFile(f"a dict without a 'feats' array (keys: {', '.join(map(str, list(value)[:8]))})")
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        try:
            value = np.stack(value)
        except ValueError as e:
            raise BadFile(f"a list of arrays that do not stack ({e})") from e
    if not isinstance(value, np.ndarray):
        raise BadFile(f"holds a {type(value).__name__}, not an array")
    if value.dtype.kind not in "fiu" or value.dtype.hasobject:
        raise BadFile(f"holds a {value.dtype} array, not numbers")
    if value.ndim not in (2, 3):
        raise BadFile(
            f"rank-{value.ndim} array {tuple(value.shape)}: expected (rows, dim) or (rows, crops, dim)"
        )
    if value.shape[0] == 0 or value.size == 0:
        raise BadFile(f"empty array {tuple(value.shape)}")
    return value


def orient(array: np.ndarray, rows: int | None, dim: int | None) -> tuple[np.ndarray, str]:
    """(array as (rows, dim), how the orientation was chosen); the trainers' (T, C) unless the axes say
    the array was stored (C, T)."""
    if array.ndim != 2:
        return array, "(rows, crops, dim) as stored"
    first, second = array.shape
    if dim is not None and (first == dim) != (second == dim):
        if first == dim:
            return array.T, f"stored (C, T) = {array.shape}: transposed (its first axis has our dim {dim})"
        return array, "(T, C) as stored (its second axis has our dim)"
    if rows is not None:
        near_first = abs(first - rows) <= ROW_TOLERANCE
        near_second = abs(second - rows) <= ROW_TOLERANCE
        if near_second and not near_first:
            return array.T, f"stored (C, T) = {array.shape}: transposed (its second axis has our {rows} rows)"
        if near_first and not near_second:
            return array, "(T, C) as stored (its first axis has our row count)"
    return array, "(T, C) as stored, as the trainers read it (neither axis decides)"


# --- layouts ------------------------------------------------------------------------------------


def _video_id(name: str, id_prefix: str) -> str:
    """The id of a stored name: its last path component, the release's prefix removed."""
    leaf = name.rstrip("/").rsplit("/", 1)[-1]
    return leaf[len(id_prefix) :] if id_prefix and leaf.startswith(id_prefix) and leaf != id_prefix else leaf


def _add(release: Release, video: TheirVideo) -> None:
    if video.id in release.videos:
        release.problems.append(
            f"{video.source}: id {video.id!r} is also {release.videos[video.id].source}; the first is compared"
        )
        return
    release.videos[video.id] = video


def _h5_videos(path: Path, release: Release, id_prefix: str) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            names: list[str] = []

            def visit(name: str, obj: Any) -> None:
                if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "fiu":
                    return  # groups, and text such as our /_config and /_failed
                parent, _, leaf = name.rpartition("/")
                if parent and "features" in h5[parent] and isinstance(h5[parent]["features"], h5py.Dataset):
                    if leaf == "features":
                        names.append(name)  # our consolidated layout: <key>/features
                    return
                names.append(name)

            h5.visititems(visit)
    except OSError as e:
        raise BadFile(f"unreadable HDF5 file ({e})") from e
    for name in names:
        stored = name[: -len("/features")] if name.endswith("/features") else name

        def load(name: str = name) -> np.ndarray:
            with h5py.File(path, "r") as h5:
                parent, _, leaf = name.rpartition("/")
                dataset = open_dataset(h5[parent] if parent else h5, leaf)
                return check_array(dataset[()])

        _add(release, TheirVideo(_video_id(stored, id_prefix), stored, f"{path}:{name}", "h5", load))


def _whole_file(path: Path, kind: str, release: Release, id_prefix: str) -> None:
    """One file given as THEIRS: a dict {id: array} is several videos, anything else one."""
    content = READERS[kind](path)
    if isinstance(content, Mapping) and not any(k in content for k in ARRAY_KEYS):
        if not content:
            raise BadFile("an empty dict")
        release.layout = f"one {path.suffix} file holding a dict of {len(content)} videos"
        for name, value in content.items():

            def load(value: Any = value) -> np.ndarray:
                return check_array(value)

            _add(
                release,
                TheirVideo(_video_id(str(name), id_prefix), str(name), f"{path}[{name!r}]", kind, load),
            )
        return
    _add(
        release,
        TheirVideo(_video_id(path.stem, id_prefix), path.stem, str(path), kind, lambda: check_array(content)),
    )


def _per_video_file(path: Path, kind: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        if path.stat().st_size == 0:
            raise BadFile("empty file")
        try:
            return check_array(READERS[kind](path))
        except OSError as e:
            raise BadFile(f"unreadable ({e.strerror or e})") from e

    return load


def _folder(path: Path, release: Release, id_prefix: str) -> None:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    by_kind: dict[str, list[Path]] = {}
    others: Counter[str] = Counter()
    for file in files:
        kind = SUFFIXES.get(file.suffix.lower())
        if kind is not None:
            by_kind.setdefault(kind, []).append(file)
        elif file.suffix.lower() not in METADATA_SUFFIXES:
            others[file.suffix or file.name] += 1
    if others:
        release.notes.append(
            f"{path}: skipped {sum(others.values())} file(s) of no feature layout ({', '.join(sorted(others))})"
        )
    if not by_kind:
        folders = [p.name for p in path.iterdir() if p.is_dir()]
        raise ReleaseError(
            f"{path}: no feature files (.npy, .npz, .pt, .pkl, .h5)"
            + (
                f"; it has folders ({', '.join(sorted(folders)[:5])}): give the one holding the files"
                if folders
                else ""
            )
        )
    order = list(dict.fromkeys(SUFFIXES.values()))
    kind = max(by_kind, key=lambda k: (len(by_kind[k]), -order.index(k)))  # ties: npy, npz, pt, pickle, h5
    if len(by_kind) > 1:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
        release.problems.append(
            f"{path}: mixes layouts ({counts}); only the {len(by_kind[kind])} {kind} files are read"
        )
    chosen = by_kind[kind]
    release.layout = (
        f"folder of {len(chosen)} .{kind} files"
        if kind != "h5"
        else f"folder with {len(chosen)} HDF5 file(s)"
    )
    for file in chosen:
        if kind in CONTAINERS:
            try:
                _h5_videos(file, release, id_prefix)
            except BadFile as e:
                release.problems.append(f"{file}: {e}")
            continue
        _add(
            release,
            TheirVideo(
                _video_id(file.stem, id_prefix), file.stem, str(file), kind, _per_video_file(file, kind)
            ),
        )


def read_release(path: Path | str, id_prefix: str = "") -> Release:
    """Every video of THEIRS (a folder or one file), arrays loaded lazily; ReleaseError when none can be."""
    path = Path(path)
    release = Release(path, layout="")
    if path.is_dir():
        _folder(path, release, id_prefix)
        return release
    if not path.is_file():
        raise ReleaseError(f"{path}: no such file or folder")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ReleaseError(f"{path}: not a feature file (.npy, .npz, .pt, .pkl, .h5) or a folder of them")
    if path.stat().st_size == 0:
        raise ReleaseError(f"{path}: empty file")
    release.layout = f"one {path.suffix} file"
    try:
        if kind == "h5":
            _h5_videos(path, release, id_prefix)
        else:
            _whole_file(path, kind, release, id_prefix)
    except BadFile as e:
        raise ReleaseError(f"{path}: {e}") from e
    except OSError as e:
        raise ReleaseError(f"{path}: unreadable ({e.strerror or e})") from e
    return release
