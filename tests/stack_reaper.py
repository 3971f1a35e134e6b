"""`python -m tests.stack_reaper OWNER_PID FOLDER [--rm DIR] [--netns NAME]... [--link NAME]...`

Stops the services stack in FOLDER (and removes DIR, network namespaces and links) once the
process OWNER_PID is gone, however it went: a test run killed with SIGKILL or SIGTERM runs no
finaliser, no atexit hook and no signal handler, and PostgreSQL (daemonised by pg_ctl) and the
MLflow server (a session of its own) would outlive it. Started by `tests.services_stack.reaper`
in a session of its own, so a signal to the test's process group does not reach it; a test
that ends normally stops the stack itself and then ends its reaper.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import time
from pathlib import Path


def wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # readable once the process has exited
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os.close(fd)
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("owner", type=int)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rm", type=Path)
    ap.add_argument("--netns", action="append", default=[])
    ap.add_argument("--link", action="append", default=[])
    args = ap.parse_args()
    wait_for_exit(args.owner)
    try:
        if (args.folder / "services.env").is_file():
            from workbench.services import stack as services

            services.down(args.folder)
    finally:
        for ns in args.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in args.link:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        if args.rm:
            shutil.rmtree(args.rm, ignore_errors=True)


if __name__ == "__main__":
    main()
