"""Is the process that writes a run still there? Tags that say which process it is, and the check.

A run records its writer as tags (`dispo.pid`, `dispo.host`, `dispo.proc_start`: the process's
start time, so that a recycled pid is not mistaken for the writer). A run found RUNNING whose
writer is gone was killed (kill -9, OOM, power loss) and can be marked KILLED with that reason.
A run written on another host, or without these tags, cannot be judged here: `writer_gone`
answers None for it and it is left alone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from workbench.names import TAG_HOST, TAG_PID, TAG_PROC_START


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def writer_tags() -> dict[str, str]:
    """Tags naming this process as a run's writer."""
    tags = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}
    start = _proc_start(os.getpid())
    if start is not None:
        tags[TAG_PROC_START] = start
    return tags


def writer_gone(tags: dict[str, str]) -> str | None:
    """Why the run's writer is known to be gone, or None (alive, on another host, or not recorded)."""
    pid_text, host = tags.get(TAG_PID), tags.get(TAG_HOST)
    if not pid_text or not host or host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its process {pid} on {host} is gone (killed or crashed)"
    except PermissionError:  # exists, owned by another user
        pass
    recorded, now = tags.get(TAG_PROC_START), _proc_start(pid)
    if recorded and now and recorded != now:
        return f"its process {pid} on {host} is gone (the pid now belongs to another process)"
    if _is_zombie(pid):
        return f"its process {pid} on {host} has exited"
    return None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False
