"""One `make` at a time builds a shared file (the virtual environment, the demo world, θ_0).

Two study workers started together on a fresh clone (or after a pull that touched the demo's code)
would otherwise both run the same recipe and write the same files at once. The Makefile's ``LOCK``
opens ``<target>.lock`` on descriptor 9 of the recipe's shell and runs this module on it::

    python -m lightning_vl.tools.buildlock 9 <target> <prerequisites...>

It takes an exclusive ``flock`` on the inherited descriptor. The lock belongs to the shell's open
file, so it stays held for the rest of the recipe and is released when that shell exits, also when
it is killed. Once the lock is held, the module exits 3 if the target is already at least as new as
every prerequisite (another make built it while this one waited: the recipe then stops with status
0), and 0 if the recipe should build. Standard library only: it runs before the venv exists.
"""
from __future__ import annotations

import fcntl
import os
import sys
import time

UP_TO_DATE = 3


def is_fresh(target: str, prerequisites: list[str]) -> bool:
    """Whether ``target`` exists and is no older than any prerequisite (make's own rule)."""
    try:
        built = os.stat(target).st_mtime_ns
    except FileNotFoundError:
        return False
    return all(built >= os.stat(p).st_mtime_ns for p in prerequisites if os.path.exists(p))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m lightning_vl.tools.buildlock FD TARGET [PREREQUISITE...]", file=sys.stderr)
        return 2
    fd, target, prerequisites = int(argv[0]), argv[1], argv[2:]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"{target}: another make is building it; waiting for {target}.lock", flush=True)
        started = time.monotonic()
        fcntl.flock(fd, fcntl.LOCK_EX)
        print(f"{target}: the other make finished after {time.monotonic() - started:.0f}s", flush=True)
    except OSError as error:
        print(f"{target}: cannot lock descriptor {fd} ({error}); the recipe must open {target}.lock "
              f"on it first", file=sys.stderr)
        return 2
    return UP_TO_DATE if is_fresh(target, prerequisites) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
