"""Schedulers: where the block tasks of a run execute, from one laptop to a cluster.

:func:`scheduler_context` starts (and stops) the scheduler a batch run uses: the local threads
(default), ``processes`` (a dask.distributed LocalCluster), ``local-cuda`` (dask-cuda, one worker
per GPU: :func:`local_cuda_cluster`), ``tcp://host:port`` (an existing scheduler), ``slurm`` /
``pbs`` (dask-jobqueue; under ``srun`` with 3 or more tasks, dask-jobqueue's SLURMRunner instead).
Like LiberTEM's executors, the schedulers are a concern of the engine alone: they know no physics.

Security: every scheduler and dashboard started here listens on 127.0.0.1 only, unless an
interface (``interface``) or address (``host``, ``dashboard_address``) is named. Workers on other
nodes (``slurm``/``pbs`` across nodes) must therefore be told the interface they reach the
scheduler on.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .chunking import TASK_BYTES
from .device import DeviceError, gpu_status
from .gpu_worker import ENV_GPUS, pin

__all__ = [
    "LOCALHOST",
    "SCHEDULERS",
    "SchedulerInfo",
    "local_cuda_cluster",
    "scheduler_context",
]

LOCALHOST = "127.0.0.1"

SCHEDULERS = ("threads", "processes", "synchronous", "local-cuda", "slurm", "pbs")

GPU_EXTRA_HINT = "pip install 'eelsgpu[gpu]'"


@dataclass
class SchedulerInfo:
    """What :func:`scheduler_context` started: the ``scheduler=`` argument for dask and where the
    scheduler and its dashboard listen (``None`` for the local schedulers)."""

    kind: str
    scheduler: Any
    address: str | None = None
    dashboard: str | None = None
    target_bytes: int = 0
    threads: int = 1


def _bind(options: Mapping[str, Any]) -> dict[str, Any]:
    """Where a scheduler we start listens: the named interface or host, else localhost only."""
    if options.get("interface"):
        return {"interface": options["interface"]}
    return {"host": options.get("host") or LOCALHOST}


def _dashboard(options: Mapping[str, Any]) -> str:
    return str(options.get("dashboard_address") or f"{LOCALHOST}:8787")


def _jobqueue_cluster(kind: str, opts: Mapping[str, Any]) -> Any:
    import dask_jobqueue

    if not (opts.get("interface") or opts.get("host")):
        raise InputError(
            f"--scheduler {kind}: the workers run on other nodes and must reach the scheduler, "
            "which eelsgpu binds to 127.0.0.1 unless told otherwise; name the network interface "
            "they reach it on with --interface (e.g. ib0 or eth0) or an address with --host"
        )
    gpus = int(opts.get("gpus") or 0)
    cores = int(opts.get("cores") or 1)
    kw: dict[str, Any] = {
        "cores": cores,
        "processes": int(opts.get("processes") or gpus or 1),  # one worker per GPU
        "memory": str(opts.get("memory") or "8GB"),
        "walltime": str(opts.get("walltime") or "01:00:00"),
        "scheduler_options": {**_bind(opts), "dashboard_address": _dashboard(opts)},
    }
    if opts.get("interface"):
        kw["interface"] = opts["interface"]  # the workers' side
    if opts.get("queue"):
        kw["queue"] = str(opts["queue"])
    if opts.get("account"):
        kw["account"] = str(opts["account"])
    if gpus > 1:
        # one worker process per GPU, each pinned to its own (eelsgpu.engine.gpu_worker): without
        # it every process of the job would use GPU 0
        kw["worker_extra_args"] = ["--preload", "eelsgpu.engine.gpu_worker"]
        kw["job_script_prologue"] = [f"export {ENV_GPUS}={gpus}"]
    if kind == "slurm":
        extra = [f"--gres=gpu:{gpus}"] if gpus else []
        return dask_jobqueue.SLURMCluster(job_extra_directives=extra, **kw)
    if gpus:
        kw["resource_spec"] = f"select=1:ncpus={cores}:ngpus={gpus}:mem={kw['memory']}"
    return dask_jobqueue.PBSCluster(**kw)


def _slurm_runner(opts: Mapping[str, Any], outdir: Path) -> Any:
    from dask_jobqueue.slurm import SLURMRunner

    multi_node = int(os.environ.get("SLURM_NNODES", "1")) > 1
    if multi_node and not (opts.get("interface") or opts.get("host")):
        raise InputError(
            "srun over several nodes: name the interface the tasks reach each other on with "
            "--interface (eelsgpu binds its scheduler to 127.0.0.1 unless told otherwise)"
        )
    scheduler_options = {**_bind(opts), "dashboard_address": _dashboard(opts)}
    worker_options: dict[str, Any] = {}
    if opts.get("interface"):
        worker_options["interface"] = opts["interface"]
    elif not multi_node:
        worker_options["host"] = LOCALHOST
    gpus = int(opts.get("gpus") or 0)
    if gpus and "SLURM_LOCALID" in os.environ:
        # one worker per GPU: each srun task takes the GPU of its local rank among the node's
        # (round robin over what SLURM made visible; ranks 0 and 1, the scheduler and the
        # client, never compute)
        pin(int(os.environ["SLURM_LOCALID"]), gpus)
    return SLURMRunner(
        scheduler_file=str(outdir / ".dask-scheduler-{job_id}.json"),
        scheduler_options=scheduler_options,
        worker_options=worker_options,
    )


@contextlib.contextmanager
def scheduler_context(
    kind: str = "threads",
    options: Mapping[str, Any] | None = None,
    *,
    outdir: Path | None = None,
    quiet: bool = False,
) -> Iterator[SchedulerInfo]:
    """Start (and stop) the scheduler a batch run uses.

    ``options`` (from the manifest's ``scheduler:`` and the command-line flags): ``workers``,
    ``threads_per_worker``, ``memory`` (per worker or job), ``host``, ``interface``,
    ``dashboard_address``; for ``slurm``/``pbs``: ``queue``, ``account``, ``cores``, ``walltime``,
    ``gpus``, ``jobs``.
    """
    opts = dict(options or {})
    local = TASK_BYTES["local"]
    dist = TASK_BYTES["distributed"]
    if kind in ("threads", "synchronous"):
        threads = 1 if kind == "synchronous" else (os.cpu_count() or 1)
        yield SchedulerInfo(kind, kind, target_bytes=local, threads=threads)
        return
    if kind == "processes":
        from distributed import Client, LocalCluster

        n_workers = int(opts.get("workers") or max(1, (os.cpu_count() or 2)))
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=int(opts.get("threads_per_worker") or 1),
            processes=True,
            memory_limit=opts.get("memory") or "auto",
            dashboard_address=_dashboard(opts),
            **_bind(opts),
        )
        with cluster, Client(cluster) as client:
            yield _announce(SchedulerInfo(kind, client, target_bytes=dist), client, quiet)
        return
    if kind == "local-cuda":
        from distributed import Client

        bind = _bind(opts)
        cluster = local_cuda_cluster(dashboard_address=_dashboard(opts), **bind)
        with cluster, Client(cluster) as client:
            yield _announce(SchedulerInfo(kind, client, target_bytes=dist), client, quiet)
        return
    if kind.startswith(("tcp://", "tls://", "ucx://")):
        from distributed import Client

        with Client(kind) as client:
            yield _announce(SchedulerInfo("address", client, target_bytes=dist), client, quiet)
        return
    if (
        kind == "slurm"
        and int(os.environ.get("SLURM_NTASKS", "1")) >= 3
        and ("SLURM_PROCID" in os.environ)
    ):
        from dask_jobqueue.runner import Role
        from distributed import Client

        runner = _slurm_runner(opts, outdir or Path("."))
        try:
            runner.__enter__()  # rank 0 runs the scheduler here, ranks 2+ a worker, until the end
        except KeyboardInterrupt:
            # the runner ends the scheduler and worker ranks with SIGINT once the client is done
            if runner.role in (Role.scheduler, Role.worker):
                raise SystemExit(0) from None
            raise
        try:
            with Client(runner) as client:  # only rank 1, the client, runs the batch
                client.wait_for_workers(runner.n_workers)
                yield _announce(
                    SchedulerInfo("slurm-runner", client, target_bytes=dist), client, quiet
                )
        finally:
            runner.__exit__(None, None, None)
        return
    if kind in ("slurm", "pbs"):
        from distributed import Client

        cluster = _jobqueue_cluster(kind, opts)
        cluster.scale(jobs=int(opts.get("jobs") or 1))
        with cluster, Client(cluster) as client:
            yield _announce(SchedulerInfo(kind, client, target_bytes=dist), client, quiet)
        return
    raise InputError(
        f"unknown scheduler {kind!r}: use threads, processes, local-cuda, tcp://host:port, "
        "slurm or pbs"
    )


def _announce(info: SchedulerInfo, client: Any, quiet: bool) -> SchedulerInfo:
    info.address = client.scheduler.address
    with contextlib.suppress(Exception):
        workers = client.scheduler_info()["workers"].values()
        info.threads = max(1, sum(int(w.get("nthreads", 1)) for w in workers))
    import importlib.util

    info.dashboard = None
    if importlib.util.find_spec("bokeh") is not None:  # distributed serves it only with bokeh
        with contextlib.suppress(Exception):
            info.dashboard = client.dashboard_link
    if not quiet:
        dash = info.dashboard or "not served (install bokeh for the dask dashboard)"
        print(f"dask scheduler: {info.address}   dashboard: {dash}", file=sys.stderr)
    return info


def local_cuda_cluster(*, host: str = "127.0.0.1", dashboard_address: str = "127.0.0.1:0", **kw):
    """dask-cuda's LocalCUDACluster (one worker per GPU), bound to ``host``.

    Raises
    ------
    eelsgpu.engine.device.DeviceError
        dask-cuda is not installed (naming the extra that installs it) or no GPU is usable.
    """
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise DeviceError(
            "--scheduler local-cuda needs dask-cuda, which is not installed "
            f"({exc}); install the GPU extra with `{GPU_EXTRA_HINT}`"
        ) from None
    status = gpu_status()
    if not status.usable:
        raise DeviceError(f"--scheduler local-cuda needs a usable GPU: {status.reason}")
    return LocalCUDACluster(host=host, dashboard_address=dashboard_address, **kw)
