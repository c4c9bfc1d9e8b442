"""Benchmarks: each prints figures, side by side with its baseline, in one run."""
