"""Parallel tasks on local worker processes that end with the run that started them.

joblib's loky workers outlive a parent killed with SIGKILL: they finish their task and then
idle for minutes, holding memory and cores. A task run here in a local worker process
therefore starts (once per worker) a watchdog thread that ends the worker within a second
of its parent's death. On a dask cluster the workers are the cluster's, not the run's, and
are left alone.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import nullcontext

__all__ = ["run_parallel"]

_LOCAL_BACKENDS = (None, "loky", "multiprocessing")
_watched_parent = None


def run_parallel(tasks, n_jobs=1, backend=None, ordered=True):
    """Run joblib-delayed `tasks` and yield their results (in order, or as they finish if
    not `ordered`). backend: None (joblib's default, loky) or a joblib backend name ("dask"
    with a `dask.distributed.Client`)."""
    from joblib import Parallel, parallel_config

    if backend in _LOCAL_BACKENDS:
        parent = os.getpid()
        tasks = ((_run_watched, (parent, func, args, kwargs), {}) for func, args, kwargs in tasks)
    with parallel_config(backend=backend) if backend else nullcontext():
        yield from Parallel(n_jobs=n_jobs, return_as="generator" if ordered else "generator_unordered")(tasks)


def _run_watched(parent, func, args, kwargs):
    if os.getpid() != parent:           # in a worker process, not run in-process (n_jobs=1)
        _watch(parent)
    return func(*args, **kwargs)


def _watch(parent):
    global _watched_parent
    if _watched_parent == parent:
        return
    _watched_parent = parent

    def end_when_orphaned():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)                     # the run is gone: nobody will read this worker's result
    threading.Thread(target=end_when_orphaned, name="slambayes-parent-watch", daemon=True).start()
