"""Runs consolidation once per given step, each time in a forked child that SIGKILLs itself there.

Usage: consolidate_and_die.py STEP [STEP ...]   (names passed to warmup.consolidation.checkpoint)
Prints "STEP=<signal that ended the child, 0 if it finished>" per step, in order. A step no checkpoint
has (e.g. "never") runs consolidation to the end. Forking saves a Django start-up per run.
"""

import os
import signal
import sys

import django

django.setup()

from django.db import connections  # noqa: E402

from warmup import consolidation  # noqa: E402


def run_in_child(target: str) -> int:
    connections.close_all()  # the child opens its own connection; never share a socket across fork
    pid = os.fork()
    if pid == 0:

        def die_at(step: str) -> None:
            if step == target:
                os.kill(os.getpid(), signal.SIGKILL)

        consolidation.checkpoint = die_at
        try:
            consolidation.consolidate()
        except BaseException as exc:  # report, then leave without running the parent's clean-up
            print(f"{target}: {exc!r}", file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def main() -> None:
    results = [f"{step}={run_in_child(step)}" for step in sys.argv[1:]]
    print(" ".join(results), flush=True)


if __name__ == "__main__":
    main()
