"""Running the command line in-process, for the CLI tests."""

from __future__ import annotations

from kwh.cli import main as cli


def run_main(argv, capsys) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of main(argv), whether it returns or argparse exits."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
