"""Subjects aligned in parallel: one function over the jobs, in this process or in joblib's."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence


def run_jobs(align: Callable[[Any], dict[str, Any]], jobs: Sequence[Any],
             n_jobs: int) -> Iterator[dict[str, Any]]:
    """``align(job)`` for each job, its rows yielded as they finish (in order in-process; as
    they come with ``n_jobs`` > 1). ``align`` never raises (a failed subject is a row)."""
    if n_jobs == 1 or len(jobs) == 1:
        yield from (align(job) for job in jobs)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=min(n_jobs, len(jobs)), return_as="generator_unordered")
    yield from parallel(delayed(align)(job) for job in jobs)
