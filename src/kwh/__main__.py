"""`python -m kwh` (and `torchrun -m kwh`) run the command line."""

from kwh.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
