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
    /_index, /_configs  JSON text: what each video was written from (its manifest record's place and
                        sha256), and the configs by digest: what lets a rerun rewrite only what changed
    /.attrs             model, checkpoint_sha256, checkpoint_random, every extraction setting flattened
                        with dots ("resize.mode"; null -> "null", lists -> arrays or JSON text),
                        package_version, consolidated_by, created, layout, compression, num_videos,
                        num_failed
A key keeps its slashes as nested HDF5 groups: "P01/videos/P01_01" is group P01 > videos > P01_01.
Keys whose first part is one of these reserved names are refused.

Layouts: `copy` writes the features into the file (chunked, optional gzip/lzf). `external` writes no
feature bytes: each `features` (and logits) dataset is an HDF5 external-storage dataset pointing at
the data section of its .npy, by a path relative to the HDF5 file's folder, so the output dir can move
as a whole. HDF5 resolves relative external paths against the current directory unless the dataset
is opened with the external-file prefix "${ORIGIN}" (the HDF5 file's folder): use `open_dataset`
below, or set HDF5_EXTFILE_PREFIX='${ORIGIN}' in the environment before h5py is imported.

Videos come from either store (feature files or packed parts, `pipeline.outputs.reader`): only those
whose newest manifest record is ok are taken (a sidecar left by an earlier run of a video that failed
since, or superseded by another file name, is skipped); sidecars with no manifest record are taken as
they are. All videos must share the same extraction settings.

Reruns cost what changed: the file records what it was written from (`/_index`, and one digest of the
manifests' newest records); a file that is current is left alone without opening a video, and one where
fewer than half of the videos changed is updated in place (a `.updating` marker beside it until done:
a kill in between makes the next consolidation rewrite it whole). Otherwise the file is written under
a temporary name, one video at a time, then renamed: a failure leaves no half file behind. A copy
checks each packed record's sha256 as it reads it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from pipeline import __version__, naming, outputs
from pipeline.errors import PipelineError, exit_status
from pipeline.outputs.manifest import latest_records
from pipeline.outputs.reader import (
    FailedVideo,
    ReadError,
    Scan,
    StoredVideo,
    flatten,
    open_record,
    record_identity,
    scan,
)
from pipeline.outputs.records import FAILED, OK, ManifestRecord, iter_sidecars
from pipeline.outputs.store import ArrayRef

log = logging.getLogger(__name__)

LAYOUTS = ("copy", "external")
COMPRESSIONS = ("gzip", "lzf")
RESERVED_NAMES = ("_config", "_failed", "_index", "_configs")
FEATURE_DTYPES = ("float32", "float16")
EFILE_PREFIX = "${ORIGIN}"
RECORDS_ATTR = "records_sha256"  # root attribute: what the file holds (records_digest)
INDEX_ATTR = "index_meta"  # root attribute: JSON of the settings and shapes an in-place update must match
UPDATING_SUFFIX = ".updating"  # beside the file while it is updated in place
DEFAULT_NAME = naming.HDF5_NAME
CHUNK_BYTES = 1 << 20  # target size of one HDF5 chunk
BLOCK_BYTES = 64 << 20  # most bytes of one video held in memory while copying


class ConsolidateError(PipelineError, ValueError):
    """The output dirs cannot be consolidated (no features, mixed settings, broken file...)."""


# --- settings -----------------------------------------------------------------------------------


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
    group: h5py.Group, name: str, ref: ArrayRef, layout: str, compression: str | None, h5_dir: Path
) -> None:
    """Copy an array into `group[name]` block by block, or point an external dataset at its bytes."""
    shape, dtype, nbytes = ref.shape, ref.dtype, ref.nbytes
    if layout == "external":
        relative = os.path.relpath(ref.path.resolve(), h5_dir.resolve())
        group.create_dataset(name, shape=shape, dtype=dtype, external=[(relative, ref.offset, nbytes)])
        return
    chunks = _chunks(shape, dtype.itemsize)
    options: dict[str, Any] = {}
    if chunks is not None and compression is not None:
        options = {"compression": compression, "shuffle": True}
    dataset = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **options)
    row_bytes = nbytes // shape[0] if shape[0] else 1
    block_rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
    with open(ref.path, "rb") as f:
        f.seek(ref.offset)
        for start in range(0, shape[0], block_rows):
            stop = min(shape[0], start + block_rows)
            data = f.read((stop - start) * row_bytes)
            if len(data) != (stop - start) * row_bytes:
                raise ConsolidateError(f"{ref.path}: file ended early while reading rows {start}-{stop}")
            dataset[start:stop] = np.frombuffer(data, dtype=dtype).reshape((stop - start, *shape[1:]))


def config_digest(config: Mapping[str, Any] | None) -> str:
    """Short name of a resolved run config ("" for none)."""
    if config is None:
        return ""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_video(
    h5: h5py.File, video: StoredVideo, layout: str, compression: str | None, h5_dir: Path
) -> list[str]:
    """Write one video's group; returns its index entry [identity, config digest, package version]."""
    sidecar = video.sidecar
    name = naming.hdf5_group_name(video.key)
    try:
        group = h5.require_group(name)  # may exist already as the parent of another key ("P01" and "P01/x")
    except (TypeError, ValueError) as error:
        raise ConsolidateError(
            f"video key {video.key!r} collides with another key's HDF5 objects ({error})"
        ) from error
    if any(child in group for child in ("features", "timestamps", *video.logits)):
        raise ConsolidateError(f"video key {video.key!r} collides with another key's HDF5 objects")
    if layout == "copy":  # data read anyway is checked against its manifest record
        try:
            video.verify()
        except ReadError as error:
            raise ConsolidateError(str(error)) from error
    _write_array(group, "features", video.features, layout, compression, h5_dir)
    stamps = video.timestamps.reshape(video.shape[0], 3)
    group.create_dataset("timestamps", data=stamps, chunks=_chunks(stamps.shape, 8))
    for dataset_name, ref in video.logits.items():
        _write_array(group, dataset_name, ref, layout, compression, h5_dir)
    attrs = {
        name: getattr(sidecar, name)
        for name in ("fps", "frames", "duration", "source", "video", "kind", "native_fps")
    }
    attrs["rows"] = video.shape[0]
    attrs["dim"] = video.shape[-1]
    for attr, value in attrs.items():
        if value is not None:
            group.attrs[attr] = value
    return [video.identity, config_digest(sidecar.config), str(sidecar.package_version or "")]


@dataclass
class FileIndex:
    """What a consolidated file holds, kept in it (`_index`, `_configs`, root attributes) so that a rerun
    can tell what changed without opening every video."""

    videos: dict[str, list[str]]  # key -> [identity, config digest, package version]
    configs: dict[str, Any]  # config digest -> resolved config
    settings: dict[str, Any]
    row_shape: list[int]  # features' shape after the rows
    model: str | None
    checkpoint_sha256: str | None
    checkpoint_random: bool | None


def _write_file_metadata(
    h5: h5py.File,
    index: FileIndex,
    failed: Sequence[FailedVideo],
    layout: str,
    compression: str | None,
    digest: str,
) -> None:
    """Root attributes (settings flattened, model, checkpoint, counts...), `_config`, `_failed`, `_index`."""
    attrs: dict[str, Any] = {name: attribute_value(value) for name, value in flatten(index.settings).items()}
    attrs.setdefault("model", index.model or "null")
    attrs.setdefault("checkpoint_sha256", index.checkpoint_sha256 or "null")
    attrs["checkpoint_random"] = attribute_value(index.checkpoint_random)
    versions = {v[2] for v in index.videos.values() if v[2]}
    attrs["package_version"] = ", ".join(sorted(versions)) or "null"
    attrs["consolidated_by"] = __version__
    attrs["layout"] = layout
    attrs["compression"] = compression or "none"
    attrs["num_videos"] = len(index.videos)
    attrs["num_failed"] = len(failed)
    attrs["created"] = outputs.now_iso()
    attrs[RECORDS_ATTR] = digest
    attrs[INDEX_ATTR] = json.dumps(
        {
            "settings": index.settings,
            "row_shape": index.row_shape,
            "model": index.model,
            "checkpoint_sha256": index.checkpoint_sha256,
            "checkpoint_random": index.checkpoint_random,
        },
        sort_keys=True,
        default=str,
    )
    for name, value in attrs.items():
        h5.attrs[name] = value
    used = {v[1] for v in index.videos.values()}
    configs = {d: c for d, c in index.configs.items() if d in used}
    texts = [yaml.safe_dump(json.loads(json.dumps(c, default=str)), sort_keys=True) for c in configs.values()]
    for name in RESERVED_NAMES:
        if name in h5:
            del h5[name]
    h5.create_dataset("_config", data="---\n".join(texts))
    h5.create_dataset("_failed", data=json.dumps([vars(f) for f in failed], indent=1, sort_keys=True))
    h5.create_dataset("_index", data=json.dumps(index.videos, sort_keys=True))
    h5.create_dataset("_configs", data=json.dumps(configs, sort_keys=True, default=str))


def _option(value: Any) -> str | None:
    """An enum member or string option as its plain value ("none" and None as None)."""
    value = getattr(value, "value", value)
    return None if value in (None, "none") else str(value)


@dataclass
class RecordedView:
    """What the output dirs hold according to their manifests alone (no feature file or part opened):
    enough to tell whether a consolidated file is current, and which videos changed."""

    records: dict[str, tuple[ManifestRecord, Path]]  # key -> newest ok record, its output dir
    failed: list[FailedVideo]

    def identities(self) -> dict[str, str]:
        return {key: record_identity(r) for key, (r, _) in self.records.items()}


def recorded_view(
    output_dirs: Sequence[Path], known: Mapping[Path, Mapping[str, ManifestRecord]] | None = None
) -> RecordedView | None:
    """The videos the manifests say are done; None when the manifests alone cannot tell (a sidecar with no
    manifest record, a key in two output dirs, a record without a checksum): then every video is read."""
    records: dict[str, tuple[ManifestRecord, Path]] = {}
    failed: list[FailedVideo] = []
    for output_dir in output_dirs:
        if not any((output_dir / name).is_dir() for name in (naming.FEATURES_DIR, naming.MANIFESTS_DIR)):
            return None  # scan() names the problem
        latest = (known or {}).get(output_dir)
        if latest is None:
            latest, _ = latest_records(output_dir)
        outputs_of_dir = set()
        for key, record in sorted(latest.items()):
            if record.final_outcome == FAILED:
                failed.append(FailedVideo(key, str(record.path), str(record.error), str(output_dir)))
            elif record.final_outcome == OK:
                if key in records or not record.sha256 or not record.output:
                    return None
                records[key] = (record, output_dir)
                outputs_of_dir.add(record.output)
        if (output_dir / naming.FEATURES_DIR).is_dir():
            for sidecar in iter_sidecars(output_dir):
                relative = naming.feature_of_sidecar(sidecar.relative_to(output_dir).as_posix())
                if relative not in outputs_of_dir and not _superseded(sidecar, latest):
                    return None
    return RecordedView(records, failed)


def _superseded(sidecar: Path, latest: Mapping[str, ManifestRecord]) -> bool:
    """Whether a sidecar no record points at belongs to a video whose newest record is elsewhere."""
    try:
        key = outputs.read_sidecar(sidecar).get("key")
    except (OSError, ValueError):
        return False
    return key is not None and str(key) in latest


def records_digest(
    identities: Mapping[str, str], failed: Sequence[FailedVideo], layout: str, compression: str | None
) -> str:
    """What a consolidated file must hold, in one sha256: every video's identity, the failures, layout,
    compression and this package's version. Equal digest: nothing to rewrite."""
    text = json.dumps(
        {
            "videos": sorted(identities.items()),
            "failed": sorted((f.key, f.error, f.output_dir) for f in failed),
            "layout": layout,
            "compression": compression,
            "format": __version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def updating_marker(dest: Path) -> Path:
    """The file that says an in-place update of `dest` started and did not finish."""
    return dest.with_name(dest.name + UPDATING_SUFFIX)


def read_index(dest: Path, layout: str, compression: str | None) -> tuple[FileIndex, str] | None:
    """The index of an existing consolidated file and its records digest, when it can be updated in place
    (same layout and compression, written by this version, not left half-updated); None otherwise."""
    if not dest.is_file() or updating_marker(dest).exists():
        return None
    try:
        with h5py.File(dest, "r") as h5:
            attrs = h5.attrs
            if attrs.get("layout") != layout or attrs.get("compression") != (compression or "none"):
                return None
            if attrs.get("consolidated_by") != __version__ or INDEX_ATTR not in attrs:
                return None
            meta = json.loads(str(attrs[INDEX_ATTR]))
            index = FileIndex(
                json.loads(h5["_index"].asstr()[()]),
                json.loads(h5["_configs"].asstr()[()]),
                meta["settings"],
                list(meta["row_shape"]),
                meta["model"],
                meta["checkpoint_sha256"],
                meta["checkpoint_random"],
            )
            return index, str(attrs.get(RECORDS_ATTR, ""))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _update_in_place(
    dest: Path,
    index: FileIndex,
    view: RecordedView,
    layout: str,
    compression: str | None,
    digest: str,
) -> tuple[int, int] | None:
    """Rewrite only the videos whose identity changed (and drop those gone) in the existing file; returns
    (written, removed), or None (file untouched) when a changed video does not fit it (other settings or
    shape): then the whole file is written anew. A marker file is written first and removed last: a kill
    in between leaves it, and the next consolidation rewrites the whole file."""
    identities = view.identities()
    changed_keys = sorted(k for k, ident in identities.items() if index.videos.get(k, [""])[0] != ident)
    gone = sorted(set(index.videos) - set(identities))
    if len(changed_keys) + len(gone) >= max(1, len(index.videos)) / 2:
        return None
    changed = []
    for key in changed_keys:
        record, output_dir = view.records[key]
        try:
            video = open_record(record, output_dir)
        except ReadError as error:
            raise ConsolidateError(str(error)) from error
        if video.sidecar.effective_settings != index.settings or list(video.shape[1:]) != index.row_shape:
            return None
        changed.append(video)
    marker = updating_marker(dest)
    outputs.atomic_write(marker, lambda f: f.write(f"updating since {outputs.now_iso()}\n".encode()))
    with h5py.File(dest, "a") as h5:
        for key in [*gone, *changed_keys]:
            name = naming.hdf5_group_name(key)
            if name in h5:
                group = h5[name]
                for child in [c for c in group if c in ("features", "timestamps") or c.startswith("logits")]:
                    del group[child]
                for attr in list(group.attrs):
                    del group.attrs[attr]
            index.videos.pop(key, None)
        for video in changed:
            index.videos[video.key] = _write_video(h5, video, layout, compression, dest.parent)
            if video.sidecar.config is not None:
                index.configs[config_digest(video.sidecar.config)] = video.sidecar.config
        _write_file_metadata(h5, index, view.failed, layout, compression, digest)
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())
    marker.unlink()
    return len(changed), len(gone)


def _write_whole(dest: Path, found: Scan, layout: str, compression: str | None, digest: str) -> None:
    """Write every video into a new file under a temporary name, then rename it over `dest`."""
    assert found.settings is not None
    index = FileIndex(
        {},
        {},
        found.settings,
        list(found.videos[0].shape[1:]),
        found.model,
        found.checkpoint_sha256,
        found.checkpoint_random,
    )
    with outputs.atomic_file(dest) as temp, h5py.File(temp, "w") as h5:
        for number, video in enumerate(found.videos, start=1):
            index.videos[video.key] = _write_video(h5, video, layout, compression, dest.parent)
            if video.sidecar.config is not None:
                index.configs[config_digest(video.sidecar.config)] = video.sidecar.config
            if number % 500 == 0:
                log.info("consolidated %d/%d videos", number, len(found.videos))
        _write_file_metadata(h5, index, found.failed, layout, compression, digest)
    updating_marker(dest).unlink(missing_ok=True)


def consolidate(
    output_dirs: Sequence[Path],
    dest: Path | None = None,
    *,
    layout: str = "copy",
    compression: str | None = None,
    latest: Mapping[Path, Mapping[str, ManifestRecord]] | None = None,
) -> Path:
    """Write all videos of `output_dirs` into one HDF5 file (see the module docstring); returns its path.
    `latest`: an output dir's newest manifest records when the caller has just read them.

    A rerun costs what changed: a file already there that holds what the manifests say is left as it is
    (no video opened); one with the same layout and compression is updated in place, video by video, when
    fewer than half of its videos changed and the changed ones share its settings; otherwise the whole
    file is written anew under a temporary name.
    """
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
    outputs.clean_stale_temps(dest.parent)  # a consolidation killed before left its temp file
    view = recorded_view(output_dirs, latest)
    held = read_index(dest, layout_name, compression_name)
    if view is not None and view.records:
        _check_reserved(view.records)
        digest = records_digest(view.identities(), view.failed, layout_name, compression_name)
        if held is not None and held[1] == digest:
            log.info("%s is up to date (%d videos): left as it is", dest, len(view.records))
            return dest
        if held is not None:
            done = _update_in_place(dest, held[0], view, layout_name, compression_name, digest)
            if done is not None:
                log.info(
                    "updated %s in place: %d videos written, %d removed, %d kept",
                    dest,
                    *done,
                    len(view.records) - done[0],
                )
                return dest
    try:
        found = scan(output_dirs)
    except ReadError as error:
        raise ConsolidateError(str(error)) from error
    if not found.videos:
        failed = f" ({len(found.failed)} failed video(s))" if found.failed else ""
        raise ConsolidateError(f"{', '.join(map(str, output_dirs))}: no features to consolidate{failed}")
    _check_reserved({v.key: v.where for v in found.videos})
    identities = {v.key: v.identity for v in found.videos}
    digest = records_digest(identities, found.failed, layout_name, compression_name)
    _write_whole(dest, found, layout_name, compression_name, digest)
    log.info(
        "wrote %s: %d videos (%s layout), %d failed", dest, len(found.videos), layout_name, len(found.failed)
    )
    return dest


def _check_reserved(keys: Mapping[str, Any]) -> None:
    for key, where in keys.items():
        if key.split("/", 1)[0] in RESERVED_NAMES:
            place = where[1] if isinstance(where, tuple) else where
            raise ConsolidateError(
                f"{place}: video key {key!r} uses a reserved HDF5 name ({', '.join(RESERVED_NAMES)})"
            )


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
    sys.exit(exit_status(main, "pipeline.consolidate"))  # a reader that goes away (| head) is no error
