"""The engine's run folder: its ``checkpoint-N/`` folders, which one is the newest complete one, and the training
state (``training_state.pt``) a resumed run starts from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

from ..errors import VinvlError
from ..state_dict import read_torch

PathLike = Union[str, os.PathLike]
STATE = "training_state.pt"  # written last into a checkpoint: its presence marks the checkpoint complete


def natural_key(name: str) -> list:
    """Sort key putting ``checkpoint-10`` after ``checkpoint-9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The newest complete ``checkpoint-N/`` of a run folder (one with its ``training_state.pt``), or ``None``."""
    done = sorted(Path(out_dir).glob(f"checkpoint-*/{STATE}"), key=lambda p: natural_key(p.parent.name))
    return done[-1].parent if done else None


def load_training_state(folder: PathLike) -> dict:
    """A checkpoint's ``training_state.pt`` (optimizer, scheduler, step, random states), to resume; one error
    naming it if unreadable."""
    path = Path(folder) / STATE
    state = read_torch(path, str(path))
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "step"} <= set(state):
        raise VinvlError(f"{path}: not a training state (optimizer, scheduler, step)")
    return state
