"""Driving a run from outside the ``Castor`` facade: what a coordinator does with a run it leased.

The supported API for a process that drives runs itself. ``prepare`` rebuilds a run's context from its
checkpoint (replaying its journal), ``drive`` runs the agent until it finishes, suspends or ``stop`` says
so, ``save_run`` saves where it stopped (taking the stored run if another process finished it meanwhile).
A run remembers its code (``RunSpec``): ``changed_files`` names the sources that changed since, and
``restamp`` takes the current ones (for a run with nothing to replay, or one the operator let through).
``mark_cancelled`` ends a run an operator cancelled.
"""

from __future__ import annotations

from castor._code import changed_files, restamp
from castor._terminal import save_run
from castor.kernel.cancel import mark_cancelled
from castor.kernel.runner import drive, prepare

__all__ = ["changed_files", "drive", "mark_cancelled", "prepare", "restamp", "save_run"]
