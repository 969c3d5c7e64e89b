"""Running a parsed command: a user's mistake prints one line and exits 2, Ctrl-C exits 130.

Shared by `scratchgpt` (cli.py) and the modules that also run on their own
(`python -m scratchgpt.chat`, `python -m scratchgpt.finetune`), so none of them imports another.
"""
import sys

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, FloatingPointError)


def run(args):
    """Call args.func(args); errors a user can fix print `error: ...` (no traceback) and return 2."""
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
