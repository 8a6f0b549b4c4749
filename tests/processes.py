"""``python -m MODULE ARGS`` in a fresh interpreter for the training tests: one thread (like every run they compare),
the repository and its src/ on PYTHONPATH, and under torchrun with several processes (gloo on the CPU, a free
loopback port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str, world: int = 1, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m args...`` (``world`` > 1: under ``torchrun --nproc_per_node world``), output captured."""
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", *args]
    if world > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
               "127.0.0.1", "--master_port", str(port), *cmd[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
