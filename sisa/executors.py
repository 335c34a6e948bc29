"""Executors run shard jobs. Training code never knows which executor runs it.

An executor takes a list of :class:`~sisa.training.ShardJob` and yields a
:class:`~sisa.training.ShardResult` for each, in the order they finish. Jobs write only their
own checkpoint files; manifests are the caller's.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Protocol, Sequence

from sisa.registry import Registry
from sisa.training import Progress, ShardJob, ShardResult, run_shard_job


class Executor(Protocol):
    def run(self, jobs: Sequence[ShardJob], progress: Optional[Progress] = None) -> Iterator[ShardResult]:
        """Run every job; yield results as jobs finish."""
        ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


@EXECUTORS.register("local")
class InProcessExecutor:
    """Runs the jobs one after another in this process."""

    def run(self, jobs: Sequence[ShardJob], progress: Optional[Progress] = None) -> Iterator[ShardResult]:
        for job in jobs:
            yield run_shard_job(job, progress)


def make_executor(name: str, **options) -> Executor:
    """The executor registered as ``name``, built with ``options``.

    >>> type(make_executor("local")).__name__
    'InProcessExecutor'
    """
    return EXECUTORS.get(name)(**options)
