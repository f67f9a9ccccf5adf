"""Run a compiled (Numba ``nogil``) loop on several plain threads, each taking every n-th item.

The loops of ``model.fusion_cpu`` and ``model.refine_cpu`` take ``(first, step)``: thread k of n does
items k, k + n, k + 2n, ... (rows of a volume, pairs of frames), which evens out items of unequal
cost. Plain threads rather than Numba's own parallel layers: its work queue gained nothing from a
second core here, and its OpenMP layer is not safe in processes that fork.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def run_interleaved(kernel: Callable, args: tuple, outputs: tuple, threads: int, items: int, name: str) -> None:
    """``kernel(*args, first, step, *outputs)`` for ``first`` in ``range(n)``, ``step = n`` threads
    (``n = min(threads, items)``, at least 1; one thread runs in the caller)."""
    n = max(1, min(int(threads or 1), int(items)))
    if n == 1:
        kernel(*args, 0, 1, *outputs)
        return
    with ThreadPoolExecutor(n, thread_name_prefix=name) as pool:
        for job in [pool.submit(kernel, *args, k, n, *outputs) for k in range(n)]:
            job.result()
