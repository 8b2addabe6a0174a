"""Everything an output dir holds, and the only code that writes it.

Layout of an output dir (names come from `pipeline.naming`):
    features/<key>_<T>.npy     float32/16 (rows, dim) or (rows, crops, dim)    } output.store=files
    features/<key>_<T>.json    sidecar: timestamps + metadata + settings + config }
    packed/shard-{i}-of-{N}/part-{k}.npk   output.store=packed: the same, appended (`store`)
    manifests/shard-{i}-of-{N}.jsonl   one record per video and run, appended when the video ends
    locks/shard-{i}-of-{N}.lock        fcntl lock held while a shard runs
    runs/<timestamp>.json              one per invocation

`atomic` (atomic writes, temp files, hashes), `records` (the typed manifest line and sidecar), `manifest`
(appending and reading manifests), `store` (writing a finished video, either store), `reader` (reading
every finished video back, either store), `resume` (whether kept work still counts), `locks` (shard
locks), `npyfile` (a feature file's header).
"""

from pipeline.outputs.atomic import (
    FOREIGN_TEMP_MAX_AGE_S,
    TEMP_MARK,
    OutputError,
    atomic_file,
    atomic_write,
    clean_stale_temps,
    file_sha256,
    is_stale_temp,
    now_iso,
    save_array,
    save_json,
    temp_owner,
)
from pipeline.outputs.locks import LockError, ShardLock
from pipeline.outputs.manifest import (
    ManifestProblem,
    ManifestWriter,
    append_record,
    appended_records,
    latest_records,
    manifest_files,
    newest,
    read_kept,
    read_manifest,
    settings_digest,
)
from pipeline.outputs.npyfile import npy_data_offset
from pipeline.outputs.records import (
    FAILED,
    OK,
    SKIPPED,
    CheckpointRecord,
    ManifestRecord,
    Sidecar,
    iter_sidecars,
    load_sidecar,
    read_sidecar,
    save_sidecar,
    settings_of_sidecar,
)
from pipeline.outputs.resume import (
    VERIFY_MODES,
    ResumeDecision,
    changed_settings,
    decide_resume,
    unchanged_parts,
)
from pipeline.outputs.store import (
    STORES,
    ArrayRef,
    FilesStore,
    PackedStore,
    PackedVideo,
    Stored,
    VideoArrays,
    VideoStore,
    part_counts,
    part_extents,
    part_header,
    read_packed,
    record_sha256,
)

__all__ = [
    "STORES",
    "VERIFY_MODES",
    "ArrayRef",
    "FilesStore",
    "ManifestWriter",
    "PackedStore",
    "PackedVideo",
    "Stored",
    "VideoArrays",
    "VideoStore",
    "part_counts",
    "part_extents",
    "unchanged_parts",
    "part_header",
    "read_kept",
    "read_packed",
    "record_sha256",
    "settings_digest",
    "FAILED",
    "FOREIGN_TEMP_MAX_AGE_S",
    "OK",
    "SKIPPED",
    "TEMP_MARK",
    "CheckpointRecord",
    "LockError",
    "ManifestProblem",
    "ManifestRecord",
    "OutputError",
    "ResumeDecision",
    "ShardLock",
    "Sidecar",
    "append_record",
    "atomic_file",
    "atomic_write",
    "changed_settings",
    "clean_stale_temps",
    "decide_resume",
    "file_sha256",
    "is_stale_temp",
    "iter_sidecars",
    "appended_records",
    "latest_records",
    "newest",
    "load_sidecar",
    "manifest_files",
    "now_iso",
    "npy_data_offset",
    "read_manifest",
    "read_sidecar",
    "save_array",
    "save_json",
    "save_sidecar",
    "settings_of_sidecar",
    "temp_owner",
]
