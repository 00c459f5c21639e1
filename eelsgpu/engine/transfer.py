"""What differs on a GPU: moving blocks to the device and back, pinned staging, the cluster kind.

Everything else (the kernels) is the same array-API code on every device. This module is kept
small and free of mocks: a :class:`Device` is a bundle of four plain functions (``asarray``,
``asnumpy``, ``empty_pinned``, ``stream``), and :class:`BlockMover` only calls those. On a CUDA
machine they are CuPy's (:func:`cuda_device`); in the tests and on a CPU they are NumPy's
(:func:`host_device`), so the same code path -- staging a block in a reusable (pinned) host buffer
in the kernel's dtype, ONE host-to-device copy per block, the kernel, one device-to-host copy of
the packed results -- is exercised everywhere, and for real on CuPy by the tests marked ``gpu``.

Why pinned staging: a copy from pageable host memory goes through a driver bounce buffer at about
half the PCIe bandwidth; from page-locked memory it runs at the link's speed (PCIe Gen5 x16: about
50-57 GB/s) and can overlap with kernels on another stream. The cast to the kernel's dtype is done
on the host while filling the staging buffer, so float64 input never crosses the bus at twice the
size.

Examples
--------
>>> import numpy as np
>>> mover = BlockMover(host_device(copies=True))
>>> out = mover.run(np.ones((4, 8)), lambda b: {"s": b.sum(axis=-1)}, dtype=np.float32)
>>> out["s"].tolist(), mover.h2d_copies
([8.0, 8.0, 8.0, 8.0], 1)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BlockMover",
    "Device",
    "cuda_device",
    "host_device",
    "mover_for",
]


@dataclass(frozen=True)
class Device:
    """The four operations the engine needs from a device.

    ``asarray(host) -> device array`` (the host-to-device copy), ``asnumpy(device array) -> host``
    (the copy back), ``empty_pinned(shape, dtype) -> host array`` (page-locked where the device
    has it), ``stream() -> context manager`` (the CUDA stream work is queued on).
    """

    name: str
    asarray: Callable[[np.ndarray], Any]
    asnumpy: Callable[[Any], np.ndarray]
    empty_pinned: Callable[..., np.ndarray]
    stream: Callable[[], contextlib.AbstractContextManager]
    synchronize: Callable[[], None] = lambda: None
    copies: bool = True


def _no_sync() -> None:
    return None


def host_device(copies: bool = False) -> Device:
    """The CPU as a device: NumPy and no streams.

    With ``copies=False`` (what the engine uses) a block is handed to the kernel as it is; with
    ``copies=True`` the mover goes through staging and real copies exactly as on a GPU, so tests
    can check the transfer path with NumPy arrays.
    """
    return Device(
        name="cpu" if not copies else "numpy-staged",
        asarray=np.array if copies else np.asarray,
        asnumpy=np.array if copies else np.asarray,
        empty_pinned=np.empty,
        stream=contextlib.nullcontext,
        synchronize=_no_sync,
        copies=copies,
    )


def cuda_device() -> Device:
    """The current CUDA device through CuPy (pinned staging, a non-blocking stream per thread)."""
    import cupy
    import cupyx

    from .cuda import register_fused_kernels  # the fused kernels' providers (compiled on use)

    register_fused_kernels()

    local = threading.local()

    def stream() -> contextlib.AbstractContextManager:
        # One stream per worker thread, so that two blocks in flight on the same GPU overlap their
        # copies with each other's kernels.
        if not hasattr(local, "stream"):
            local.stream = cupy.cuda.Stream(non_blocking=True)
        return local.stream

    def synchronize() -> None:
        if hasattr(local, "stream"):
            local.stream.synchronize()

    return Device(
        name="gpu",
        asarray=cupy.asarray,
        asnumpy=cupy.asnumpy,
        empty_pinned=cupyx.empty_pinned,
        stream=stream,
        synchronize=synchronize,
        copies=True,
    )


class BlockMover:
    """Moves blocks to a device through a reusable staging buffer and runs a kernel there.

    One mover per worker thread (see :func:`mover_for`): the staging buffer is reused for every
    block of the same size, so the pinned allocation (slow) happens once per thread.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self._staging: np.ndarray | None = None
        self.h2d_copies = 0
        self.h2d_bytes = 0
        self.d2h_copies = 0

    def stage(self, block: np.ndarray, dtype: Any) -> np.ndarray:
        """Copy ``block`` (cast to ``dtype``) into the staging buffer and return the view."""
        dtype = np.dtype(dtype)
        need = block.size
        buf = self._staging
        if buf is None or buf.dtype != dtype or buf.size < need:
            buf = self.device.empty_pinned((need,), dtype=dtype)
            self._staging = buf
        view = buf[:need].reshape(block.shape)
        np.copyto(view, block, casting="same_kind")
        return view

    def to_device(self, block: np.ndarray, dtype: Any) -> Any:
        """One host-to-device copy of ``block`` in ``dtype``; no copy at all on the host device."""
        if not self.device.copies:
            return np.asarray(block, dtype=dtype)
        staged = self.stage(block, dtype)
        self.h2d_copies += 1
        self.h2d_bytes += staged.nbytes
        return self.device.asarray(staged)

    def to_host(self, array: Any) -> np.ndarray:
        if not self.device.copies and isinstance(array, np.ndarray):
            return array
        self.d2h_copies += 1
        return self.device.asnumpy(array)

    def run(
        self,
        block: np.ndarray,
        fn: Callable[[Any], Mapping[str, Any]],
        dtype: Any,
    ) -> dict[str, np.ndarray]:
        """Copy ``block`` to the device once, run ``fn`` on it there, bring its results back."""
        with self.device.stream():
            dev = self.to_device(block, dtype)
            result = fn(dev)
            host = {k: self.to_host(v) for k, v in result.items()}
        self.device.synchronize()
        return host


_local = threading.local()


def mover_for(device: str) -> BlockMover:
    """The calling thread's :class:`BlockMover` for a resolved device (``"cpu"`` or ``"gpu"``)."""
    movers = getattr(_local, "movers", None)
    if movers is None:
        movers = _local.movers = {}
    if device not in movers:
        movers[device] = BlockMover(cuda_device() if device == "gpu" else host_device())
    return movers[device]


def iter_tiles(n: int, tile: int | None) -> Iterator[slice]:
    """Row slices of at most ``tile`` rows covering ``range(n)`` (one slice when ``tile`` is None)."""
    if not tile or tile >= n:
        yield slice(0, n)
        return
    for start in range(0, n, tile):
        yield slice(start, min(n, start + tile))
