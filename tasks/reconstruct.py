"""The stages of one collection as Prefect tasks (``flows/reconstruct.py`` runs them in order).

The stages themselves are defined once, without Prefect, in :mod:`tasks.stages`; here each becomes a
task of the same name (``read-collection``, ``check-poses``, ``zip-pass``, ...), so a flow run shows the
collection stage by stage in Prefect's UI.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from errors import install_log_scrubbing

from .stages import STAGES, run_reconstruction

install_log_scrubbing()  # the flow's log records and tracebacks through errors.scrub

TASK_NAMES = {"read": "read-collection"}  # the rest: the stage's name with dashes
TASKS = {name: task(fn, name=TASK_NAMES.get(name, name.replace("_", "-")), cache_policy=NO_CACHE)
         for name, fn in STAGES.items()}


def call_task(name: str, *args, **kwargs):
    """Run a stage as a Prefect task of the current flow run."""
    return TASKS[name](*args, **kwargs)


__all__ = ["TASKS", "call_task", "run_reconstruction"]
