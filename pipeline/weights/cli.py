"""`python -m pipeline.weights`: download model-zoo weights into the local cache (also
`scripts/download_weights.py`)::

    python -m pipeline.weights slowfast_r50 i3d_r50
    python -m pipeline.weights --all            # or --list
    python -m pipeline.weights slowfast_r50 --url-override slowfast_r50=https://mirror/x.pkl
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.models.registry import get_spec, list_models
from pipeline.weights.zoo import WeightsError, cache_dir, cached_path, fetch_zoo


def _parse_overrides(items: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """NAME=URL pairs as a dict."""
    overrides: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            parser.error(f"--url-override expects NAME=URL, got {item!r}")
        overrides[name] = url
    return overrides


def _build_parser() -> argparse.ArgumentParser:
    """The options of `python -m pipeline.weights`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.weights", description="Download model-zoo weights into the local cache."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="registered model names")
    parser.add_argument("--all", action="store_true", help="every registered model with zoo weights")
    parser.add_argument("--list", action="store_true", help="list models with zoo weights and exit")
    parser.add_argument("--cache", type=Path, default=None, help=f"cache dir (default: {cache_dir()})")
    parser.add_argument(
        "--url-override",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="download NAME from URL instead of its zoo URL (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Download the requested weights; exit status 1 if any failed."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    overrides = _parse_overrides(args.url_override, parser)

    zoo_names = [name for name in list_models() if get_spec(name).zoo_url]
    if args.list:
        for name in zoo_names:
            path = cached_path(get_spec(name), args.cache)
            state = "cached" if path.is_file() else "manual" if get_spec(name).zoo_manual else "missing"
            print(f"{name:24s} {state:8s} {path}")
        return 0
    if args.all:  # shared-drive pages cannot be fetched: --all leaves them out, naming them
        manual = [name for name in zoo_names if get_spec(name).zoo_manual]
        for name in manual:
            print(f"skipped {name}: download by hand from {get_spec(name).zoo_url}", file=sys.stderr)
        zoo_names = [name for name in zoo_names if name not in manual]
    if args.all and args.names:
        parser.error("give model names or --all, not both")
    names = zoo_names if args.all else list(dict.fromkeys(args.names))
    if not names:
        parser.error("no model names given (or use --all / --list)")
    stray = sorted(set(overrides) - set(names))
    if stray:
        parser.error(f"--url-override for model(s) not requested: {', '.join(stray)}")

    failed = 0
    for name in names:
        try:
            spec = get_spec(name)
        except KeyError as e:
            print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
            failed += 1
            continue
        try:
            path = fetch_zoo(
                spec, cache=args.cache, url=overrides.get(name), force=args.force, progress=not args.quiet
            )
        except WeightsError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {path}")
    if failed:
        print(f"{failed} of {len(names)} download(s) failed", file=sys.stderr)
    return 1 if failed else 0
