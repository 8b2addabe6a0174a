"""`--probe N`: what the features alone cannot tell (the input normalisation, the resize, the channel order),
found by re-extracting N of our videos under candidate settings and measuring which comes closest to theirs.

The run's resolved config (recorded in every sidecar and in features.h5's `/_configs`) is the starting
point; each candidate changes one setting of it (the recorded settings first). Every candidate re-extracts
the same videos from their sources (`data.root` + the listed path, or the recorded absolute source) with
the run's weights, in this process, into memory (nothing is written to the output dir), and is scored by
the median per-row cosine to their features at the alignment the comparison found for each video
(pooled over the probed videos' rows). The closest candidate names the setting to change.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.api import FeatureExtractor
from pipeline.assemble import as_object, frame_transform
from pipeline.compare import align
from pipeline.compare.measure import DIRECT_RELATED, VideoResult, primary, views
from pipeline.compare.ours import Ours
from pipeline.compare.released import BadFile, Release, orient
from pipeline.config import ChannelOrder, ExtractConfig, Interpolation, ResizeMode, Stream, validate
from pipeline.errors import PipelineError
from pipeline.models.registry import get_spec
from pipeline.outputs.reader import ReadError, scan
from pipeline.transforms import RESIZERS
from pipeline.weights import WeightsInfo, weights_info

# Input normalisations the registry's models use (mean, std per RGB channel), each with where it is from.
NORMALISATIONS: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...] = (
    ("kinetics (PySlowFast)", (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("kinetics (torchvision video)", (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
    ("[-1, 1]", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
)
OTHER_MODES = {  # resize modes tried instead of the run's (fixed needs sizes of its own: not guessed)
    ResizeMode.square: (ResizeMode.short_side,),
    ResizeMode.short_side: (ResizeMode.square,),
    ResizeMode.fixed: (ResizeMode.square, ResizeMode.short_side),
}
MARGIN = 1e-4  # a candidate is closer or farther than the recorded settings beyond this median cosine
REPRODUCED = 0.999  # the recorded settings should give our own stored features back at least this close
CLOSE_ENOUGH = 0.99  # below this, the closest candidate still leaves something else that differs


class ProbeImpossible(PipelineError, ValueError):
    """Probing cannot run: the message says why in one line."""


@dataclass(frozen=True)
class Candidate:
    """One setting to try: a label and the config overrides (dotted key -> value) from the run's config."""

    label: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def change(self) -> str:
        """The overrides as the command line writes them (empty for the recorded settings)."""
        return " ".join(f"{key}={_show(value)}" for key, value in self.overrides)


@dataclass
class CandidateResult:
    """How close one candidate's features come to theirs."""

    candidate: Candidate
    median: float | None = None  # median per-row cosine over the probed videos' paired rows
    p5: float | None = None
    rows: int = 0
    verdict: str = ""  # recorded / closest / closer / as close / farther / failed
    error: str | None = None


@dataclass
class ProbeVideo:
    """One of our videos to re-extract: its id, key, source path, our features, their oriented array and
    the comparison's result (alignment and view)."""

    id: str
    key: str
    source: Path
    ours: np.ndarray
    theirs: np.ndarray
    result: VideoResult


@dataclass
class Probe:
    """What probing found; `impossible` says why it could not run."""

    requested: int
    videos: list[str] = field(default_factory=list)
    results: list[CandidateResult] = field(default_factory=list)
    reproduced: float | None = None  # median cosine of the recorded settings' re-extraction to our features
    notes: list[str] = field(default_factory=list)
    impossible: str | None = None
    line: str = ""
    change: str | None = None  # the overrides of the closest candidate, when one beats the recorded settings
    recorded: str = ""  # the recorded values of the settings tried


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(getattr(value, "value", value))


# --- what to re-extract -------------------------------------------------------------------------


def _h5_sources(
    path: Path, keys: Sequence[str]
) -> dict[str, tuple[dict[str, Any] | None, str | None, str | None]]:
    """Per key: (recorded config, listed path, recorded source) from a features.h5."""
    found: dict[str, tuple[dict[str, Any] | None, str | None, str | None]] = {}
    with h5py.File(path, "r") as h5:
        configs: dict[str, Any] = json.loads(h5["_configs"].asstr()[()]) if "_configs" in h5 else {}
        index: dict[str, list[str]] = json.loads(h5["_index"].asstr()[()]) if "_index" in h5 else {}
        only = next(iter(configs.values())) if len(configs) == 1 else None
        for key in keys:
            group = h5.get(key)
            attrs = dict(group.attrs) if isinstance(group, h5py.Group) else {}
            entry = index.get(key) or []
            config = configs.get(str(entry[1])) if len(entry) > 1 else only
            found[key] = (
                config,
                str(attrs["video"]) if "video" in attrs else None,
                str(attrs["source"]) if "source" in attrs else None,
            )
    return found


def _dir_sources(
    path: Path, keys: Sequence[str]
) -> dict[str, tuple[dict[str, Any] | None, str | None, str | None]]:
    try:
        videos = {v.key: v for v in scan([path], strict=False).videos}
    except ReadError as error:
        raise ProbeImpossible(f"cannot probe: {error}") from error
    return {
        key: (videos[key].sidecar.config, videos[key].sidecar.video, videos[key].sidecar.source)
        for key in keys
        if key in videos
    }


def _source_path(config: dict[str, Any], listed: str | None, source: str | None) -> tuple[Path | None, str]:
    """The video file: `data.root` + its listed path, else its recorded source; and what was tried."""
    tried = []
    root = (config.get("data") or {}).get("root")
    if root and listed:
        path = Path(str(root)).expanduser() / listed
        if path.exists():
            return path, ""
        tried.append(str(path))
    if source:
        path = Path(source).expanduser()
        if path.is_absolute() and path.exists():
            return path, ""
        if str(path) not in tried:
            tried.append(str(path))
    return None, " or ".join(tried) or "no path recorded"


def probe_videos(
    ours: Ours, results: Sequence[VideoResult], release: Release, count: int, notes: list[str]
) -> tuple[list[ProbeVideo], dict[str, Any]]:
    """The first `count` compared videos whose rows compare with theirs, their sources and the run's config;
    ProbeImpossible (one line) when none can be re-extracted."""
    if ours.kind not in ("output dir", "features.h5"):
        raise ProbeImpossible(
            f"cannot probe: --probe re-extracts our videos with the run's recorded config, which an output dir "
            f"or its features.h5 holds, not {ours.path} ({ours.kind})"
        )
    usable = [r for r in results if r.cosine is not None and (r.related or r.cosine.median >= DIRECT_RELATED)]
    if not usable:
        raise ProbeImpossible(
            "cannot probe: no compared video's rows are like theirs at the alignment found (other dims, or "
            "another model): the input settings cannot be told apart by cosine"
        )
    kept = {r.id for r in usable}
    unlike = [r.id for r in results if r.id not in kept]
    if unlike:
        notes.append(f"{len(unlike)} compared video(s) not probed, rows unlike theirs (e.g. {unlike[0]})")
    picked = usable[:count]
    keys = [ours.videos[r.id].key for r in picked]
    read = _h5_sources if ours.kind == "features.h5" else _dir_sources
    recorded = read(ours.path, keys)
    config: dict[str, Any] | None = None
    videos: list[ProbeVideo] = []
    missing: list[str] = []
    for r, key in zip(picked, keys, strict=True):
        video_config, listed, source = recorded.get(key, (None, None, None))
        if video_config is None:
            raise ProbeImpossible(
                f"cannot probe: {ours.path} records no resolved config for {key!r} (written by an older "
                "version?): the candidates start from the run's config"
            )
        if config is None:
            config = video_config
        elif video_config != config:
            notes.append(f"{key}: written with another config than the first probed video: left out")
            continue
        path, tried = _source_path(video_config, listed, source)
        if path is None:
            missing.append(f"{key} ({tried})")
            continue
        try:
            theirs_array = release.videos[r.id].load()
        except BadFile as error:
            notes.append(f"{r.id}: theirs unreadable ({error})")
            continue
        mine = ours.videos[r.id].features
        theirs_array, _ = orient(theirs_array, len(mine), int(mine.shape[-1]))
        videos.append(ProbeVideo(r.id, key, path, mine, theirs_array, r))
    if not videos:
        why = f"the source video is gone: {missing[0]}" if missing else "no video left to re-extract"
        raise ProbeImpossible(f"cannot probe: {why}; --probe re-extracts our videos from their sources")
    if missing:
        notes.append(f"{len(missing)} video(s) not probed, their source is gone: {', '.join(missing[:3])}")
    assert config is not None
    return videos, config


# --- candidates ---------------------------------------------------------------------------------


def run_config(recorded: dict[str, Any], root: Path) -> DictConfig:
    """The run's recorded config for an in-process re-extraction of a few videos: this process, decoding
    in threads (no worker processes to start for each candidate), no compile, no logits, `data.root` where
    the videos are (none of these changes the numbers)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExtractConfig), recorded)
    except Exception as error:  # a key or value this version does not know: OmegaConf names it
        raise ProbeImpossible(
            f"cannot probe: the recorded config does not fit this version: {str(error).splitlines()[0]}"
        ) from error
    assert isinstance(cfg, DictConfig)
    for key, value in (
        ("hardware.launcher", "inprocess"),
        ("hardware.num_shards", 1),
        ("hardware.shard_index", None),
        ("hardware.compile", False),
        ("hardware.decode_backend", "thread"),
        ("output.logits", False),
        ("data.root", str(root)),
    ):
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def describe(cfg: ExtractConfig) -> str:
    """The recorded values of the settings the candidates change."""
    d, m = cfg.data, cfg.model
    return (
        f"model.channel_order={m.channel_order.value} data.resize.mode={d.resize.mode.value} "
        f"(resampler {frame_transform(cfg).recorded_interpolation}) model.mean={_show(list(m.mean))} "
        f"model.std={_show(list(m.std))}"
    )


def _device_fallback(cfg: DictConfig, notes: list[str]) -> None:
    if str(cfg.hardware.device) != "cuda":
        return
    if not torch.cuda.is_available():
        notes.append(
            f"the run used cuda ({cfg.hardware.precision}); no GPU here: re-extracted on the CPU in fp32 "
            "(precision moves features by ~1e-3, far less than the settings tried)"
        )
        OmegaConf.update(cfg, "hardware.device", "cpu", merge=False)
        OmegaConf.update(cfg, "hardware.precision", "fp32", merge=False)


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=0, abs_tol=1e-6) for x, y in zip(a, b, strict=True)
    )


def candidates(cfg: ExtractConfig) -> list[Candidate]:
    """The recorded settings, then one change at a time: the channel order, each other interpolation,
    the other resize mode(s), each other input normalisation (the model's own first)."""
    d, m = cfg.data, cfg.model
    interpolation = frame_transform(cfg).recorded_interpolation
    found = [Candidate("as recorded")]
    rgb = d.stream is Stream.rgb
    if rgb:
        other = ChannelOrder.bgr if m.channel_order is ChannelOrder.rgb else ChannelOrder.rgb
        found.append(Candidate(f"channel order {other.value}", (("model.channel_order", other.value),)))
    backend = () if d.resize.backend.value == "torch" else (("data.resize.backend", "torch"),)
    for option in Interpolation:
        if option is Interpolation.auto or RESIZERS[option.value].recorded == interpolation:
            continue
        found.append(
            Candidate(
                f"interpolation {option.value}", (*backend, ("data.resize.interpolation", option.value))
            )
        )
    for mode in OTHER_MODES[d.resize.mode]:
        found.append(Candidate(f"resize mode {mode.value}", (("data.resize.mode", mode.value),)))
    if rgb:
        spec = get_spec(m.name)
        norms = [(f"{m.name}'s own", spec.mean, spec.std), *NORMALISATIONS]
        tried = [(tuple(m.mean), tuple(m.std))]
        for name, mean, std in norms:
            if any(_same(mean, a) and _same(std, b) for a, b in tried):
                continue
            tried.append((tuple(mean), tuple(std)))
            found.append(
                Candidate(f"mean/std {name}", (("model.mean", list(mean)), ("model.std", list(std))))
            )
    return found


# --- re-extraction and scores -------------------------------------------------------------------


def _comparable(features: np.ndarray, video: ProbeVideo) -> tuple[np.ndarray, np.ndarray] | None:
    """Candidate features and theirs in the view the comparison chose for this video."""
    for view in views(features, video.theirs):
        if view.name == video.result.view:
            return view.ours, view.theirs
    whole = primary(features, video.theirs)
    if whole.ours.shape[1] == whole.theirs.shape[1]:
        return whole.ours, whole.theirs
    return None


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    rows = min(len(a), len(b))
    a, b = a[:rows], b[:rows]
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    return np.divide(dot, norms, out=np.where(dot == 0, 1.0, 0.0), where=norms > 0)


def _extract(cfg: DictConfig, weights: WeightsInfo, videos: Sequence[ProbeVideo]) -> dict[str, np.ndarray]:
    extractor = FeatureExtractor.from_config(cfg, weights)
    found: dict[str, np.ndarray] = {}
    for result in extractor.extract_many([v.source for v in videos]):
        if result.error or result.features is None:
            raise ProbeImpossible(f"{result.job.path}: {result.error or 'no features'}")
        found[str(result.job.path)] = result.features
    return {v.id: found[str(v.source.expanduser().resolve())] for v in videos}


def _score(
    candidate: Candidate, features: dict[str, np.ndarray], videos: Sequence[ProbeVideo]
) -> CandidateResult:
    cosines = []
    for video in videos:
        pair = _comparable(features[video.id], video)
        if pair is None:
            continue
        match = align.row_match(pair[0], pair[1], video.result.alignment)
        cosines.append(match.cosine[match.valid])
    pooled = np.concatenate(cosines) if cosines else np.zeros(0)
    if not len(pooled):
        return CandidateResult(candidate, error="no rows paired with theirs")
    return CandidateResult(
        candidate, float(np.median(pooled)), float(np.percentile(pooled, 5)), int(len(pooled))
    )


def _conclude(probe: Probe) -> None:
    """Verdicts per candidate and the one line that says what to change."""
    recorded = probe.results[0]
    base = recorded.median
    if base is None:
        probe.line = f"probe: the recorded settings could not be scored ({recorded.error})"
        return
    recorded.verdict = "recorded"
    scored = [r for r in probe.results[1:] if r.median is not None]
    best = max(scored, key=lambda r: r.median or -1.0, default=None)
    for r in probe.results[1:]:
        if r.median is None:
            r.verdict = "failed"
        elif r.median > base + MARGIN:
            r.verdict = "closest" if r is best else "closer"
        elif r.median < base - MARGIN:
            r.verdict = "farther"
        else:
            r.verdict = "as close"
    if best is not None and best.median is not None and best.median > base + MARGIN:
        probe.change = best.candidate.change
        probe.line = (
            f"probe: closest with {best.candidate.label} (median cosine {best.median:.4f}, {base:.4f} as "
            f"recorded): change {best.candidate.change}"
        )
        if best.median < CLOSE_ENOUGH:
            probe.line += f"; something else differs too (still below {CLOSE_ENOUGH})"
    elif base >= CLOSE_ENOUGH:
        probe.line = (
            f"probe: the recorded settings are the closest tried (median cosine {base:.4f}): input "
            "normalisation, resize and channel order are not what differs"
        )
    else:
        probe.line = (
            f"probe: no setting tried comes closer than the recorded ones (median cosine {base:.4f}): what "
            "differs is elsewhere (the checkpoint, the model, the decoder, the grid)"
        )


def probe(
    ours: Ours,
    results: Sequence[VideoResult],
    release: Release,
    count: int,
    progress: Any = sys.stderr,
) -> Probe:
    """Re-extract `count` of our videos under each candidate setting and score them against theirs."""
    found = Probe(requested=count)
    try:
        videos, recorded = probe_videos(ours, results, release, count, found.notes)
        root_dir = Path(str((recorded.get("data") or {}).get("root") or ""))
        root = root_dir if str(root_dir) and root_dir.expanduser().is_dir() else videos[0].source.parent
        cfg = run_config(recorded, root.expanduser())
        _device_fallback(cfg, found.notes)
        typed = as_object(cfg)
        weights = weights_info(typed.model)
        sha = (ours.settings or {}).get("checkpoint_sha256")
        if weights.sha256 and sha not in (None, "null") and weights.sha256 != sha:
            raise ProbeImpossible(
                f"cannot probe: {weights.path} is not the checkpoint the run used (sha256 {weights.sha256[:12]}... "
                f"vs {str(sha)[:12]}... recorded)"
            )
        tried = candidates(typed)
        found.recorded = describe(typed)
    except PipelineError as error:  # the recorded config or the run's weights: one line
        found.impossible = str(error) if isinstance(error, ProbeImpossible) else f"cannot probe: {error}"
        found.line = found.impossible
        return found
    found.videos = [v.id for v in videos]
    print(
        f"probe: re-extracting {len(videos)} video(s) under {len(tried)} settings ...",
        file=progress,
        flush=True,
    )
    for number, candidate in enumerate(tried):
        changed = cfg.copy()
        for key, value in candidate.overrides:
            OmegaConf.update(changed, key, value, merge=False)
        try:
            validate(changed)
            features = _extract(changed, weights, videos)
        except (PipelineError, ValueError) as error:
            if number == 0:
                found.impossible = f"cannot probe: re-extracting with the recorded config: {error}"
                found.line = found.impossible
                return found
            found.results.append(
                CandidateResult(candidate, verdict="failed", error=str(error).splitlines()[0])
            )
            continue
        found.results.append(_score(candidate, features, videos))
        if number == 0:
            found.reproduced = float(
                np.median(np.concatenate([_row_cosine(features[v.id], v.ours) for v in videos]))
            )
            if found.reproduced < REPRODUCED:
                found.notes.append(
                    f"the recorded settings give our stored features back at median cosine {found.reproduced:.4f} "
                    f"only (another package version, checkpoint or decoder?): the probe's numbers may mislead"
                )
    _conclude(found)
    return found


# --- report -------------------------------------------------------------------------------------


def format_probe(p: Probe) -> str:
    """The probe as text: one line per candidate (setting, median cosine, verdict), then what to change."""
    if p.impossible:
        return p.impossible
    lines = [
        f"probe: {len(p.videos)} of our videos re-extracted under each setting ({', '.join(p.videos)}); "
        "median and 5th percentile of the per-row cosine to theirs at the alignment above",
        f"  recorded: {p.recorded}",
    ]
    if p.reproduced is not None:
        lines.append(f"  as recorded, our stored features come back at median cosine {p.reproduced:.4f}")
    table = [("setting", "cos med", "cos p5", "verdict", "change")]
    for r in p.results:
        table.append(
            (
                r.candidate.label,
                "-" if r.median is None else f"{r.median:.4f}",
                "-" if r.p5 is None else f"{r.p5:.4f}",
                r.verdict + (f" ({r.error})" if r.error else ""),
                r.candidate.change or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    lines += [f"  note: {n}" for n in p.notes]
    lines.append(p.line)
    return "\n".join(lines)


def probe_json(p: Probe) -> dict[str, Any]:
    """The probe for `--json`."""
    return {
        "requested": p.requested,
        "videos": p.videos,
        "impossible": p.impossible,
        "reproduced": p.reproduced,
        "recorded": p.recorded,
        "candidates": [
            {
                "label": r.candidate.label,
                "change": r.candidate.change,
                "overrides": {k: v for k, v in r.candidate.overrides},
                "median_cosine": r.median,
                "p5_cosine": r.p5,
                "rows": r.rows,
                "verdict": r.verdict,
                "error": r.error,
            }
            for r in p.results
        ],
        "change": p.change,
        "line": p.line,
        "notes": p.notes,
    }
