"""Write a sorted video list for a data root: `python scripts/make_video_list.py ROOT [-o OUT]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.naming import VIDEO_EXTENSIONS
from pipeline.videolist import VideoListError, scan_videos, write_video_list


def main(argv: list[str] | None = None) -> int:
    """Scan ROOT for videos (and frame folders with --frames) and write the list atomically."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="data root to scan")
    parser.add_argument(
        "--ext", nargs="+", default=list(VIDEO_EXTENSIONS), help="video extensions (case-insensitive)"
    )
    parser.add_argument(
        "--frames",
        metavar="PATTERN",
        default=None,
        help="list folders holding frame files matching PATTERN ('frame_{:010d}.jpg' or a glob)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="output (default ROOT/video_list.csv)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    output = args.output if args.output is not None else args.root / "video_list.csv"
    try:
        paths = scan_videos(args.root, args.ext, args.frames)
    except (VideoListError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    count = write_video_list(paths, output)
    print(f"wrote {count} paths to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
