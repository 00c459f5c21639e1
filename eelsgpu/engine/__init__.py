"""The engine: maps declared per-block kernels over spectrum images and streams results to stores.

It knows no physics. Analyses hand it a :class:`~eelsgpu.kernels.declare.BlockKernel` (a pure
kernel, its outputs, its tile size); the engine decides the blocks, moves them to the device,
calls the kernel and writes the results. Like LiberTEM's executors, each concern has its module:

========================  ====================================================================
:mod:`.blocks`            :func:`apply_kernel`: a BlockKernel over the pixel blocks; eager (at
                          once, on a thread per core, into NumPy results) for an image in
                          memory, lazy (dask) for a dask image (:func:`eager_workers`)
:mod:`.device`            device choice (``auto``/``cpu``/``gpu`` or an array-API namespace standing
                          in for CuPy), made where the blocks run; the GPU probe; host <-> device
:mod:`.transfer`          the GPU path: device pools (memory gate, passes), slots (streams, double
                          pinned staging and result buffers), packing and the one copy back
:mod:`.counting`          the counting stand-in for CuPy (launches, syncs, float64, bytes per block)
:mod:`.gpu_worker`        one GPU per worker process of a multi-GPU job (a dask preload)
:mod:`.chunking`          task and storage chunk sizes
:mod:`.blas`              one BLAS thread per block while blocks run a thread per core
:mod:`.outputs`           outputs that never destroy data: what may be replaced, one lock per
                          output, leftovers of killed runs
:mod:`.store`             the one store writer (:class:`StoreWriter`; :func:`run_to_store`,
                          resumable), codecs, provenance
:mod:`.progress`          the one progress bar of a store run
:mod:`.schedulers`        where the tasks run: threads, processes, GPUs, SLURM/PBS
========================  ====================================================================
"""

from __future__ import annotations

from ..kernels.declare import BlockKernel, Kernel, Output
from .blocks import TILE_BYTES, apply_kernel, default_tile_pixels, eager_workers
from .chunking import TASK_BYTES, align_tasks, storage_chunks, task_chunks
from .outputs import OutputLock, check_output, is_eelsgpu_store
from .schedulers import SchedulerInfo, scheduler_context
from .store import (
    CODEC_PROFILES,
    RunResult,
    StoreWriter,
    codecs,
    is_complete,
    json_safe,
    run_attrs,
    run_to_store,
)

__all__ = [
    "CODEC_PROFILES",
    "TASK_BYTES",
    "TILE_BYTES",
    "BlockKernel",
    "Kernel",
    "Output",
    "OutputLock",
    "RunResult",
    "SchedulerInfo",
    "StoreWriter",
    "align_tasks",
    "apply_kernel",
    "check_output",
    "codecs",
    "default_tile_pixels",
    "eager_workers",
    "is_complete",
    "is_eelsgpu_store",
    "json_safe",
    "run_attrs",
    "run_to_store",
    "scheduler_context",
    "storage_chunks",
    "task_chunks",
]
