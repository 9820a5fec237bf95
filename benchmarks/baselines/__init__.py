"""Pieces of the paper-table benchmark: shared training helpers and the baseline methods."""
