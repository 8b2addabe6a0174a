"""`python -m pipeline.compare OURS THEIRS`: do my features match the released ones? If not, what differs?

    python -m pipeline.compare OURS THEIRS [--id-prefix v_] [--json] [--plot out.png] [--videos N] [--probe N]

OURS: an output dir of `pipeline.extract`, its `features.h5`, one `.npy`, or a `pipeline.export` folder.
THEIRS: released features, a folder or one file (.npy, .npz with `feats`, .pt, .pkl, .h5): see
`pipeline.compare.released`. Videos are matched by id (`pipeline.export`'s: the key's last component);
`--id-prefix v_` removes ActivityNet's prefix from their names. For every matched video the command finds
the alignment of the two row sequences from the data (offset, stride ratio), measures the match there
(per-row cosine, relative L2, self-similarity) and says what differs and which setting to change; then
one verdict over all videos: same / same up to an offset / different grid / different values.
What the features alone cannot tell (input normalisation, resize, channel order): `--probe N` re-extracts
the first N compared videos of ours (OURS an output dir or its features.h5, the source videos still
there) under candidate settings and says which comes closest to theirs (`pipeline.compare.probe`).
Exit status: 0 when at least one video was compared, 1 when none could be (no id in common, or none
readable), 2 for bad arguments or unreadable inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from pipeline.compare.diagnose import summarise
from pipeline.compare.measure import compare_video
from pipeline.compare.ours import read_ours
from pipeline.compare.plot import plot_comparison
from pipeline.compare.released import BadFile, orient, read_release
from pipeline.compare.report import Comparison, format_text, to_json
from pipeline.errors import exit_status

PROG = "python -m pipeline.compare"
PLOTTED = 3  # videos in --plot: the first, then the worst matches
MODELS_LISTED = 6
PROBED_FINDINGS = ("close", "related")  # findings whose causes --probe can tell apart


def _models_by_dim() -> dict[int, list[str]]:
    """Our registered models by feature dim (imports the model registry: only when a finding needs it)."""
    from pipeline.models import registry  # imports torch: start-up stays fast without a finding that needs it

    by_dim: dict[int, list[str]] = defaultdict(list)
    for name in registry.list_models():
        by_dim[registry.get_spec(name).feature_dim].append(name)
    return {
        dim: names[:MODELS_LISTED] + (["..."] if len(names) > MODELS_LISTED else [])
        for dim, names in by_dim.items()
    }


def _prefix_hint(only_theirs: Sequence[str], ours: Sequence[str]) -> str | None:
    """An --id-prefix that would match their unmatched ids to ours, when one does for several."""
    found: Counter[str] = Counter()
    ours_set = set(ours)
    for vid in only_theirs:
        for cut in range(1, min(len(vid), 8)):
            if vid[cut:] in ours_set:
                found[vid[:cut]] += 1
                break
    if not found:
        return None
    prefix, count = found.most_common(1)[0]
    return f"{count} of their ids are ours behind the prefix {prefix!r}: try --id-prefix {prefix}"


def _severity(result: object) -> float:
    cosine = getattr(result, "cosine", None)
    return cosine.median if cosine is not None else getattr(result, "selfsim_overall", 0.0)


def run(args: argparse.Namespace) -> int:
    ours = read_ours(args.ours)
    release = read_release(args.theirs, args.id_prefix)
    common = sorted(set(ours.videos) & set(release.videos))
    only_ours = sorted(set(ours.videos) - set(release.videos))
    only_theirs = sorted(set(release.videos) - set(ours.videos))
    compared = common[: args.videos] if args.videos else common
    problems = list(ours.problems) + list(release.problems)
    notes = list(release.notes)
    if only_theirs and (hint := _prefix_hint(only_theirs, list(ours.videos))):
        notes.append(hint)
    results = []
    for vid in compared:
        theirs = release.videos[vid]
        try:
            array = theirs.load()
        except BadFile as error:
            problems.append(f"{theirs.source}: {error}")
            continue
        mine = ours.videos[vid]
        results.append(
            compare_video(vid, mine.features, array, timestamps=mine.timestamps, source=theirs.source)
        )
    summary = summarise(results, ours.settings)
    if any(f.key.startswith("other-model") for f, _, _ in summary.findings):
        summary = summarise(results, ours.settings, _models_by_dim())
    comparison = Comparison(
        ours=str(args.ours),
        ours_kind=ours.kind,
        ours_videos=len(ours.videos),
        settings=ours.settings,
        theirs=str(args.theirs),
        theirs_layout=release.layout,
        theirs_videos=len(release.videos),
        id_prefix=args.id_prefix,
        compared=[r.id for r in results],
        only_ours=only_ours,
        only_theirs=only_theirs,
        not_compared=len(common) - len(compared),
        results=results,
        summary=summary,
        problems=problems,
        notes=notes,
    )
    if not args.json:
        print(format_text(comparison), flush=True)
    probed = None
    if args.probe and results:
        from pipeline.compare import probe  # imports torch and the extractor: only --probe needs them

        probed = probe.probe(ours, results, release, args.probe)
    if args.json:
        data = to_json(comparison)
        if probed is not None:
            data["probe"] = probe.probe_json(probed)
        print(json.dumps(data, indent=1, allow_nan=False))
    elif probed is not None:
        print()
        print(probe.format_probe(probed))
    elif results and any(f.key in PROBED_FINDINGS for f, _, _ in summary.findings):
        print("(input normalisation, resize and channel order: --probe N tries them on N of our videos)")
    if args.plot and results:
        picked = [results[0]] + sorted(results[1:], key=_severity)[: PLOTTED - 1]
        diagnoses = {d.id: d for d in summary.videos}
        items = []
        for r in picked:
            features = ours.videos[r.id].features
            theirs_array, _ = orient(release.videos[r.id].load(), len(features), int(features.shape[-1]))
            items.append((r, diagnoses[r.id], features, theirs_array))
        path = plot_comparison(args.plot, items)
        print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0 if results else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("ours", type=Path, help="our output dir, features.h5, .npy or export folder")
    parser.add_argument("theirs", type=Path, help="released features: a folder or one .npy/.npz/.pt/.pkl/.h5")
    parser.add_argument(
        "--id-prefix", default="", help="prefix of their video names to remove (ActivityNet: v_)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="OUT.png", help="draw a few videos' matches"
    )
    parser.add_argument(
        "--videos", type=_positive, default=None, metavar="N", help="compare the first N matched videos only"
    )
    parser.add_argument(
        "--probe",
        type=_positive,
        default=None,
        metavar="N",
        help="re-extract N of our videos under candidate input settings; say which comes closest to theirs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return exit_status(lambda: run(args), PROG)


if __name__ == "__main__":
    sys.exit(main())
