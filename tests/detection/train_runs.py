"""``vinvl detector train`` killed mid-run, for the exact-resume test: a script, so the run can be SIGKILLed (from the
repository root, or with it on PYTHONPATH)::

    python -m tests.detection.train_runs KILL_AT DATA.yaml -o RUN [vinvl detector train options]

runs the command as given and SIGKILLs its own process right after optimizer step KILL_AT (the engine's callback;
the checkpoints of the steps before it written).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from vinvl.cli import main as cli_main
from vinvl.training.engine import Engine


def main() -> None:
    kill_at, args = int(sys.argv[1]), sys.argv[2:]
    start = Engine.__init__

    def with_kill(self: Engine, *a: Any, **kw: Any) -> None:
        start(self, *a, **kw)
        self.callbacks.append(lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None)

    Engine.__init__ = with_kill  # type: ignore[method-assign]
    sys.exit(cli_main(["detector", "train", *args]))


if __name__ == "__main__":
    main()
