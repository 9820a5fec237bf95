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
                    "(architecture, bits, rates, errors), the operations of a graph-layout "
                    "file, and its real byte sizes, against the dense original (the original "
                    "model's float32 weights and biases).")
    p.add_argument("file", help="the .kwh file")
    p.add_argument("--json", action="store_true",
                   help="print the summary and the file's sizes as JSON instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary (or JSON) of args.file."""
    from kwh.compress.summary import dense_original, format_file_line, format_summary
    from kwh.format import codec

    summary = codec.read_header(args.file).get("summary")
    report = codec.file_report(args.file)
    weights_mode = summary is not None and summary.get("mode") == "weights"
    if args.json:
        out = {"summary": summary, "file": report}
        if summary is not None and not weights_mode:
            base = summary["size_fp32_original_bytes"]
            out["dense_original"] = {"bytes": base, "what": dense_original(summary),
                                     "ratio_file": base / report["file_bytes"]}
        print(json.dumps(out, indent=1))
        return 0
    detail = (f"{report['payload_bytes']:,} B payload in {len(report['sections'])} sections, "
              f"{report['header_bytes']:,} B header")
    if weights_mode:  # the user's architecture, weights only: no chain to compare with
        from kwh.compress.weights import WeightsSummary
        print(WeightsSummary(summary))
        print(f"{args.file}: {report['file_bytes']:,} B ({detail}); the same tensors as float32 "
              f"take {report['dense_fp32_bytes']:,} B "
              f"({report['dense_fp32_bytes'] / report['file_bytes']:.1f}x larger)")
        return 0
    if summary is None:
        print(f"{args.file}: no compression summary (saved without kwh.compress, or as a "
              "deployment copy without it)")
        detail += f"; its tensors as float32 would take {report['dense_fp32_bytes']:,} B"
    else:
        print(_summary_text(summary, format_summary))
        if summary.get("payload_bytes") not in (None, report["payload_bytes"]):
            detail += (f"; the summary's rates count the {summary['payload_bytes']:,} B payload "
                       "measured when the model was compressed (the file was saved again since, "
                       "by another version of the codec)")
    if report["layout"] == "graph":
        print(_graph_line(report))
    print(format_file_line(summary, report["file_bytes"], detail))
    return 0


def _graph_line(report: dict) -> str:
    """'graph         12 operations: 4 Conv2d, 2 ReLU, 1 add, ... ; output node 11'."""
    ops = sorted(report["ops"].items(), key=lambda kv: (-kv[1], kv[0]))
    return (f"graph         {report['nodes']} operations: "
            f"{', '.join(f'{n} {op}' for op, n in ops)}; output node {report['output']}")


def _summary_text(summary: dict, format_summary) -> str:
    """The summary as `kwh compress` prints it, or as JSON when it has another shape."""
    try:
        return format_summary(summary)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "summary (as stored):\n" + json.dumps(summary, indent=1)
