"""What the sweep store raises, and why::

    SweepNotFound (LookupError)      no sweep with this id
    SweepRunning (RuntimeError)      deleting a sweep whose trials have not all ended: cancel it first

A request that cannot run as asked raises ``bnlenet.sweeps.spec.SweepRejected`` (a ``ValueError``).
``app.errors`` maps each to its HTTP status.
"""

from __future__ import annotations

__all__ = ["SweepNotFound", "SweepRunning"]


class SweepNotFound(LookupError):
    """No sweep with this id."""


class SweepRunning(RuntimeError):
    """The sweep's trials have not all ended; it must be cancelled (and end) before it can be deleted."""
