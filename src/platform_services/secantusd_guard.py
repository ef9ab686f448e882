"""secantusd run in this process, with a bound on how long it outlives the platform that started it.

``python secantusd_guard.py PARENT_PID GRACE_SECONDS [secantusd-py arguments]`` is the embedded
MongoDB's command (embedded_mongo.py). A platform killed with SIGKILL runs no shutdown code: the
kernel sends this process SIGTERM (PR_SET_PDEATHSIG, set before exec) and secantusd's handler
stops the server. That stop has no bound of its own: it waits 2 s for the accept thread (closing
a listening socket does not wake accept()) and up to 5 s for connection threads, then closes
WiredTiger (whose close can wedge on a session still owned by a live thread) and exits through
the interpreter's shutdown (which joins every non-daemon thread); and nothing stops it if the
signal is handled late or never. So a daemon thread also watches the parent itself and,
GRACE_SECONDS after it died, ends this process the way SIGKILL would. That loses no acknowledged
write: secantusd's on-disk store keeps a WiredTiger journal, replayed on the next start, and
``:memory:`` has nothing to keep.

Run as a file, not ``-m``: it needs nothing but the standard library and secantusdb.
"""

from __future__ import annotations

import faulthandler
import os
import select
import sys
import threading
import time

POLL_SECONDS = 0.2  # only without pidfd_open (Linux < 5.3): how often getppid() is looked at


def wait_for_parent_death(parent: int) -> None:
    """Return once process ``parent`` (this process's parent when it started) has died."""
    try:
        fd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # no pidfd here, or the parent is gone already
        fd = None
    try:
        # the pidfd is the parent's only if the parent still lives after it was opened
        if fd is not None and os.getppid() == parent:
            select.select([fd], [], [])  # readable when the process exits
            return
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
    finally:
        if fd is not None:
            os.close(fd)


def guard(parent: int, grace: float) -> None:
    wait_for_parent_death(parent)
    time.sleep(grace)  # the bound itself: a clean stop ends the process (and this thread) first
    sys.stderr.write(f"secantusd: still running {grace:.0f} s after its parent died; exiting\n")
    faulthandler.dump_traceback(sys.stderr, all_threads=True)  # where its stop was stuck
    sys.stderr.flush()
    os._exit(1)


def main(argv: list[str]) -> int:
    parent, grace = int(argv[0]), float(argv[1])
    watch = threading.Thread(target=guard, args=(parent, grace), name="parent-guard", daemon=True)
    watch.start()
    from secantus.cli import main as secantusd

    return int(secantusd(argv[2:]) or 0)


if __name__ == "__main__":
    # as a script, sys.path[0] is this package's directory (unless PYTHONSAFEPATH): its modules
    # must not shadow any
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    guard_args, args = sys.argv[1:3], sys.argv[3:]
    sys.argv = ["secantusd-py", *args]  # the program name secantusd's messages give
    sys.exit(main([*guard_args, *args]))
