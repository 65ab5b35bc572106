"""``model.predict --jobs N``: worker processes whose death does not lose the batch.

A worker killed from outside (the out-of-memory killer, a user's ``kill``) or crashed in native
code breaks a :class:`ProcessPoolExecutor`: every pending input would fail with it. Here each
worker reports the input it starts; when the pool breaks, the input whose worker died is
reported failed (it has no CSV, so a rerun retries it) and the others, those the pool stopped
with it included, go on in a fresh pool.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

#: A pool that breaks this many times in a row without finishing or losing any input (workers
#: dying while they load the model) is given up: the remaining inputs are reported failed.
MAX_IDLE_BREAKS = 2

_NOTICES: Any = None   # in a worker: the queue on which it reports each input it starts


def worker_setup(notices: Any) -> None:
    """In a worker process: keep the queue that :func:`report_start` writes to."""
    global _NOTICES
    _NOTICES = notices


def report_start(name: str) -> None:
    """In a worker process: tell the parent that this process now works on ``name``."""
    if _NOTICES is not None:
        _NOTICES.put((name, os.getpid()))


def job_started(name: str, pid: int) -> None:
    """In the parent: worker ``pid`` began ``name`` (logged; a test kills the worker here)."""
    log.debug("worker %d started %s", pid, name)


def _drain(notices: Any, started: dict[str, int]) -> None:
    while not notices.empty():
        name, pid = notices.get()
        started[name] = pid
        job_started(name, pid)


def _one_pool(names: Sequence[str], items: Sequence[Any], run: Callable[[Any], dict],
              processes: int, init: Callable[..., None], init_args: tuple,
              results: dict[str, dict]) -> set[str]:
    """Run ``items`` in one pool, filling ``results``; the names whose worker died if it broke
    (not those whose worker the pool stopped because another died: they are retried)."""
    context = multiprocessing.get_context("spawn")
    notices = context.SimpleQueue()   # a new queue per pool: a killed writer may hold its lock
    started: dict[str, int] = {}
    seen: dict[int, Any] = {}         # pid -> its Process, to read how each worker ended
    broken = False
    with ProcessPoolExecutor(processes, mp_context=context, initializer=init,
                             initargs=(*init_args, notices)) as pool:
        futures: dict[Future, str] = {pool.submit(run, item): name
                                      for name, item in zip(names, items)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            seen.update(getattr(pool, "_processes", None) or {})
            _drain(notices, started)
            for future in done:
                try:
                    results[futures[future]] = future.result()
                except BrokenProcessPool:
                    broken = True
    _drain(notices, started)
    if not broken:
        return set()
    in_progress = {n: pid for n, pid in started.items() if n not in results}
    # The pool ends the surviving workers with SIGTERM; the one that broke it died otherwise.
    stopped = {n for n, pid in in_progress.items()
               if getattr(seen.get(pid), "exitcode", None) == -signal.SIGTERM}
    for name in sorted(stopped):
        log.warning("%s: stopped with the broken pool; retried in new workers", name)
    return set(in_progress) - stopped


def run_pool(names: Sequence[str], items: Sequence[Any], run: Callable[[Any], dict],
             processes: int, init: Callable[..., None], init_args: tuple,
             lost: Callable[[Any, str], dict]) -> dict[str, dict]:
    """``{name: run(item)}`` over ``processes`` workers (``init(*init_args, notices)`` in each,
    which must call :func:`worker_setup`; ``run`` must call :func:`report_start` first).

    An item whose worker died gets ``lost(item, reason)``; the batch goes on without it.
    """
    results: dict[str, dict] = {}
    todo = dict(zip(names, items))
    idle_breaks = 0
    while todo:
        before = len(results)
        died = _one_pool(list(todo), list(todo.values()), run, min(processes, len(todo)),
                         init, init_args, results)
        for name in died:
            reason = ("a worker process died while processing it (killed, or out of memory); "
                      "a rerun retries it")
            log.error("%s: %s", name, reason)
            results[name] = lost(todo[name], reason)
        todo = {n: item for n, item in todo.items() if n not in results}
        idle_breaks = 0 if len(results) > before else idle_breaks + 1
        if todo and idle_breaks >= MAX_IDLE_BREAKS:
            reason = "worker processes died before processing it (out of memory while loading?)"
            for name, item in todo.items():
                log.error("%s: %s", name, reason)
                results[name] = lost(item, reason)
            break
        if todo:
            log.warning("a worker process died; %d unfinished input(s) go on in new workers",
                        len(todo))
    return results
