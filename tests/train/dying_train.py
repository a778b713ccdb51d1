"""``bpo train`` that is killed (``os._exit``: no cleanup, no atexit) inside optimizer step N.

Launched by the engine tests as ``accelerate launch ... -m tests.train.dying_train N key=value ...``; every
rank dies at the same step, as when a node is lost, so the last checkpoint on disk is all a resume gets.
"""

import os
import sys

from bpo.cli import main
from bpo.train.trainer import Trainer

_die_at = int(sys.argv[1])
_real_step = Trainer._optimizer_step
_calls = {"n": 0}


def _dying_step(self):
    _calls["n"] += 1
    if _calls["n"] == _die_at:
        os._exit(137)
    return _real_step(self)


if __name__ == "__main__":
    Trainer._optimizer_step = _dying_step
    raise SystemExit(main(["train", *sys.argv[2:]]))
