"""Shared argument helpers for the experiment scripts (each script is a thin wrapper around
one function of scratchgpt.analysis)."""
import argparse


def runs_arg(values):
    """['name=run_dir', ...] -> {name: run_dir}."""
    out = {}
    for v in values:
        if "=" not in v:
            raise argparse.ArgumentTypeError(f"expected NAME=RUN_DIR, got {v!r}")
        k, d = v.split("=", 1)
        out[k] = d
    return out
