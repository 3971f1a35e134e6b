"""Resumable training state on local disk, written atomically.

A checkpoint holds everything the next step depends on (policy, optimizer, the policy
snapshots that lagged rollouts come from, random states, metric histories used by
collapse detection), so a resumed run continues the same step axis. It lives in
`.cache/checkpoints/<run_id>/state.pt`, outside MLflow: it is large and only useful here.
The run's resolved config is kept next to it as `config.yaml`, so that `dispo-wb eval
--checkpoint .cache/checkpoints/<run_id>` builds the same model and scores the task the
policy was trained on. torch is imported only to save or load: reading the folder is cheap.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(".cache/checkpoints")
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


def checkpoint_path(run_id: str, root: Path | str | None = None) -> Path:
    return Path(root or ROOT) / run_id / STATE_FILE


def save(state: dict[str, Any], run_id: str, root: Path | str | None = None, config_yaml: str | None = None) -> Path:
    """Write to a temp file in the same folder, then rename: a kill never leaves half a checkpoint.

    `config_yaml`, the run's resolved config, is written beside the state the same way.
    """
    import torch

    path = checkpoint_path(run_id, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    if config_yaml is not None:
        _write_atomic(path.parent / CONFIG_FILE, lambda f: f.write(config_yaml.encode("utf-8")))
    _write_atomic(path, lambda f: torch.save(state, f))
    return path


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(run_id: str, root: Path | str | None = None) -> dict[str, Any]:
    import torch

    path = checkpoint_path(run_id, root)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint for run {run_id} at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)
