"""Executors run shard jobs. Training code never knows which executor runs it.

An executor takes a list of :class:`~sisa.training.jobs.ShardJob` and yields a
:class:`~sisa.training.jobs.ShardResult` for each, in the order they finish. Jobs write only their
own checkpoint files (or, under Ray, return their bytes); manifests are the caller's, and the
caller accepts each result with :func:`accept_result` before a manifest names its checkpoints.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

from sisa.errors import SisaError
from sisa.registry import Registry
from sisa.training.jobs import JobFiles, Observers, Progress, ShardJob, ShardResult
from sisa.training.slices import run_shard_job
from sisa.training.vectorised import run_group
from sisa.workspace.carried import CarriedFiles
from sisa.workspace.files import Workspace

logger = logging.getLogger(__name__)


class Executor(Protocol):
    def run(self, jobs: Sequence[ShardJob], progress: Optional[Progress] = None) -> Iterator[ShardResult]:
        """Run every job; yield results as jobs finish. ``progress`` hears of every slice (and,
        when it is a :class:`~sisa.training.jobs.ProgressObserver`, of the plan and every epoch)."""
        ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


@EXECUTORS.register("local")
class InProcessExecutor:
    """Runs the jobs one after another in this process (a vectorised group at a time when the
    settings' ``vectorise`` > 1)."""

    def run(self, jobs: Sequence[ShardJob], progress: Optional[Progress] = None) -> Iterator[ShardResult]:
        announce_plan(jobs, progress, concurrent=False)
        for unit in work_units(jobs):
            yield from run_unit(unit, progress)


@EXECUTORS.register("ray")
class RayExecutor:
    """One Ray task per shard job (per vectorised group when the settings' ``vectorise`` > 1),
    on this machine or on a Ray cluster.

    Workers never touch the workspace folder, so a cluster needs no shared storage: the driver
    sends each task the bytes of the files it reads (its shard's rows, the checkpoint it starts
    from, the test rows) through Ray's object store (:class:`~sisa.workspace.carried.CarriedFiles`);
    the task trains its shard's slices in order and returns its checkpoints' bytes, which the
    driver checks against their sha256 and writes (:func:`accept_result`). Results stream back
    as shards finish. A task whose worker process dies is retried (up to ``retries`` times); its
    result is identical, since a job depends only on its inputs. Without ``address`` a local Ray
    instance is started with the dashboard off, its files under the system temporary folder,
    never in the workspace.

    Args:
        address: an existing cluster to join (``ray start --head`` prints it). Its nodes need
            sisa and its dependencies installed (and a model of the user's own importable),
            not the workspace.
        cpus_per_shard: CPUs Ray reserves for each task (default: the settings' threads).
        gpus_per_shard: GPUs for each task; fractions let several shards share one GPU.
        retries: how often a task whose worker died is run again.
    """

    def __init__(self, *, address: Optional[str] = None, cpus_per_shard: Optional[float] = None,
                 gpus_per_shard: float = 0, retries: int = 3) -> None:
        self.address = address
        self.cpus_per_shard = cpus_per_shard
        self.gpus_per_shard = gpus_per_shard
        self.retries = retries

    def run(self, jobs: Sequence[ShardJob], progress: Optional[Progress] = None) -> Iterator[ShardResult]:
        if not jobs:
            return
        announce_plan(jobs, progress, concurrent=True)
        observer = Observers(progress)
        ray = _ray(self.address)
        _ensure_ray(ray, self.address)
        task = ray.remote(_ray_job)
        cpus = self.cpus_per_shard if self.cpus_per_shard is not None else jobs[0].settings.threads
        workspace = Workspace(jobs[0].workdir)
        pending = {}
        for unit in work_units(jobs):
            name = f"sisa-shard-{unit[0].shard}" + (f"-{unit[-1].shard}" if len(unit) > 1 else "")
            inputs = _unit_inputs(workspace, unit)
            ref = task.options(num_cpus=cpus, num_gpus=self.gpus_per_shard, max_retries=self.retries,
                               retry_exceptions=False, name=name).remote(unit, list(inputs), *inputs.values())
            pending[ref] = unit
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(done[0])
            shards = ", ".join(str(job.shard) for job in unit)
            try:
                results = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                for ref in pending:
                    ray.cancel(ref)
                if isinstance(cause, SisaError):
                    raise SisaError(str(cause)) from None
                raise SisaError(f"training shard {shards} failed on a Ray worker: {cause}") from None
            except ray.exceptions.WorkerCrashedError:
                for ref in pending:
                    ray.cancel(ref)
                raise SisaError(f"training shard {shards} failed: its Ray worker died "
                                f"{self.retries + 1} times") from None
            for result in results:  # a task's epochs and slices are heard of when it finishes
                logger.debug("shard %d: its Ray task finished on host %s in %.2f s", result.shard, result.host,
                             result.seconds)
                for report in result.epochs:
                    observer.epoch_done(report)
                for record in result.checkpoints:
                    observer.slice_done(record)
                yield result


def _ray(address: Optional[str] = None):
    if address is None:
        # A local instance serves this machine only. Ray takes this switch (made for machines
        # that cannot join clusters) to use the loopback address as the node address, so all
        # its services listen on 127.0.0.1; otherwise they listen on every interface. It is
        # read when ray is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        raise SisaError("the ray executor needs Ray: pip install ray") from None
    return ray


def _ensure_ray(ray, address: Optional[str]) -> None:
    if ray.is_initialized():
        return
    import logging

    options = dict(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                   configure_logging=True)
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if address and _refused_token(exc):
            raise SisaError(
                f"the Ray cluster at {address} refused this process: it uses token authentication and "
                f"this process has no token, or another one. Set RAY_AUTH_MODE=token and give the "
                f"cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token on this "
                f"machine); see the README's 'Ray clusters'") from None
        raise SisaError(f"cannot start or reach Ray{' at ' + address if address else ''}: {exc}") from None


def _refused_token(exc: BaseException) -> bool:
    """Whether Ray's error (or one it was raised from) is an authentication refusal."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unit_inputs(workspace: Workspace, unit: Sequence[ShardJob]) -> dict[tuple[str, str], bytes]:
    """(kind, name) -> the bytes of every file ``unit`` reads."""
    inputs: dict[tuple[str, str], Any] = {}
    for job in unit:
        for name, _ in job.shard_files:
            inputs[("data", name)] = workspace.read_data_bytes(name)
        if job.start is not None:
            for name, _, _ in job.start.files():
                inputs[("checkpoint", name)] = workspace.read_checkpoint_file(name)
    return inputs


def _ray_job(unit: Sequence[ShardJob], names: list[tuple[str, str]], *contents: bytes) -> list[ShardResult]:
    """Runs on a Ray worker: one job, or one vectorised group, on the files sent with it."""
    files = CarriedFiles({name: data for (kind, name), data in zip(names, contents) if kind == "data"},
                         {name: data for (kind, name), data in zip(names, contents) if kind == "checkpoint"})
    return run_carried(unit, files)


def run_carried(unit: Sequence[ShardJob], files: CarriedFiles) -> list[ShardResult]:
    """Run ``unit`` on ``files`` alone (never the workspace folder); each result returns the
    bytes of its checkpoints for :func:`accept_result` to write."""
    results = run_unit(unit, files=files)
    for result in results:
        result.files = {name: files.written[name] for r in result.checkpoints for name, _, _ in r.files()}
    return results


AUTO_RAY_MIN_WORK = 2e10
"""Work (sample-passes x model parameters) below which ``auto`` stays in-process: Ray's
start-up (ray.init, then a torch import in every worker) costs about 8 s on 2 cores, more
than small jobs take. Default digits training is about 2e9; Fashion-MNIST mlp or cnn, 7e10+."""


@EXECUTORS.register("auto")
class AutoExecutor:
    """Ray when more than one shard has work, more than one CPU is available and the work is
    large enough to pay for Ray's start-up (or a cluster address is given); in-process
    otherwise, so that a deletion touching one shard, or a small training, does not pay it."""

    def __init__(self, **ray_options) -> None:
        self.ray_options = ray_options

    def run(self, jobs: Sequence[ShardJob], progress: Optional[Progress] = None) -> Iterator[ShardResult]:
        yield from self.choose(jobs).run(jobs, progress)

    def choose(self, jobs: Sequence[ShardJob]) -> Executor:
        if self.ray_options.get("address"):
            return RayExecutor(**self.ray_options)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        work = _work(jobs) if len(jobs) > 1 and cpus > 1 else 0.0
        chosen = "ray" if work >= AUTO_RAY_MIN_WORK else "local"
        logger.debug("executor auto chose %s: %d shard(s) with work, %d CPU(s), work %.2g (Ray from %.0e)",
                     chosen, len(jobs), cpus, work, AUTO_RAY_MIN_WORK)
        return RayExecutor(**self.ray_options) if chosen == "ray" else InProcessExecutor()


def _work(jobs: Sequence[ShardJob]) -> float:
    from sisa.models import build_model

    spec, settings = jobs[0].data, jobs[0].settings
    params = sum(p.numel() for p in build_model(settings.model, spec.shape, spec.n_classes).parameters())
    return float(params) * sum(job.sample_passes() for job in jobs)


def make_executor(name: str, **options) -> Executor:
    """The executor registered as ``name``, built with ``options`` (Ray's options are ignored
    by the in-process executor).

    >>> type(make_executor("local")).__name__
    'InProcessExecutor'
    """
    factory = EXECUTORS.get(name)
    if factory is InProcessExecutor:
        return InProcessExecutor()
    return factory(**{k: v for k, v in options.items() if v is not None})


def accept_result(workspace: Workspace, result: ShardResult) -> None:
    """Make ``result``'s checkpoints part of ``workspace``'s files, or refuse it, before any
    manifest names them: the bytes a task returned (:attr:`ShardResult.files`) are checked
    against their records' sha256 and size and written; every checkpoint is then checked on
    disk, whole. A job that wrote its files where this process cannot see them (a custom
    executor on a machine without the workspace) is refused here, never committed."""
    from sisa.workspace.files import sha256_bytes, sha256_file

    for record in result.checkpoints:
        for name, sha256, size in record.files():
            data = result.files.get(name)
            if data is None:
                continue
            if sha256_bytes(data) != sha256 or len(data) != size:
                raise SisaError(f"shard {record.shard} slice {record.slice}: the checkpoint file {name} returned "
                                f"by host {result.host!r} does not match its sha256; nothing was committed")
            workspace.write_checkpoint(name, data)
            logger.debug("shard %d slice %d: wrote checkpoint file %s (%d bytes) returned by host %s", record.shard,
                         record.slice, name, len(data), result.host)
    for record in result.checkpoints:
        for name, sha256, size in record.files():
            if name in result.files:
                continue  # checked above, as the bytes written
            path = workspace.checkpoints_dir / name
            found = path.stat().st_size if path.is_file() else None
            if found is None or found != (size if size is not None else found) or sha256_file(path) != sha256:
                raise SisaError(
                    f"shard {record.shard} slice {record.slice}: the checkpoint file the job reported ({name}, "
                    f"made on host {result.host!r}) is {'missing' if found is None else 'different'} at {path}; "
                    f"nothing was committed. A job that does not see this workspace folder must return its "
                    f"checkpoints' bytes (as sisa's Ray executor does)")


def announce_plan(jobs: Sequence[ShardJob], progress: Optional[Progress], *, concurrent: bool) -> None:
    """Tell ``progress`` the jobs about to run (before any trains), and log them."""
    if not jobs:
        return
    logger.debug("planned %d shard job(s) %s: shards %s, %d sample-passes", len(jobs),
                 "as Ray tasks, at once" if concurrent else "in this process, one after another",
                 ", ".join(str(job.shard) for job in jobs), sum(job.sample_passes() for job in jobs))
    Observers(progress).planned(jobs, concurrent=concurrent)


def work_units(jobs: Sequence[ShardJob]) -> list[list[ShardJob]]:
    """The jobs grouped as they must run: one job per unit, or one vectorised group per unit."""
    if not jobs:
        return []
    width = jobs[0].settings.vectorise
    if width == 1:
        return [[job] for job in jobs]
    by_group: dict[int, list[ShardJob]] = {}
    for job in sorted(jobs, key=lambda j: j.shard):
        by_group.setdefault(job.shard // width, []).append(job)
    return [by_group[g] for g in sorted(by_group)]


def run_unit(unit: Sequence[ShardJob], progress: Optional[Progress] = None,
             files: Optional[JobFiles] = None) -> list[ShardResult]:
    """Run one unit of :func:`work_units`, on the jobs' workspace or on ``files``."""
    from sisa.models import add_import_root

    add_import_root(unit[0].import_root)  # a model of the user's own, where the driver found it
    if unit[0].settings.vectorise == 1:
        return [run_shard_job(job, progress, files) for job in unit]
    return run_group(unit, progress, files)

