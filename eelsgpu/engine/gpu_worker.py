"""One GPU per dask worker process: the preload that pins a worker of a multi-GPU job to its GPU.

dask-jobqueue starts one ``dask worker --nworkers N`` per job; with ``N = gpus`` processes on a
node every one of them would use GPU 0 (CUDA numbers the visible devices from 0). Each worker
process loads this module (``--preload eelsgpu.engine.gpu_worker``, added by
:func:`eelsgpu.engine.schedulers.scheduler_context` for ``slurm``/``pbs`` with ``gpus > 1``),
which sets ``CUDA_VISIBLE_DEVICES`` to the one GPU of its index before anything touches CUDA
(eelsgpu probes the GPU only when the first block runs). ``local-cuda`` uses dask-cuda's own
mechanism (LocalCUDACluster gives each worker its ``CUDA_VISIBLE_DEVICES``); ``srun`` runs
(SLURMRunner) pin each rank by its ``SLURM_LOCALID`` with :func:`pin`.

Examples
--------
>>> gpu_for_worker(1, "4,5")       # the second worker of a job that was given GPUs 4 and 5
'5'
>>> gpu_for_worker(3, None, n_gpus=2)   # no list from the batch system: GPUs 0..n-1, round robin
'1'
>>> worker_index("SLURMCluster-12-3")
3
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ENV_GPUS", "dask_setup", "gpu_for_worker", "pin", "worker_index"]

#: Set in the job script: how many GPUs (and worker processes) the job has.
ENV_GPUS = "EELSGPU_GPUS_PER_JOB"


def gpu_for_worker(index: int, visible: str | None, n_gpus: int | None = None) -> str:
    """The GPU (as ``CUDA_VISIBLE_DEVICES`` names it) of worker ``index`` on a node where
    ``visible`` (the batch system's ``CUDA_VISIBLE_DEVICES``, or None) lists the job's GPUs."""
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if not ids:
        ids = [str(i) for i in range(max(1, int(n_gpus or 1)))]
    return ids[int(index) % len(ids)]


def worker_index(name: Any) -> int:
    """The process index dask gives the workers of one ``--nworkers N`` command (``name-i``)."""
    tail = str(name).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def pin(index: int, n_gpus: int | None = None) -> str:
    """Set ``CUDA_VISIBLE_DEVICES`` of this process to worker ``index``'s GPU; returns it."""
    gpu = gpu_for_worker(index, os.environ.get("CUDA_VISIBLE_DEVICES"), n_gpus)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def dask_setup(worker: Any) -> None:
    """dask's preload hook, run in each worker process before its first task."""
    n = int(os.environ.get(ENV_GPUS, "0") or 0)
    if n > 1:
        pin(worker_index(getattr(worker, "name", "")), n)
