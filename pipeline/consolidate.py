"""Merge the per-video .npy feature files of one or more output dirs into a single HDF5 file.

    python -m pipeline.consolidate <output dir> [<output dir> ...] [-o features.h5]
        [--layout copy|external] [--compression gzip|lzf|none]

Layout of the HDF5 file (default `<first output dir>/features.h5`):
    /<key>/features     (rows, dim) or (rows, crops, dim), float32|float16 as extracted
    /<key>/timestamps   (rows, 3) float64: start, end, centre in seconds, one per row
    /<key>/logits       (rows, classes) when the run saved logits; a model with several heads gives
                        logits_<head> per head (e.g. logits_verb, logits_noun)
    /<key>.attrs        fps, frames, duration, source, video (path as listed), kind, rows, dim[, native_fps]
    /_config            the resolved run config(s), YAML text (several runs: one YAML document each)
    /_failed            JSON text: [{"key", "path", "error", "output_dir"}, ...] of videos that failed
    /.attrs             model, checkpoint_sha256, checkpoint_random, every extraction setting flattened
                        with dots ("resize.mode"; null -> "null", lists -> arrays or JSON text),
                        package_version, consolidated_by, created, layout, compression, num_videos,
                        num_failed
A key keeps its slashes as nested HDF5 groups: "P01/videos/P01_01" is group P01 > videos > P01_01.
Keys whose first part is `_config` or `_failed` are refused.

Layouts: `copy` writes the features into the file (chunked, optional gzip/lzf). `external` writes no
feature bytes: each `features` (and logits) dataset is an HDF5 external-storage dataset pointing at
the data section of its .npy, by a path relative to the HDF5 file's folder, so the output dir can move
as a whole. HDF5 resolves relative external paths against the current directory unless the dataset
is opened with the external-file prefix "${ORIGIN}" (the HDF5 file's folder): use `open_dataset`
below, or set HDF5_EXTFILE_PREFIX='${ORIGIN}' in the environment before h5py is imported.

Only videos whose newest manifest record is ok are taken (a sidecar left by an earlier run of a
video that failed since, or superseded by another file name, is skipped); sidecars with no manifest
record are taken as they are. All videos must share the same extraction settings. The file is written
under a temporary name, one video at a time, then renamed: a failure leaves no half file behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from pipeline import __version__, naming, outputs
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

LAYOUTS = ("copy", "external")
COMPRESSIONS = ("gzip", "lzf")
RESERVED_NAMES = ("_config", "_failed")
FEATURE_DTYPES = ("float32", "float16")
EFILE_PREFIX = "${ORIGIN}"
DEFAULT_NAME = naming.HDF5_NAME
CHUNK_BYTES = 1 << 20  # target size of one HDF5 chunk
BLOCK_BYTES = 64 << 20  # most bytes of one video held in memory while copying


class ConsolidateError(PipelineError, ValueError):
    """The output dirs cannot be consolidated (no features, mixed settings, broken file...)."""


@dataclass(frozen=True)
class VideoEntry:
    """One video's feature file, checked against its sidecar."""

    key: str
    output_dir: Path
    sidecar: Path
    features: Path
    logits: dict[str, Path]  # dataset name -> .npy
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class FailedVideo:
    """A video whose newest manifest record says it failed."""

    key: str
    path: str
    error: str
    output_dir: str


@dataclass
class Scan:
    """What an output dir set holds: usable videos, failures and what they share."""

    videos: list[VideoEntry] = field(default_factory=list)
    failed: list[FailedVideo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # only filled when not strict
    settings: dict[str, Any] | None = None
    reference: Path | None = None  # sidecar that `settings` comes from
    model: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_random: bool | None = None
    package_versions: set[str] = field(default_factory=set)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by JSON digest, first seen first


# --- settings -----------------------------------------------------------------------------------


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one level with dotted names: {"resize": {"mode": m}} -> {"resize.mode": m}."""
    flat: dict[str, Any] = {}
    for name, value in mapping.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def settings_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ between a and b, each with both values."""
    fa, fb = flatten(a), flatten(b)

    def show(flat: dict[str, Any], name: str) -> str:
        return repr(flat[name]) if name in flat else "absent"

    return [
        f"{name} ({show(fa, name)} vs {show(fb, name)})"
        for name in sorted(set(fa) | set(fb))
        if name not in fa or name not in fb or fa[name] != fb[name]
    ]


def attribute_value(value: Any) -> Any:
    """A setting as an HDF5 attribute: scalars as they are, None as "null", lists as arrays or JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, (int, float, str)):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return json.dumps(value, sort_keys=True)


# --- scanning -----------------------------------------------------------------------------------


def _check_video(sidecar_path: Path, sidecar: Mapping[str, Any], output_dir: Path) -> VideoEntry:
    """Check one sidecar and its .npy (header, size, rows, timestamps); ConsolidateError names the file."""
    for name in ("key", "settings", "timestamps"):
        if name not in sidecar:
            raise ConsolidateError(f"{sidecar_path}: sidecar has no {name!r} field")
    features = Path(naming.feature_of_sidecar(str(sidecar_path)))
    if not features.is_file():
        raise ConsolidateError(f"{features}: feature file missing (its sidecar exists)")
    try:
        _, shape, dtype = outputs.npy_data_offset(features)
    except ValueError as error:
        raise ConsolidateError(str(error)) from error
    except OSError as error:
        raise ConsolidateError(f"{features}: unreadable .npy ({error})") from error
    if dtype.name not in FEATURE_DTYPES or len(shape) not in (2, 3):
        raise ConsolidateError(
            f"{features}: expected float32/float16 (rows, dim) or (rows, crops, dim), "
            f"found {dtype.name} {shape}"
        )
    rows = sidecar.get("rows", shape[0])
    stamps = sidecar["timestamps"]
    if rows != shape[0] or len(stamps) != shape[0]:
        raise ConsolidateError(
            f"{features}: {shape[0]} rows but its sidecar says rows={rows} with {len(stamps)} timestamps"
        )
    heads = sidecar.get("logits") or {}
    if not isinstance(heads, Mapping):
        raise ConsolidateError(f"{sidecar_path}: 'logits' must map head names to files")
    logits = {naming.hdf5_logits_name(head): output_dir / rel for head, rel in heads.items()}
    for path in logits.values():
        if not path.is_file():
            raise ConsolidateError(f"{path}: logits file missing (listed in {sidecar_path.name})")
    return VideoEntry(
        key=str(sidecar["key"]),
        output_dir=output_dir,
        sidecar=sidecar_path,
        features=features,
        logits=logits,
        shape=tuple(shape),
        dtype=dtype.name,
    )


def _check_key(key: str, seen: dict[str, Path], sidecar: Path) -> None:
    if key.split("/", 1)[0] in RESERVED_NAMES:
        raise ConsolidateError(
            f"{sidecar}: video key {key!r} uses a reserved HDF5 name ({', '.join(RESERVED_NAMES)})"
        )
    if key in seen:
        raise ConsolidateError(f"video key {key!r} appears twice: {seen[key]} and {sidecar}")


def _note_shared(result: Scan, sidecar_path: Path, sidecar: Mapping[str, Any], strict: bool) -> None:
    """Record run-wide metadata and refuse settings that differ from the first video's (precision too:
    fp32 and bf16 features never share a file)."""
    settings = outputs.settings_of_sidecar(dict(sidecar))
    if result.settings is None:
        result.settings, result.reference = settings, sidecar_path
        checkpoint = sidecar.get("checkpoint") or {}
        result.model = sidecar.get("model") or settings.get("model")
        result.checkpoint_sha256 = checkpoint.get("sha256") or settings.get("checkpoint_sha256")
        result.checkpoint_random = checkpoint.get("random", settings.get("random_weights"))
    elif settings != result.settings:
        message = (
            f"{sidecar_path}: extraction settings differ from {result.reference}: "
            f"{'; '.join(settings_differences(result.settings, settings))}"
        )
        if strict:
            raise ConsolidateError(message)
        result.problems.append(message)
    if sidecar.get("package_version"):
        result.package_versions.add(str(sidecar["package_version"]))
    config = sidecar.get("config")
    if config is not None:
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        result.configs.setdefault(digest, config)


def scan(output_dirs: Sequence[Path], *, strict: bool = True) -> Scan:
    """Find and check every usable video of the output dirs (reads each sidecar once, no features).

    strict: raise ConsolidateError on the first problem; otherwise list it in `problems` and skip the
    video (differing settings are listed but the video is kept).
    """
    result = Scan()
    seen: dict[str, Path] = {}
    for output_dir in map(Path, output_dirs):
        if (
            not (output_dir / naming.FEATURES_DIR).is_dir()
            and not (output_dir / naming.MANIFESTS_DIR).is_dir()
        ):
            raise ConsolidateError(f"{output_dir}: not an output dir (no features/ or manifests/ folder)")
        latest, bad_lines = outputs.latest_records(output_dir)
        for bad in bad_lines:
            log.warning("%s line %d: %s", bad.path, bad.line, bad.reason)
        for sidecar_path in outputs.iter_sidecars(output_dir):
            try:
                sidecar = outputs.read_sidecar(sidecar_path)
                if not isinstance(sidecar, dict) or "key" not in sidecar:
                    raise ConsolidateError(f"{sidecar_path}: not a feature sidecar (no 'key')")
                record = latest.get(str(sidecar["key"]))
                if record is not None and record.final_outcome != outputs.OK:
                    log.info(
                        "skipping %s: the video's newest record is %s", sidecar_path, record.final_outcome
                    )
                    continue
                relative = naming.feature_of_sidecar(sidecar_path.relative_to(output_dir).as_posix())
                if record is not None and record.output and record.output != relative:
                    log.info("skipping %s: superseded by %s", sidecar_path, record.output)
                    continue
                entry = _check_video(sidecar_path, sidecar, output_dir)
                _check_key(entry.key, seen, sidecar_path)
                if result.videos and entry.shape[1:] != result.videos[0].shape[1:]:
                    raise ConsolidateError(
                        f"{entry.features}: shape {entry.shape} does not match "
                        f"{result.videos[0].features} {result.videos[0].shape}"
                    )
                _note_shared(result, sidecar_path, sidecar, strict)
            except json.JSONDecodeError as error:
                if strict:
                    raise ConsolidateError(f"{sidecar_path}: not JSON ({error.msg})") from error
                result.problems.append(f"{sidecar_path}: not JSON ({error.msg})")
                continue
            except ConsolidateError as error:
                if strict:
                    raise
                result.problems.append(str(error))
                continue
            seen[entry.key] = sidecar_path
            result.videos.append(entry)
        present = {v.key for v in result.videos if v.output_dir == output_dir}
        for key, record in sorted(latest.items()):
            if record.final_outcome == outputs.FAILED:
                result.failed.append(FailedVideo(key, str(record.path), str(record.error), str(output_dir)))
            elif record.final_outcome == outputs.OK and key not in present:
                log.warning("%s: manifest says %r is done but %s is missing", output_dir, key, record.output)
    return result


# --- reading helpers ----------------------------------------------------------------------------


def open_dataset(group: h5py.Group, name: str) -> h5py.Dataset:
    """Open a dataset; an external one with its files resolved next to the HDF5 file ("${ORIGIN}").

    HDF5 allows one external-file prefix per open dataset: close other handles to an external dataset
    (e.g. from `group[name]`) before calling this, and read its attributes after closing this one.
    """
    plain = h5py.h5d.open(group.id, name.encode())
    if plain.get_create_plist().get_external_count() == 0:
        return h5py.Dataset(plain)
    plain.close()
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_efile_prefix(EFILE_PREFIX.encode())
    return h5py.Dataset(h5py.h5d.open(group.id, name.encode(), dapl=dapl))


def video_keys(h5: h5py.File) -> list[str]:
    """Keys of the videos in a consolidated file (groups holding a `features` dataset), sorted."""
    keys: list[str] = []

    def visit(name: str) -> None:
        parent, _, leaf = name.rpartition("/")
        if leaf == "features" and parent and h5.get(name, getclass=True) is h5py.Dataset:
            keys.append(parent)

    h5.visit(visit)
    return sorted(keys)


def read_failed(h5: h5py.File) -> list[dict[str, Any]]:
    """The failed-video list stored in a consolidated file."""
    return json.loads(h5["_failed"].asstr()[()]) if "_failed" in h5 else []


def iter_h5_features(h5: h5py.File) -> Iterator[tuple[str, h5py.Group, h5py.Dataset]]:
    """(key, group, features dataset) for every video of a consolidated file, in key order."""
    for key in video_keys(h5):
        group = h5[key]
        yield key, group, open_dataset(group, "features")


# --- writing ------------------------------------------------------------------------------------


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """About CHUNK_BYTES of whole rows per chunk; None (contiguous) for an empty array."""
    if shape[0] == 0:
        return None
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return (max(1, min(shape[0], CHUNK_BYTES // row_bytes)), *shape[1:])


def _write_array(
    group: h5py.Group, name: str, npy: Path, layout: str, compression: str | None, h5_dir: Path
) -> None:
    """Copy a .npy into `group[name]` block by block, or point an external dataset at its data."""
    offset, shape, dtype = outputs.npy_data_offset(npy)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if layout == "external":
        relative = os.path.relpath(npy.resolve(), h5_dir.resolve())
        group.create_dataset(name, shape=shape, dtype=dtype, external=[(relative, offset, nbytes)])
        return
    chunks = _chunks(shape, dtype.itemsize)
    options: dict[str, Any] = {}
    if chunks is not None and compression is not None:
        options = {"compression": compression, "shuffle": True}
    dataset = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **options)
    row_bytes = nbytes // shape[0] if shape[0] else 1
    block_rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
    with open(npy, "rb") as f:
        f.seek(offset)
        for start in range(0, shape[0], block_rows):
            stop = min(shape[0], start + block_rows)
            data = f.read((stop - start) * row_bytes)
            if len(data) != (stop - start) * row_bytes:
                raise ConsolidateError(f"{npy}: file ended early while reading rows {start}-{stop}")
            dataset[start:stop] = np.frombuffer(data, dtype=dtype).reshape((stop - start, *shape[1:]))


def _write_video(
    h5: h5py.File, entry: VideoEntry, layout: str, compression: str | None, h5_dir: Path
) -> None:
    sidecar = outputs.read_sidecar(entry.sidecar)
    name = naming.hdf5_group_name(entry.key)
    try:
        group = h5.require_group(name)  # may exist already as the parent of another key ("P01" and "P01/x")
    except (TypeError, ValueError) as error:
        raise ConsolidateError(
            f"video key {entry.key!r} collides with another key's HDF5 objects ({error})"
        ) from error
    if any(child in group for child in ("features", "timestamps", *entry.logits)):
        raise ConsolidateError(f"video key {entry.key!r} collides with another key's HDF5 objects")
    _write_array(group, "features", entry.features, layout, compression, h5_dir)
    stamps = np.asarray(sidecar["timestamps"], dtype=np.float64).reshape(entry.shape[0], 3)
    group.create_dataset("timestamps", data=stamps, chunks=_chunks(stamps.shape, 8))
    for dataset_name, path in entry.logits.items():
        _write_array(group, dataset_name, path, layout, compression, h5_dir)
    attrs = {
        name: sidecar.get(name)
        for name in ("fps", "frames", "duration", "source", "video", "kind", "native_fps")
    }
    attrs["rows"] = entry.shape[0]
    attrs["dim"] = entry.shape[-1]
    for attr, value in attrs.items():
        if value is not None:
            group.attrs[attr] = value


def _write_file_metadata(h5: h5py.File, found: Scan, layout: str, compression: str | None) -> None:
    assert found.settings is not None
    attrs: dict[str, Any] = {name: attribute_value(value) for name, value in flatten(found.settings).items()}
    attrs.setdefault("model", found.model or "null")
    attrs.setdefault("checkpoint_sha256", found.checkpoint_sha256 or "null")
    attrs["checkpoint_random"] = attribute_value(found.checkpoint_random)
    attrs["package_version"] = ", ".join(sorted(found.package_versions)) or "null"
    attrs["consolidated_by"] = __version__
    attrs["layout"] = layout
    attrs["compression"] = compression or "none"
    attrs["num_videos"] = len(found.videos)
    attrs["num_failed"] = len(found.failed)
    attrs["created"] = outputs.now_iso()
    for name, value in attrs.items():
        h5.attrs[name] = value
    configs = [
        yaml.safe_dump(json.loads(json.dumps(c, default=str)), sort_keys=True) for c in found.configs.values()
    ]
    h5.create_dataset("_config", data="---\n".join(configs))
    failed = [vars(f) for f in found.failed]
    h5.create_dataset("_failed", data=json.dumps(failed, indent=1, sort_keys=True))


def _option(value: Any) -> str | None:
    """An enum member or string option as its plain value ("none" and None as None)."""
    value = getattr(value, "value", value)
    return None if value in (None, "none") else str(value)


def consolidate(
    output_dirs: Sequence[Path],
    dest: Path | None = None,
    *,
    layout: str = "copy",
    compression: str | None = None,
) -> Path:
    """Write all videos of `output_dirs` into one HDF5 file (see the module docstring); returns its path."""
    layout_name = _option(layout) or "copy"
    compression_name = _option(compression)
    if layout_name not in LAYOUTS:
        raise ConsolidateError(f"layout: must be one of {', '.join(LAYOUTS)} (got {layout_name!r})")
    if compression_name is not None and compression_name not in COMPRESSIONS:
        raise ConsolidateError(f"compression: must be gzip, lzf or none (got {compression_name!r})")
    if compression_name is not None and layout_name == "external":
        raise ConsolidateError(
            "compression: applies to the copy layout only (external stores no feature bytes)"
        )
    if not output_dirs:
        raise ConsolidateError("no output dir given")
    output_dirs = [Path(d) for d in output_dirs]
    dest = Path(dest) if dest is not None else output_dirs[0] / DEFAULT_NAME
    if dest.is_dir():
        raise ConsolidateError(f"{dest}: is a directory (give an .h5 file name)")
    found = scan(output_dirs)
    if not found.videos:
        failed = f" ({len(found.failed)} failed video(s))" if found.failed else ""
        raise ConsolidateError(f"{', '.join(map(str, output_dirs))}: no features to consolidate{failed}")
    with outputs.atomic_file(dest) as temp, h5py.File(temp, "w") as h5:
        _write_file_metadata(h5, found, layout_name, compression_name)
        for number, entry in enumerate(found.videos, start=1):
            _write_video(h5, entry, layout_name, compression_name, dest.parent)
            if number % 500 == 0:
                log.info("consolidated %d/%d videos", number, len(found.videos))
    log.info(
        "wrote %s: %d videos (%s layout), %d failed", dest, len(found.videos), layout_name, len(found.failed)
    )
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.consolidate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output_dirs", nargs="+", type=Path, help="output dir(s) of extraction runs")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help=f"HDF5 file to write (default: <first output dir>/{DEFAULT_NAME})",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="copy",
        help="copy the features in, or point at the .npy files (external)",
    )
    parser.add_argument(
        "--compression",
        choices=(*COMPRESSIONS, "none"),
        default="none",
        help="compression of the copied features",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dest = consolidate(args.output_dirs, args.output, layout=args.layout, compression=args.compression)
    except (ConsolidateError, outputs.OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
