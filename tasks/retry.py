"""The pipeline's one retry of transient faults (object-store and network trouble), without Prefect.

Used by every place that touches remote storage on a user's behalf: each collection of a batch
(``tasks.batch.reconstruct_one``), the batch flow's own manifest and summary I/O, and
``zipmap reconstruct``. Bad input is never retried (:func:`errors.is_transient` decides).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from errors import is_transient

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = 10  # ZIPMAP_RETRY_ATTEMPTS: tries per collection for transient faults, the first included;
# with the doubling waits, 10 tries always reach the patience below (9 waits of at least 1, 2, 4, ... s): an
# outage of up to RETRY_PATIENCE_S seconds is ridden out whatever the jitter draws
RETRY_BACKOFF_S = 2.0  # ZIPMAP_RETRY_BACKOFF: the first wait; each next one doubles (x0.5-1.5 jitter)
RETRY_PATIENCE_S = 60.0  # ZIPMAP_RETRY_PATIENCE: seconds of waiting in all, at most


def retry_policy(attempts: int | None = None, backoff_s: float | None = None,
                 patience_s: float | None = None) -> tuple[int, float, float]:
    """``(attempts, backoff_s, patience_s)``: the arguments given, else ``ZIPMAP_RETRY_ATTEMPTS``,
    ``ZIPMAP_RETRY_BACKOFF``, ``ZIPMAP_RETRY_PATIENCE`` (read on the worker), else the defaults above."""
    def pick(value, env, default, kind):
        if value is not None:
            return kind(value)
        raw = os.environ.get(env, "").strip()
        try:
            return kind(raw) if raw else default
        except ValueError:
            logger.warning("%s=%r is not a number; using %s", env, raw, default)
            return default

    return (max(1, pick(attempts, "ZIPMAP_RETRY_ATTEMPTS", RETRY_ATTEMPTS, int)),
            max(0.0, pick(backoff_s, "ZIPMAP_RETRY_BACKOFF", RETRY_BACKOFF_S, float)),
            max(0.0, pick(patience_s, "ZIPMAP_RETRY_PATIENCE", RETRY_PATIENCE_S, float)))


def with_retries(fn: Callable[..., T], *args, what: str = "", attempts: int | None = None,
                 backoff_s: float | None = None, patience_s: float | None = None, **kwargs) -> T:
    """``fn(*args, **kwargs)``, retried on transient faults: the pipeline's one retry mechanism.

    Only :func:`errors.is_transient` faults are retried (object-store and network faults: timeouts,
    resets, 5xx, throttling, a checkpoint URL that does not answer), never bad input. After the k-th
    failed attempt it waits ``backoff_s * 2**(k-1)`` seconds times a random factor in [0.5, 1.5), for at
    most ``attempts`` attempts and ``patience_s`` seconds of waiting in all (:func:`retry_policy`); each
    retry is logged naming ``what``. The last fault is raised, with ``retried`` (attempts made) set on it."""
    attempts, backoff_s, patience_s = retry_policy(attempts, backoff_s, patience_s)
    waited = 0.0
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            delay = min(backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()), patience_s - waited)
            if is_transient(exc) and attempt < attempts and delay > 0:
                logger.warning("%s: transient fault on attempt %d of %d, retrying in %.1f s: %s: %s", what or
                               getattr(fn, "__name__", "call"), attempt, attempts, delay, type(exc).__name__, exc)
                time.sleep(delay)
                waited += delay
                continue
            exc.retried = attempt
            raise
    raise AssertionError("unreachable")



__all__ = ["with_retries", "retry_policy", "RETRY_ATTEMPTS", "RETRY_BACKOFF_S", "RETRY_PATIENCE_S"]
