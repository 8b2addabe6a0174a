"""Everything an output dir holds, and the only code that writes it.

Layout of an output dir (names come from `pipeline.naming`):
    features/<key>_<T>.npy     float32/16 (rows, dim) or (rows, crops, dim)
    features/<key>_<T>.json    sidecar: timestamps + metadata + settings + resolved config
    manifests/shard-{i}-of-{N}.jsonl   one record per video and run, appended when the video ends
    locks/shard-{i}-of-{N}.lock        fcntl lock held while a shard runs
    runs/<timestamp>.json              one per invocation

`atomic` (atomic writes, temp files, hashes), `records` (the typed manifest line and sidecar), `manifest`
(appending and reading manifests), `resume` (whether kept work still counts), `locks` (shard locks),
`npyfile` (a feature file's header).
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
    append_record,
    latest_records,
    manifest_files,
    read_manifest,
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
from pipeline.outputs.resume import ResumeDecision, changed_settings, decide_resume

__all__ = [
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
    "latest_records",
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
