"""Runs consolidation and SIGKILLs itself at a named checkpoint (crash tests).

Usage: consolidate_and_die.py STEP   (a name passed to warmup.consolidation.checkpoint)
Exits 0 if consolidation finished without reaching STEP.
"""

import os
import signal
import sys

import django

django.setup()

from warmup import consolidation  # noqa: E402


def main() -> None:
    target = sys.argv[1]

    def die_at(step: str) -> None:
        if step == target:
            os.kill(os.getpid(), signal.SIGKILL)

    consolidation.checkpoint = die_at
    consolidation.consolidate()


if __name__ == "__main__":
    main()
