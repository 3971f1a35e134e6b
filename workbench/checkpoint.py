"""Resumable training state on local disk, written atomically.

A checkpoint holds everything the next step depends on (policy, optimizer, the policy
snapshots that lagged rollouts come from, random states, metric histories used by
collapse detection), so a resumed run continues the same step axis. It lives in
`.cache/checkpoints/<run_id>/state.pt`, outside MLflow: it is large and only useful here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(".cache/checkpoints")


def checkpoint_path(run_id: str, root: Path | str | None = None) -> Path:
    return Path(root or ROOT) / run_id / "state.pt"


def save(state: dict[str, Any], run_id: str, root: Path | str | None = None) -> Path:
    """Write to a temp file in the same folder, then rename: a kill never leaves half a checkpoint."""
    path = checkpoint_path(run_id, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(run_id: str, root: Path | str | None = None) -> dict[str, Any]:
    path = checkpoint_path(run_id, root)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint for run {run_id} at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)
