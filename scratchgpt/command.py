"""Running a parsed command: a user's mistake prints one line and exits 2, Ctrl-C exits 130.

Shared by `scratchgpt` (cli.py) and the modules that also run on their own
(`python -m scratchgpt.chat`, `python -m scratchgpt.finetune`), so none of them imports another.
"""
import sys
import time
import traceback

from scratchgpt import distributed

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, FloatingPointError)


def run(args):
    """Call args.func(args); errors a user can fix print `error: ...` (no traceback) and return 2.
    Under mpiexec a rank that fails ends every rank (see _fail)."""
    try:
        return args.func(args)
    except USER_ERRORS as e:
        return _fail(f"error: {e}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception:
        if distributed.launched_size() == 1:
            raise
        traceback.print_exc()
        return _fail("error: a process failed (its traceback is above); stopping all of them", 1)


def _fail(message, code):
    """Print the one-line error; under mpiexec also end the other ranks, which would otherwise
    wait forever for this one in their next all-reduce."""
    try:
        world = distributed.world()
    except RuntimeError:                 # under mpiexec without mpi4py: nothing to end
        world = distributed.World()
    if world.rank != 0:
        # most errors (a missing file, a bad flag) strike every rank at once: rank 0's report
        # and abort then end this process during the pause, so the line shows only once
        time.sleep(2)
    print(message if world.rank == 0 else f"{message} (rank {world.rank})", file=sys.stderr)
    world.abort(code)
    return code
