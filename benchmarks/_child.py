"""A harness process of a benchmark, stopped the way a user would stop it.

``subprocess.run`` kills its child with SIGKILL when the parent is interrupted
or the timeout expires, and a harness killed that way cannot remove its
containers, processes or vhosts (the next run's sweep would, later). Here the
child gets SIGINT first, as Ctrl-C in a terminal, and GRACE_S to clean up;
only then SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

GRACE_S: Final = 90.0


def run_child(cmd: Sequence[str], cwd: Path, timeout_s: float,
              capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; TimeoutExpired after ``timeout_s`` (the child stopped first)."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=out, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout or "", stderr or "")
