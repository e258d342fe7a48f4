"""``python -m cifar_lab.report <run or multirun dir>... [--out DIR]``: write report.html and report.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_lab.errors import tool_exit

IO_FIX = "Free space or fix the permissions, or write the report into another folder with --out DIR."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cifar_lab.report",
        description="Compare finished runs: a results table in the seed's terms, the seed's published numbers beside "
        "ours, curves and one paragraph per regulariser. Writes report.html (self-contained) and "
        "report.md (with its PNG figures beside it).",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="run directories, multirun directories, or any folder above them (e.g. outputs/)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write report.html, report.md and its PNGs into (default: the first DIR)",
    )
    parser.add_argument(
        "--include-debug",
        action="store_true",
        help="put debug runs (trainer.fast_dev_run, limit_*_batches, overfit_batches) into the results, marked "
        "DEBUG; by default they are only listed apart",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from cifar_lab.report.build import write_report

        html_path, md_path = write_report(args.paths, args.out or args.paths[0], args.include_debug)
    except Exception as err:  # a user error (exit 2) or a full or read-only disk (exit 4): one paragraph
        return tool_exit(err, IO_FIX)
    print(f"Report written: {html_path}\n                {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
