"""`kwh inspect FILE`: the compression summary stored in a .kwh file, and the file's real sizes."""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "run"]


def register(subparsers) -> None:
    """Add the ``inspect`` subcommand."""
    p = subparsers.add_parser(
        "inspect", help="print the summary stored in a .kwh file",
        description="Verify a .kwh file and print the compression summary it carries "
                    "(architecture, bits, rates, errors) and its real byte sizes.")
    p.add_argument("file", help="the .kwh file")
    p.add_argument("--json", action="store_true",
                   help="print the summary and the file's sizes as JSON instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary (or JSON) of args.file."""
    from kwh.compress import codec, format_summary

    summary = codec.read_header(args.file).get("summary")
    report = codec.file_report(args.file)
    if args.json:
        print(json.dumps({"summary": summary, "file": report}, indent=1))
        return 0
    if summary is None:
        print(f"{args.file}: no compression summary (saved without kwh.compress)")
    else:
        print(format_summary(summary))
    print(f"file          {report['file_bytes']:,} B ({report['payload_bytes']:,} B payload in "
          f"{len(report['sections'])} sections, {report['header_bytes']:,} B header); "
          f"{report['ratio_vs_fp32']:.1f}x smaller than its {report['dense_fp32_bytes']:,} B "
          "as dense float32")
    return 0
