"""The kwh command line: the root in main.py registers one module per subcommand."""
