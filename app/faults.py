"""Test-only fault points: ``BNLENET_FAULT=<point>`` in the API's environment makes the process
SIGKILL itself when it reaches that point, so a test can crash a real API at an exact step.

Read once at import; unset (always, outside tests) a fault point is one comparison.
Points: ``after-store-before-publish`` (``POST /train``: the job is stored, its task not yet published).
"""

from __future__ import annotations

import os
import signal

_FAULT = os.environ.get("BNLENET_FAULT")


def fault_point(name: str) -> None:
    """Die here, as a SIGKILL or the OOM killer would, when ``BNLENET_FAULT`` names this point."""
    if _FAULT == name:
        os.kill(os.getpid(), signal.SIGKILL)
