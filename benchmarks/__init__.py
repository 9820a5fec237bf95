"""Benchmarks of kwh: scripts that write results (markdown, CSV, JSON) under benchmarks/results/."""
